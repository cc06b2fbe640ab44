"""The one preprocessing of training and serving: crop, resize, channels, rounding."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kerassl.data.preprocess import GRAY_WEIGHTS, preprocess_images, resize_images, to_unit_float


def random_pixels(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", [(12, 12, 1), (3, 12, 12, 3)])
def test_images_at_the_size_pass_unchanged(shape):
    x = random_pixels(shape)
    out = preprocess_images(x, 12, shape[-1])
    assert out.dtype == tf.uint8
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(to_unit_float(out), x.astype(np.float32) / np.float32(255))


def test_centre_crop_then_resize():
    wide = np.zeros((2, 4, 8, 1), np.uint8)
    wide[:, :, 2:6] = 200  # the centre 4x4 square
    np.testing.assert_array_equal(resize_images(wide, 4), np.full((2, 4, 4, 1), 200, np.uint8))
    tall = np.zeros((1, 8, 4, 3), np.uint8)
    tall[:, 2:6] = 90
    np.testing.assert_array_equal(resize_images(tall, 2), np.full((1, 2, 2, 3), 90, np.uint8))
    assert resize_images(wide, None) is wide
    square = wide[:, :, 2:6]
    assert resize_images(square, 4) is square and resize_images(square, 4, 3).shape[-1] == 3
    # Upsampling a 2-pixel ramp bilinearly (half-pixel centres): exact rounded values.
    ramp = np.array([[0, 255]], np.uint8).reshape(1, 1, 2, 1).repeat(2, axis=1)
    np.testing.assert_array_equal(resize_images(ramp, 4)[0, 0, :, 0], [0, 64, 191, 255])


def test_shrinking_is_antialiased_and_rounded():
    x = random_pixels((2, 30, 21, 3), seed=1)
    square = x[:, 4:25].astype(np.float32)  # (30 - 21) // 2 = 4 rows off the top
    expected = np.round(tf.image.resize(square, [12, 12], antialias=True).numpy())
    np.testing.assert_array_equal(preprocess_images(x, 12, 3), expected.astype(np.uint8))
    aliased = np.round(tf.image.resize(square, [12, 12], antialias=False).numpy())
    assert not np.array_equal(expected, aliased)


def test_channel_conversions_and_alpha():
    rgb = random_pixels((2, 8, 8, 3), seed=2)
    rgba = np.concatenate([rgb, random_pixels((2, 8, 8, 1), seed=3)], axis=-1)
    luma = np.round(rgb.astype(np.float32) @ np.float32(GRAY_WEIGHTS))[..., None]
    np.testing.assert_array_equal(preprocess_images(rgb, 8, 1), luma.astype(np.uint8))
    np.testing.assert_array_equal(preprocess_images(rgba, 8, 3), rgb)
    gray = random_pixels((2, 8, 8, 1), seed=4)
    gray_alpha = np.concatenate([gray, rgb[..., :1]], axis=-1)
    np.testing.assert_array_equal(preprocess_images(gray, 8, 3), np.repeat(gray, 3, axis=-1))
    np.testing.assert_array_equal(preprocess_images(gray_alpha, 8, 1), gray)
    with pytest.raises(ValueError, match="channels"):
        preprocess_images(gray, 8, 2)


def test_float_pixels_are_rounded_first_and_shapes_may_be_unknown():
    x = random_pixels((2, 20, 13, 3), seed=5)
    expected = preprocess_images(x, 9, 1)
    np.testing.assert_array_equal(preprocess_images(x.astype(np.float32) + 0.3, 9, 1), expected)
    graph = tf.function(
        lambda images: preprocess_images(images, 9, 1),
        input_signature=[tf.TensorSpec([None, None, None], tf.uint8)],
    )
    for i in range(2):
        np.testing.assert_array_equal(graph(x[i]), expected[i])
