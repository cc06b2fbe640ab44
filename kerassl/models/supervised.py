"""Supervised baselines trained on the labeled examples only.

The opponent every self-supervised run is compared with: a classifier trained from scratch
(or on a frozen ImageNet network) on the same few labels, made as strong as honesty allows
with label-set augmentation (small rotations, shifts, crops), BatchNorm with momentum 0.9,
early stopping and ReduceLROnPlateau on a validation split carved from the labeled
examples. The test split is only ever passed to `evaluate_classifier`.

Models take float images in [0, 1] (NHWC) and output class probabilities.

Example:
    >>> model = build_classifier("cnn", (28, 28, 1), num_classes=10)
    >>> history = fit_supervised(model, data.x_train, data.y_train, split, epochs=200)
    >>> evaluate_classifier(model, data.x_test, data.y_test)
    {'top1': 0.71, 'top5': 0.97}
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from kerassl.models.encoders import BN_MOMENTUM, application, small_cnn

CLASSIFIERS = ("cnn", "cnn_deep", "mlp", "resnet50", "inceptionv3")
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


def _check_rate(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1). Received: {name}={value}")


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
      Fine-tuning of the top blocks happens in `fit_supervised(fine_tune_blocks=...)`.

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
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2. Received: num_classes={num_classes}")
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
    _check_rate("dense_dropout", dense_dropout)
    inputs, features = _cnn_trunk(input_shape, filters, convs_per_block, dropout, pooling, name)
    outputs = _dense_classifier(features, num_classes, dense_units, dense_dropout, True)
    return keras.Model(inputs, outputs, name=name)


def _cnn_trunk(input_shape, filters, convs_per_block, dropout, pooling, name):
    """`(images input, features)` of the small CNN trunk shared by `cnn` and `cnn_deep`."""
    _check_rate("dropout", dropout)
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
    _check_rate("dropout", dropout)
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
    _check_rate("dropout", dropout)
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
            f"fine_tune_blocks must be <= {len(ends) - 1} for {kind}. Received: {blocks}"
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


def label_augmenter(
    rotation: float = 0.04,
    translation: float = 0.1,
    zoom: float = 0.1,
    flip: bool = False,
    seed: int = 0,
) -> keras.Sequential:
    """Augmentation of the labeled set: small rotations, shifts and crops (zoom-in).

    Runs in the `tf.data` pipeline (Keras' RandomRotation/RandomZoom have no XLA kernel on
    CPU, so it is kept out of any jit-compiled step).

    Args:
        rotation: maximum rotation as a fraction of a full turn (0.04 ≈ 15°).
        translation: maximum shift as a fraction of height and width.
        zoom: maximum zoom in or out as a fraction (zoom-in crops the image).
        flip: add random horizontal flips (natural images; not for digits).
        seed: seed of the layers' random generators.
    """
    for name, value in (("rotation", rotation), ("translation", translation), ("zoom", zoom)):
        if not 0 <= value < 0.5:
            raise ValueError(f"{name} must be in [0, 0.5). Received: {name}={value}")
    stack: list[layers.Layer] = []
    if flip:
        stack.append(layers.RandomFlip("horizontal", seed=seed))
    if rotation:
        stack.append(layers.RandomRotation(rotation, fill_mode="constant", seed=seed + 1))
    if translation:
        stack.append(
            layers.RandomTranslation(translation, translation, fill_mode="constant", seed=seed + 2)
        )
    if zoom:
        stack.append(layers.RandomZoom((-zoom, zoom), fill_mode="constant", seed=seed + 3))
    return keras.Sequential(stack, name="label_augmenter")


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images → float32 in [0, 1] (float input is returned as float32 unchanged)."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32, copy=False)


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    augmenter: keras.Layer | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """Shuffled, batched, optionally augmented `(images, labels)` from uint8 arrays.

    Batches are full (`min(batch_size, len(x))` images; the remainder is dropped and
    differs every epoch): no tiny last batch upsets BatchNorm, and one traced step
    shape serves the whole training.
    """
    if len(x) == 0:
        raise ValueError("x must hold at least one image.")
    dataset = tf.data.Dataset.from_tensor_slices((to_float(x), y.astype(np.int64)))
    dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(min(batch_size, len(x)), drop_remainder=True)
    if augmenter is not None and augmenter.layers:
        dataset = dataset.map(lambda images, labels: (augmenter(images, training=True), labels))
    return dataset.prefetch(tf.data.AUTOTUNE)


def compile_classifier(
    model: keras.Model, learning_rate: float = 1e-3, weight_decay: float = 1e-4
) -> None:
    """Compiles with AdamW, sparse cross-entropy and accuracy (not jit-compiled)."""
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0. Received: learning_rate={learning_rate}")
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )


def train_classifier(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 300,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    augmenter: keras.Layer | None = None,
    patience: int = 60,
    fine_tune_blocks: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    seed: int = 0,
    verbose: int = 0,
) -> keras.callbacks.History:
    """Trains `model` on `(x, y)` with early stopping and ReduceLROnPlateau.

    Both callbacks watch the validation loss when `validation` is given (best weights are
    restored at the end), else the training loss, as study A did. With
    `fine_tune_blocks > 0` (transfer classifiers), the head is first trained with the base
    frozen for half the epochs, then the top blocks are unfrozen and training continues at
    a tenth of the learning rate.

    This is the one function every supervised training (baseline and tuner trials) goes
    through; it never sees the test split.

    Returns:
        The `History` (of both phases when fine-tuning).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1. Received: epochs={epochs}")
    keras.utils.set_random_seed(seed)
    monitor = "val_loss" if validation is not None and len(validation[0]) else "loss"
    val_data = None
    if monitor == "val_loss":
        val_data = (to_float(validation[0]), validation[1].astype(np.int64))
    data = train_dataset(x, y, batch_size, augmenter, seed)

    def run(lr: float, first: int, last: int) -> keras.callbacks.History:
        compile_classifier(model, lr, weight_decay)
        stop = keras.callbacks.EarlyStopping(
            monitor, patience=patience, restore_best_weights=True, start_from_epoch=first
        )
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor, factor=0.5, patience=max(patience // 3, 1), min_lr=lr / 100
        )
        return model.fit(
            data,
            validation_data=val_data,
            epochs=last,
            initial_epoch=first,
            callbacks=[stop, plateau, *callbacks],
            shuffle=False,  # the dataset reshuffles itself each epoch
            verbose=verbose,
        )

    if fine_tune_blocks <= 0 or _find_application(model) is None:
        return run(learning_rate, initial_epoch, epochs)
    middle = max(initial_epoch, (initial_epoch + epochs) // 2)
    history = run(learning_rate, initial_epoch, middle) if middle > initial_epoch else None
    unfreeze_top_blocks(model, fine_tune_blocks)
    second = run(learning_rate / 10, middle, epochs)
    if history is not None:
        for key, values in second.history.items():
            history.history.setdefault(key, []).extend(values)
        history.epoch.extend(second.epoch)
        return history
    return second


def fit_supervised(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    split: Any,
    epochs: int = 300,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    augment: bool = True,
    seed: int = 0,
    verbose: int = 0,
    weight_decay: float = 1e-4,
    patience: int = 60,
    flip: bool = False,
    fine_tune_blocks: int = 0,
) -> keras.callbacks.History:
    """Trains a classifier on `split.labeled`, selecting on `split.validation`.

    Args:
        model: a classifier from `build_classifier` (compiled here).
        x_train: uint8 [N, H, W, C] training pool (unlabeled images are ignored).
        y_train: int [N] labels (-1 = unlabeled).
        split: `Split` with index arrays `labeled` and `validation` into `x_train`.
        epochs: maximum epochs (early stopping usually ends sooner).
        batch_size: labeled images per step.
        learning_rate: AdamW learning rate (halved on plateaus).
        augment: augment the labeled set (rotation, shift, crop; see `label_augmenter`).
        seed: seed of shuffling, augmentation and initialisation.
        verbose: Keras `fit` verbosity.
        weight_decay: AdamW decoupled weight decay.
        patience: early-stopping patience in epochs (ReduceLROnPlateau uses a third).
        flip: add horizontal flips to the augmentation.
        fine_tune_blocks: transfer classifiers: top blocks fine-tuned in a second phase.
    """
    labeled = np.asarray(split.labeled, dtype=np.int64)
    validation_index = np.asarray(getattr(split, "validation", ()), dtype=np.int64)
    if np.any(y_train[labeled] < 0) or np.any(y_train[validation_index] < 0):
        raise ValueError("split.labeled and split.validation must index labeled examples.")
    validation = None
    if len(validation_index):
        validation = (x_train[validation_index], y_train[validation_index])
    augmenter = label_augmenter(flip=flip, seed=seed) if augment else None
    return train_classifier(
        model,
        x_train[labeled],
        y_train[labeled],
        validation=validation,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        augmenter=augmenter,
        patience=patience,
        fine_tune_blocks=fine_tune_blocks,
        seed=seed,
        verbose=verbose,
    )


def evaluate_classifier(
    model: keras.Model, x_test: np.ndarray, y_test: np.ndarray, batch_size: int = 256
) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy on a labeled split."""
    probabilities = model.predict(to_float(x_test), batch_size=batch_size, verbose=0)
    return accuracy_metrics(probabilities, y_test)


def accuracy_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`{"top1": …, "top5": …}` from class scores [N, K] and integer labels [N]."""
    labels = np.asarray(labels, dtype=np.int64)
    ranked = np.argsort(-probabilities, axis=1)  # [N, K] classes by decreasing score
    metrics = {"top1": float(np.mean(ranked[:, 0] == labels))}
    if probabilities.shape[1] > 5:
        metrics["top5"] = float(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1)))
    return metrics


