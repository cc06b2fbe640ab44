"""Supervised classifiers: from-scratch CNNs and MLPs, and ImageNet transfer networks.

The architectures of the supervised baselines every self-supervised run is compared with
(`kerassl.supervised` trains them on the labeled examples only). Every classifier maps
float images in [0, 1] (NHWC) to class probabilities; the convolutional ones use BatchNorm
with momentum 0.9 (`encoders.BN_MOMENTUM`), which a few hundred labels can estimate.

Example:
    >>> model = build_classifier("cnn", (28, 28, 1), num_classes=10)
    >>> model.output_shape
    (None, 10)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from kerassl.catalog import CLASSIFIERS
from kerassl.checks import UNIT_INTERVAL_OPEN, check, integer_at_least
from kerassl.models.encoders import BN_MOMENTUM, application, small_cnn

TRANSFER = ("resnet50", "inceptionv3")

# keras.applications "notop" ImageNet weight files, as Keras caches them.
_IMAGENET_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inceptionv3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
# Names of the layers that end a block of each application (fine-tuning unit).
_BLOCK_ENDS = {
    "resnet50": re.compile(r"^conv\d_block\d+_out$"),
    "inceptionv3": re.compile(r"^mixed\d+$"),
}
_APPLICATION_NAMES = {"resnet50": "resnet50", "inceptionv3": "inception_v3"}


def _keras_homes() -> list[str]:
    """Folders Keras caches downloads in: $KERAS_HOME, ~/.keras, /tmp/.keras (fallback)."""
    homes = [os.environ.get("KERAS_HOME"), os.path.join(os.path.expanduser("~"), ".keras")]
    return [home for home in homes if home] + [os.path.join("/tmp", ".keras")]


def imagenet_weights_available(name: str) -> bool:
    """Whether the ImageNet "notop" weights of `name` are in the local Keras cache."""
    if name not in _IMAGENET_FILES:
        return False
    return any(
        os.path.isfile(os.path.join(home, "models", _IMAGENET_FILES[name]))
        for home in _keras_homes()
    )


def resolve_weights(name: str, weights: str | None) -> str | None:
    """Maps `"auto"` to `"imagenet"` when the weights are cached locally, else `None`."""
    if weights == "auto":
        return "imagenet" if imagenet_weights_available(name) else None
    if weights not in (None, "imagenet"):
        raise ValueError(
            f"weights must be 'auto', 'imagenet' or None. Received: weights={weights!r}"
        )
    return weights


def _dense_classifier(
    x, num_classes: int, dense_units: Sequence[int], dropout: float, batch_norm: bool
):
    for index, units in enumerate(dense_units):
        x = layers.Dense(units, use_bias=not batch_norm, name=f"dense{index}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"dense{index}_bn")(x)
        x = layers.ReLU(name=f"dense{index}_relu")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"dense{index}_dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def build_classifier(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    **hparams: Any,
) -> keras.Model:
    """Builds a supervised classifier by name; `hparams` are the builder's arguments.

    - `"cnn"`: study A's CNN, 3 blocks of conv3x3-BN(momentum 0.9)-ReLU-maxpool-dropout
      (32/64/128 filters, dropout 0.2), flatten, dense softmax. Arguments: `filters`,
      `convs_per_block` (1), `dropout` (0.2), `pooling` ("flatten" or "avg").
    - `"cnn_deep"`: the same convolutional trunk followed by a dense classifier
      (`dense_units`, default (256,), with BN and `dense_dropout`, default 0.5).
    - `"mlp"`: flatten, `hidden_units` (default (512, 256)) dense-BN-ReLU-dropout layers.
    - `"resnet50"`, `"inceptionv3"`: transfer learning (He et al. 2016; Szegedy et al.
      2016) with a frozen `keras.applications` base (grayscale repeated to 3 channels and
      resized to the network's minimum size in-graph), then a classifier of up to two
      dense layers (`dense_units`, default (256,)) with `dropout` (0.5). `weights` is
      `"auto"` (ImageNet when cached locally, else random), `"imagenet"` or None.
      Fine-tuning of the top blocks: `unfreeze_top_blocks`, which
      `kerassl.supervised.train_classifier(fine_tune_blocks=...)` calls.

    Args:
        name: one of `CLASSIFIERS`.
        input_shape: (height, width, channels) of the [0, 1] float images.
        num_classes: number of classes (softmax outputs).
        **hparams: builder arguments listed above.

    Returns:
        An uncompiled `keras.Model` from [0, 1] images to class probabilities.
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"name must be one of {CLASSIFIERS}. Received: name={name!r}")
    check("num_classes", num_classes, integer_at_least(2))
    builders = {
        "cnn": _cnn,
        "cnn_deep": _cnn_deep,
        "mlp": _mlp,
        "resnet50": _transfer,
        "inceptionv3": _transfer,
    }
    if name in TRANSFER:
        hparams["base"] = name
    return builders[name](tuple(input_shape), num_classes, **hparams)


