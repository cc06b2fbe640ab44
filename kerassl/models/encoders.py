"""Encoders: `keras.Model`s mapping float images in [0, 1] (NHWC) to a flat feature vector.

Every encoder here takes images as kerassl passes them around (float32 in [0, 1], 1 or 3
channels) and does its own input adaptation inside the graph (channel repeat, resizing to
a network's minimum size, ImageNet preprocessing), so an encoder saved to `.keras` or
exported as a SavedModel needs nothing else.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from kerassl.catalog import ENCODERS, known
from kerassl.errors import UserError

BN_MOMENTUM = 0.9  # Keras' default 0.99 collapses networks trained on ~100 labeled images.


# keras.applications networks: (constructor, minimum input size, preprocessing mode).
_APPLICATIONS = {
    "resnet50": ("ResNet50", 32, "caffe"),
    "inceptionv3": ("InceptionV3", 75, "tf"),
}


@keras.saving.register_keras_serializable(package="kerassl")
class ImageAdapter(layers.Layer):
    """Adapts [0, 1] images to what a pretrained network expects, inside the graph.

    Repeats a single channel to three (never re-initialises a pretrained first conv),
    resizes up to `min_size` when smaller, and applies ImageNet preprocessing:
    `"tf"` scales to [-1, 1] (InceptionV3), `"caffe"` to BGR 0..255 minus the ImageNet
    mean (ResNet50), `"none"` leaves values in [0, 1].

    Args:
        channels: int, channels the network wants (1 or 3).
        min_size: int, smallest spatial size the network accepts; 0 for no resizing.
        mode: str, one of `"none"`, `"tf"`, `"caffe"`.
    """

    def __init__(self, channels: int = 3, min_size: int = 0, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3. Received: channels={channels}")
        if mode not in ("none", "tf", "caffe"):
            raise ValueError(f"mode must be 'none', 'tf' or 'caffe'. Received: mode={mode!r}")
        self.channels = channels
        self.min_size = min_size
        self.mode = mode

    def call(self, images):
        if images.shape[-1] == 1 and self.channels == 3:
            images = ops.repeat(images, 3, axis=-1)
        height, width = images.shape[1], images.shape[2]
        if self.min_size and (height < self.min_size or width < self.min_size):
            size = (max(height, self.min_size), max(width, self.min_size))
            images = ops.image.resize(images, size, interpolation="bilinear")
        if self.mode == "tf":
            images = images * 2.0 - 1.0
        elif self.mode == "caffe":
            bgr = ops.flip(images, axis=-1) * 255.0
            images = bgr - ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=images.dtype)
        return images

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        if self.min_size and height is not None and width is not None:
            height, width = max(height, self.min_size), max(width, self.min_size)
        return (batch, height, width, self.channels)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "min_size": self.min_size,
            "mode": self.mode,
        }


def _bn(sync: bool, name: str | None = None) -> layers.Layer:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, synchronized=sync, name=name)


def small_cnn(
    input_shape: tuple[int, int, int],
    filters: tuple[int, ...] = (32, 64, 128),
    convs_per_block: int = 2,
    dropout: float = 0.0,
    pooling: str = "avg",
    sync_bn: bool = False,
    name: str = "cnn",
) -> keras.Model:
    """The source studies' small CNN: blocks of (conv3x3-BN-ReLU) x k, max-pool, dropout.

    Study A's baseline used one conv per block (32/64/128 filters, dropout 0.2); the
    default here has two per block (a 6-conv CNN), which learns better SSL features on
    28 px images at a small cost.

    Args:
        input_shape: (height, width, channels).
        filters: filters of each block.
        convs_per_block: conv-BN-ReLU layers before each max-pool.
        dropout: dropout rate after each pool (0.2 in study A's supervised CNN).
        pooling: `"avg"` (global average pooling) or `"flatten"`.
        sync_bn: synchronise BatchNorm statistics across replicas.
    """
    if pooling not in ("avg", "flatten"):
        raise ValueError(f"pooling must be 'avg' or 'flatten'. Received: pooling={pooling!r}")
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for block, width in enumerate(filters):
        for conv in range(convs_per_block):
            x = layers.Conv2D(
                width, 3, padding="same", use_bias=False, name=f"b{block}_conv{conv}"
            )(x)
            x = _bn(sync_bn, f"b{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"b{block}_relu{conv}")(x)
        if x.shape[1] >= 2 and x.shape[2] >= 2:
            x = layers.MaxPooling2D(name=f"b{block}_pool")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"b{block}_dropout")(x)
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = layers.Flatten(name="pool")(x)
    return keras.Model(inputs, x, name=name)


def _basic_block(x, width: int, stride: int, sync_bn: bool, name: str):
    shortcut = x
    y = layers.Conv2D(
        width, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1"
    )(x)
    y = _bn(sync_bn, f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = _bn(sync_bn, f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = _bn(sync_bn, f"{name}_proj_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def resnet18(
    input_shape: tuple[int, int, int],
    width: int = 64,
    sync_bn: bool = False,
    name: str = "resnet18",
) -> keras.Model:
    """ResNet-18 (He et al. 2016) in the small-image variant used by SimCLR for CIFAR-10:
    a 3x3 stride-1 stem without max-pool, then 4 stages of 2 basic blocks
    (width, 2w, 4w, 8w filters; stride 2 from the second stage), global average pooling.

    Args:
        input_shape: (height, width, channels).
        width: filters of the first stage (64 in the paper; smaller for CPU budgets).
        sync_bn: synchronise BatchNorm statistics across replicas.
    """
    inputs = keras.Input(input_shape, name="images")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.ReLU(name="stem_relu")(_bn(sync_bn, "stem_bn")(x))
    for stage in range(4):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, width * 2**stage, stride, sync_bn, f"s{stage}b{block}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name=name)


def application(
    name: str,
    input_shape: tuple[int, int, int],
    weights: str | None = None,
    trainable: bool = True,
) -> keras.Model:
    """A `keras.applications` network (ResNet50, InceptionV3) as an encoder.

    Grayscale is repeated to 3 channels and images smaller than the network's minimum size
    are resized up inside the graph; features are globally average-pooled
    (2048-d for both).

    Args:
        name: `"resnet50"` or `"inceptionv3"`.
        input_shape: (height, width, channels) of kerassl's [0, 1] images.
        weights: `None` (random init) or `"imagenet"` (needs the weights file in the Keras
            cache, `~/.keras/models/`, or network access to download it).
        trainable: False freezes the network (transfer learning with a frozen base).
    """
    constructor, min_size, mode = _APPLICATIONS[name]
    inputs = keras.Input(input_shape, name="images")
    adapter = ImageAdapter(channels=3, min_size=min_size, mode=mode, name="adapt")
    adapted = adapter(inputs)
    try:
        base = getattr(keras.applications, constructor)(
            include_top=False, weights=weights, input_shape=tuple(adapted.shape[1:]), pooling="avg"
        )
    except Exception as error:  # weight download/cache failures surface as many types
        if weights is None:
            raise
        raise UserError(
            f"cannot load {constructor} weights={weights!r} ({type(error).__name__}); "
            "put the weights file in ~/.keras/models/ or use --weights none"
        ) from None
    base.trainable = trainable
    # keras.applications build their BatchNorm with Keras' 0.99; pretrained from scratch
    # for a few hundred steps their moving statistics would stay near the initial ones.
    for layer in base._flatten_layers():
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return keras.Model(inputs, base(adapted), name=name)


def build_encoder(
    name: str,
    input_shape: tuple[int, int, int],
    weights: str | None = None,
    sync_bn: bool = False,
    **kwargs,
) -> keras.Model:
    """Builds an encoder by name: `cnn`, `resnet18`, `resnet50`, `inceptionv3`.

    Extra keyword arguments go to the builder (`filters`, `convs_per_block`, `width`, …).
    """
    known("encoder", name, ENCODERS)
    if weights is not None and name not in _APPLICATIONS:
        raise UserError(f"encoder {name!r} has no pretrained weights; use --weights none")
    if name == "cnn":
        return small_cnn(input_shape, sync_bn=sync_bn, **kwargs)
    if name == "resnet18":
        return resnet18(input_shape, sync_bn=sync_bn, **kwargs)
    return application(name, input_shape, weights=weights, **kwargs)