def supervised_baseline(
    data: Any,
    split: Any,
    model: str = "cnn",
    epochs: int = 300,
    seed: int = 0,
    verbose: int = 0,
    **hparams: Any,
) -> tuple[dict[str, Any], keras.Model]:
    """Builds, trains (labeled examples only) and tests a supervised baseline.

    Args:
        data: `ImageData` (uint8 arrays, `y_train` -1 for unlabeled).
        split: `Split` of labeled/validation indices into `data.x_train`.
        model: classifier name (see `build_classifier`).
        epochs: maximum training epochs.
        seed: seed of initialisation, shuffling and augmentation.
        verbose: Keras `fit` verbosity.
        **hparams: builder arguments for `build_classifier`.

    Returns:
        `{"model", "top1", "top5" (> 5 classes), "epochs_run", "num_labeled"}` on the
        test split, and the trained classifier ([0, 1] images → class probabilities).
    """
    keras.utils.set_random_seed(seed)
    num_classes = len(data.class_names)
    classifier = build_classifier(model, data.x_train.shape[1:], num_classes, **hparams)
    # Horizontal flips join the label-set augmentation unless the images are digit-like
    # (the same default as the flip hyperparameter of `kerassl.tune`).
    flip = data.preset != "digits"
    history = fit_supervised(
        classifier,
        data.x_train,
        data.y_train,
        split,
        epochs=epochs,
        seed=seed,
        verbose=verbose,
        flip=flip,
    )
    metrics = evaluate_classifier(classifier, data.x_test, data.y_test)
    return {
        "model": model,
        **metrics,
        "epochs_run": len(history.epoch),
        "num_labeled": int(len(split.labeled) + len(getattr(split, "validation", ()))),
    }, classifier