def _cnn(
    input_shape,
    num_classes,
    filters: Sequence[int] = (32, 64, 128),
    convs_per_block: int = 1,
    dropout: float = 0.2,
    pooling: str = "flatten",
    name: str = "cnn",
):
    inputs, features = _cnn_trunk(input_shape, filters, convs_per_block, dropout, pooling, name)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(features)
    return keras.Model(inputs, outputs, name=name)


def _cnn_deep(
    input_shape,
    num_classes,
    filters: Sequence[int] = (32, 64, 128),
    convs_per_block: int = 2,
    dropout: float = 0.2,
    pooling: str = "flatten",
    dense_units: Sequence[int] = (256,),
    dense_dropout: float = 0.5,
    name: str = "cnn_deep",
):
    check("dense_dropout", dense_dropout, UNIT_INTERVAL_OPEN)
    inputs, features = _cnn_trunk(input_shape, filters, convs_per_block, dropout, pooling, name)
    outputs = _dense_classifier(features, num_classes, dense_units, dense_dropout, True)
    return keras.Model(inputs, outputs, name=name)


def _cnn_trunk(input_shape, filters, convs_per_block, dropout, pooling, name):
    """`(images input, features)` of the small CNN trunk shared by `cnn` and `cnn_deep`."""
    check("dropout", dropout, UNIT_INTERVAL_OPEN)
    trunk = small_cnn(
        input_shape,
        filters=tuple(filters),
        convs_per_block=convs_per_block,
        dropout=dropout,
        pooling=pooling,
        name=f"{name}_trunk",
    )
    inputs = keras.Input(input_shape, name="images")
    return inputs, trunk(inputs)


def _mlp(
    input_shape,
    num_classes,
    hidden_units: Sequence[int] = (512, 256),
    dropout: float = 0.3,
    name: str = "mlp",
):
    check("dropout", dropout, UNIT_INTERVAL_OPEN)
    inputs = keras.Input(input_shape, name="images")
    x = layers.Flatten(name="flatten")(inputs)
    outputs = _dense_classifier(x, num_classes, hidden_units, dropout, True)
    return keras.Model(inputs, outputs, name=name)


def _transfer(
    input_shape,
    num_classes,
    base: str,
    weights: str | None = "auto",
    dense_units: Sequence[int] = (256,),
    dropout: float = 0.5,
    name: str | None = None,
):
    check("dropout", dropout, UNIT_INTERVAL_OPEN)
    if len(dense_units) > 2:
        raise ValueError(
            f"dense_units must hold at most two layers. Received: dense_units={dense_units}"
        )
    encoder = application(base, input_shape, weights=resolve_weights(base, weights))
    encoder.trainable = False
    inputs = keras.Input(input_shape, name="images")
    # training=False keeps the frozen base's BatchNorm in inference mode, also when
    # its top blocks are unfrozen for fine-tuning (Keras transfer-learning guide).
    features = encoder(inputs, training=False)
    outputs = _dense_classifier(features, num_classes, dense_units, dropout, False)
    return keras.Model(inputs, outputs, name=name or f"{base}_transfer")


def _find_application(model: keras.Model) -> tuple[str, keras.Model] | None:
    """The nested keras.applications network of a transfer classifier, with its kind."""
    for layer in model.layers:
        if not isinstance(layer, keras.Model):
            continue
        for kind, app_name in _APPLICATION_NAMES.items():
            # The keras.applications network itself (not a wrapper of the same name).
            if layer.name == app_name and any(
                _BLOCK_ENDS[kind].match(inner.name) for inner in layer.layers
            ):
                return kind, layer
        found = _find_application(layer)
        if found:
            return found
    return None


def has_transfer_base(model: keras.Model) -> bool:
    """Whether `model` holds a `keras.applications` base whose blocks can be fine-tuned."""
    return _find_application(model) is not None


def unfreeze_top_blocks(model: keras.Model, blocks: int) -> int:
    """Makes the top `blocks` blocks of a transfer classifier's base trainable.

    Blocks are InceptionV3's `mixed*` modules and ResNet-50's residual blocks. BatchNorm
    layers stay frozen (their statistics would not survive a few hundred images).

    Returns:
        The number of layers made trainable (0 for models without a base).
    """
    found = _find_application(model)
    if found is None or blocks <= 0:
        return 0
    kind, base = found
    ends = [i for i, layer in enumerate(base.layers) if _BLOCK_ENDS[kind].match(layer.name)]
    if blocks > len(ends) - 1:
        raise ValueError(
            f"fine_tune_blocks must be <= {len(ends) - 1} for {kind}. "
            f"Received: fine_tune_blocks={blocks}"
        )
    start = ends[-blocks - 1] + 1
    # Un-freeze the container, then re-freeze everything below the top blocks.
    for parent in (model, *[layer for layer in model.layers if isinstance(layer, keras.Model)]):
        parent.trainable = True
    count = 0
    for index, layer in enumerate(base.layers):
        trainable = index >= start and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = trainable
        count += bool(trainable and layer.weights)
    return count
