"""Decoded pixels → the model's input pixels: the one preprocessing of training and serving.

Every dataset loader (`kerassl.data.formats`) stores the output of `preprocess_images`, and
the exported SavedModel (`kerassl.serving.export`) runs the same function in its graph, so
a model sees in production exactly the uint8 pixels it was trained on; both then scale them
with `to_unit_float`.

The rule: drop alpha; convert channels (RGB → gray with the ITU-R 601 luma `GRAY_WEIGHTS`,
gray → RGB by repeating); centre-crop a non-square image to a square (the borders of the
long side are dropped, the aspect ratio is kept); resize the square bilinearly to
`image_size x image_size`, antialiased when shrinking; round and clip to uint8. An image
already of that size and channel count passes unchanged.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

# ITU-R 601-2 luma weights, the ones tf.image.rgb_to_grayscale and PIL's "L" mode use.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def to_channels(images: tf.Tensor, channels: int) -> tf.Tensor:
    """Converts float images [..., H, W, c] with c in 1..4 to `channels` (1 or 3).

    Alpha (2nd of 2 or 4th of 4 channels) is dropped; RGB → gray uses `GRAY_WEIGHTS`;
    gray → RGB repeats the channel. An input that already has `channels` passes unchanged.
    The channel count may be unknown until the graph runs (a decoded PNG or JPEG).
    """
    count = tf.shape(images)[-1]
    tf.debugging.assert_less_equal(count, 4, message="images must have 1 to 4 channels")
    images = tf.cond(tf.equal(count % 2, 0), lambda: images[..., :-1], lambda: images)
    is_gray = tf.equal(tf.shape(images)[-1], 1)
    if channels == 1:
        weights = tf.constant(GRAY_WEIGHTS, tf.float32)
        images = tf.cond(
            is_gray,
            lambda: images,
            lambda: tf.reduce_sum(images[..., :3] * weights, axis=-1, keepdims=True),
        )
    else:
        images = tf.cond(is_gray, lambda: tf.repeat(images, 3, axis=-1), lambda: images[..., :3])
    return tf.ensure_shape(images, [None] * (images.shape.rank - 1) + [channels])


def preprocess_images(images: tf.Tensor, image_size: int, channels: int) -> tf.Tensor:
    """Decoded pixels → the model's uint8 input pixels, by the rule of this module.

    Args:
        images: [H, W, c] or [N, H, W, c] pixels of any size, c in 1..4 (alpha last);
            uint8, or a real dtype holding values in [0, 255] (rounded to uint8 first).
        image_size: side S of the square output.
        channels: channels of the output, 1 or 3.

    Returns:
        uint8 [..., S, S, channels].

    Example:
        >>> wide = tf.zeros([30, 40, 3], tf.uint8)
        >>> preprocess_images(wide, 16, 1).shape
        TensorShape([16, 16, 1])
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels}")
    images = tf.convert_to_tensor(images)
    if images.shape.rank not in (3, 4):
        raise ValueError(
            f"images must be [H, W, C] or [N, H, W, C]. Received: shape={images.shape}"
        )
    if images.dtype != tf.uint8:
        images = tf.cast(tf.clip_by_value(tf.round(tf.cast(images, tf.float32)), 0, 255), tf.uint8)
    shape = tf.shape(images)
    height, width = shape[-3], shape[-2]
    side = tf.minimum(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    # Cropping first (a slice of uint8) is exact and keeps the float copy small.
    square = images[..., top : top + side, left : left + side, :]
    square = to_channels(tf.cast(square, tf.float32), channels)

    def resize(antialias: bool) -> tf.Tensor:
        size = (image_size, image_size)
        return tf.image.resize(square, size, method="bilinear", antialias=antialias)

    # Antialiasing is needed only when shrinking, and is about 15x slower.
    resized = tf.case(
        [(tf.equal(side, image_size), lambda: square), (side > image_size, lambda: resize(True))],
        default=lambda: resize(False),
    )
    pixels = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(
        pixels, [None] * (images.shape.rank - 3) + [image_size, image_size, channels]
    )


def to_unit_float(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 pixels → float32 in [0, 1], `pixels / 255` (the input of every kerassl model)."""
    return tf.cast(pixels, tf.float32) / 255.0


def resize_images(
    x: np.ndarray, image_size: int | None, channels: int | None = None, chunk: int = 4096
) -> np.ndarray:
    """`preprocess_images` for a uint8 array [N, H, W, c], by chunks, in one traced graph.

    Args:
        x: uint8 [N, H, W, c].
        image_size: side of the output; None returns `x` itself.
        channels: channels of the output, 1 or 3; None keeps c.
        chunk: images per call of the graph.

    Returns:
        uint8 [N, image_size, image_size, channels]; `x` itself when it already is.
    """
    channels = channels or x.shape[-1]
    if image_size is None or x.shape[1:] == (image_size, image_size, channels):
        return x
    graph = _graph(image_size, channels)
    out = np.empty((len(x), image_size, image_size, channels), np.uint8)
    for start in range(0, len(x), chunk):
        out[start : start + chunk] = graph(tf.constant(x[start : start + chunk])).numpy()
    return out


@functools.cache
def _graph(image_size: int, channels: int) -> tf.types.experimental.GenericFunction:
    """`preprocess_images` traced once for every batch shape of uint8 images."""
    spec = tf.TensorSpec([None, None, None, None], tf.uint8)
    return tf.function(
        lambda images: preprocess_images(images, image_size, channels), input_signature=[spec]
    )
