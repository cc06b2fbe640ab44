import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kerassl.data import image_ops
from kerassl.data.augment import Augmenter, make_augmenter
from kerassl.data.image_ops import random_apply
from kerassl.data.presets import OPS, PRESETS
from kerassl.data.preview import save_augmentation_grid
from kerassl.errors import UserError


def images(n=8, size=16, channels=1, seed=0):
    """Random float32 images in [0, 1]: no symmetry, so any flip or rotation shows."""
    return np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)


def asymmetric(size=16, channels=1):
    """One image with distinct values everywhere (a ramp plus a bright corner patch)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    image = (rows * size + cols) / (size * size)
    image[:3, -4:] = 1.0
    return np.repeat(image[None, :, :, None], channels, axis=-1)


# ------------------------------------------------------------------ presets, shapes, seeds


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", PRESETS)
def test_presets_keep_shape_dtype_and_range(preset, channels):
    x = images(channels=channels)
    y = np.asarray(make_augmenter(preset, seed=0)(x))
    assert y.shape == x.shape
    assert y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert np.isfinite(y).all()


@pytest.mark.parametrize("preset", ["digits", "fashion", "natural", "histology"])
def test_two_calls_give_two_different_views(preset):
    augmenter = make_augmenter(preset, seed=0)
    x = images(channels=3)
    view1, view2 = np.asarray(augmenter(x)), np.asarray(augmenter(x))
    # Every image differs between the views, not only the batch as a whole.
    assert (np.abs(view1 - view2).reshape(len(x), -1).max(axis=1) > 1e-3).all()


@pytest.mark.parametrize("preset", ["digits", "fashion", "natural", "histology"])
def test_same_seed_same_views_other_seed_other_views(preset):
    x = images(channels=3)
    a, b = make_augmenter(preset, seed=7), make_augmenter(preset, seed=7)
    for _ in range(2):  # the streams stay in step call after call
        np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x)))
    other = np.asarray(make_augmenter(preset, seed=8)(x))
    assert np.abs(other - np.asarray(make_augmenter(preset, seed=7)(x))).max() > 1e-3


@pytest.mark.parametrize("preset", PRESETS)
def test_training_false_is_identity(preset):
    x = images(channels=3)
    np.testing.assert_array_equal(np.asarray(make_augmenter(preset, seed=0)(x, training=False)), x)


def test_none_preset_is_identity_when_training():
    x = images(channels=3)
    np.testing.assert_array_equal(np.asarray(make_augmenter("none", seed=0)(x)), x)


@pytest.mark.parametrize(
    "preset, channels",
    [("digits", 1), ("fashion", 1), ("natural", 3), ("natural", 1), ("histology", 3)],
)
def test_runs_under_xla_with_unknown_batch(preset, channels):
    augmenter = make_augmenter(preset, seed=0)
    spec = tf.TensorSpec([None, 16, 16, channels], tf.float32)
    view = tf.function(augmenter, jit_compile=True, input_signature=[spec])
    x = tf.constant(images(channels=channels))
    view1, view2 = np.asarray(view(x)), np.asarray(view(x))
    assert view1.shape == x.shape
    assert 0.0 <= view1.min() and view1.max() <= 1.0
    # The seed generator's state advances inside the compiled function: a new view per call.
    assert (np.abs(view1 - view2).reshape(len(x), -1).max(axis=1) > 1e-3).all()


def test_make_augmenter_rejects_unknown_preset():
    with pytest.raises(UserError, match="sepia") as info:
        make_augmenter("sepia")
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in PRESETS)


@pytest.mark.parametrize("channels", [1, 3])
def test_composed_ops_augment_as_their_options_do(channels):
    x = images(channels=channels)
    fields = {**OPS["crop"], **OPS["blur"]}
    composed = make_augmenter("crop+blur", seed=4)
    assert composed.preset == "crop+blur" and composed.crop_scale == (0.08, 1.0)
    y = np.asarray(composed(x))
    assert y.shape == x.shape and 0.0 <= y.min() and y.max() <= 1.0
    assert (np.abs(y - x).reshape(len(x), -1).max(axis=1) > 1e-3).all()  # every image changed
    same = np.asarray(make_augmenter("none", seed=4, **fields)(x))
    np.testing.assert_allclose(y, same, atol=1e-6)
    with pytest.raises(UserError, match="unknown augmentation 'crp' in 'crp\\+blur'"):
        make_augmenter("crp+blur")


def test_make_augmenter_applies_overrides():
    augmenter = make_augmenter("natural", seed=3, rotation=15, grayscale_prob=0.0)
    assert augmenter.rotation == 15.0 and augmenter.grayscale_prob == 0.0
    assert augmenter.crop_scale == (0.08, 1.0) and augmenter.seed == 3


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.5, 1.5)}, "crop_scale"),
        ({"crop_ratio": (1.5, 1.0)}, "crop_ratio"),
        ({"rotation": -1}, "rotation"),
        ({"flip": "diagonal"}, "flip"),
        ({"fill_mode": "wrap"}, "fill_mode"),
        ({"hue": 0.6}, "hue"),
        ({"blur_prob": 1.5}, "blur_prob"),
        ({"preset": "sepia"}, "preset"),
    ],
)
def test_bad_arguments_raise_keras_style_value_errors(kwargs, bad):
    with pytest.raises(ValueError, match=f"Received: {bad}="):
        Augmenter(**kwargs)


# ------------------------------------------------------------------ preset contents


def test_natural_preset_is_simclr_with_strength_half():
    a = Augmenter("natural")
    assert a.crop_scale == (0.08, 1.0) and a.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert a.flip == "horizontal" and a.rotation == 0.0 and not a.rot90
    # Chen et al. 2020, appendix A: 0.8·s, 0.8·s, 0.8·s, 0.2·s with s = 0.5.
    assert (a.brightness, a.contrast, a.saturation, a.hue) == pytest.approx((0.4, 0.4, 0.4, 0.1))
    assert (a.color_jitter_prob, a.grayscale_prob, a.blur_prob) == (0.8, 0.2, 0.5)
    assert a.blur_sigma == (0.1, 2.0)
    stronger = Augmenter("natural", color_strength=1.0, hue=0.05)
    assert (stronger.brightness, stronger.hue) == pytest.approx((0.8, 0.05))


def test_digits_and_histology_presets():
    digits = Augmenter("digits")
    assert digits.flip == "none" and not digits.rot90  # 6 and 9 stay apart
    assert digits.crop_scale == (0.35, 1.0) and digits.rotation == 25.0
    assert digits.color_jitter_prob == 0 and digits.grayscale_prob == 0 and digits.blur_prob == 0
    histology = Augmenter("histology")
    assert histology.flip == "horizontal_and_vertical" and histology.rot90
    assert histology.grayscale_prob == 0.0 and histology.blur_prob > 0
    assert 0 < histology.hue <= 0.05 and 0 < histology.saturation <= 0.2


def test_digits_preset_never_flips_or_turns():
    # Switch off the crop and leave a negligible rotation, so that the geometric path still
    # runs: the result must stay the asymmetric input, call after call (a flip or a quarter
    # turn would move its bright corner).
    augmenter = make_augmenter("digits", seed=0, crop_scale=(1, 1), rotation=1e-3)
    assert augmenter.has_geometry
    x = np.repeat(asymmetric(), 16, axis=0)
    for _ in range(3):
        np.testing.assert_allclose(np.asarray(augmenter(x)), x, atol=1e-3)


def test_horizontal_flip_mirrors_left_right_about_half_the_time():
    augmenter = make_augmenter("none", seed=0, flip="horizontal")
    x = np.repeat(asymmetric(), 64, axis=0)
    y = np.asarray(augmenter(x))
    same = np.abs(y - x).reshape(64, -1).max(axis=1) < 1e-5
    mirrored = np.abs(y - x[:, :, ::-1]).reshape(64, -1).max(axis=1) < 1e-5
    assert (same ^ mirrored).all()
    assert 16 <= mirrored.sum() <= 48


# ------------------------------------------------------------------ geometry maths


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_affine_resample_quarter_turns_match_np_rot90(k):
    x = images(n=2, size=12, channels=3)
    angles = np.full([2], k * math.pi / 2, np.float32)
    y = image_ops.affine_resample(
        x, image_ops.rotation_matrices(angles), np.zeros([2, 2], np.float32)
    )
    np.testing.assert_allclose(np.asarray(y), np.rot90(x, k, axes=(1, 2)), atol=1e-5)


def test_rot90_option_gives_all_four_quarter_turns():
    augmenter = make_augmenter("none", seed=0, rot90=True)
    x = np.repeat(asymmetric(size=13), 64, axis=0)  # odd size: centre on a pixel
    y = np.asarray(augmenter(x))
    turns = []
    for view in y:
        match = [k for k in range(4) if np.allclose(view, np.rot90(x[0], k), atol=1e-5)]
        assert len(match) == 1
        turns.append(match[0])
    assert set(turns) == {0, 1, 2, 3}


def test_affine_resample_half_pixel_shift_averages_neighbours():
    x = images(n=2, size=10)
    offsets = np.array([[0.5, 0.0], [0.0, 0.5]], np.float32)  # x by ½ px, y by ½ px
    y = np.asarray(
        image_ops.affine_resample(x, np.tile(np.eye(2, dtype=np.float32), [2, 1, 1]), offsets)
    )
    np.testing.assert_allclose(y[0, :, :-1], (x[0, :, :-1] + x[0, :, 1:]) / 2, atol=1e-6)
    np.testing.assert_allclose(y[1, :-1], (x[1, :-1] + x[1, 1:]) / 2, atol=1e-6)


@pytest.mark.parametrize("fill_mode", ["reflect", "nearest", "constant"])
def test_fill_modes_on_a_rotated_constant_image(fill_mode):
    x = np.full([1, 15, 15, 1], 0.6, np.float32)
    matrices = image_ops.rotation_matrices(np.array([math.pi / 4], np.float32))
    y = np.asarray(
        image_ops.affine_resample(x, matrices, np.zeros([1, 2], np.float32), fill_mode, 0.25)
    )
    assert y[0, 7, 7, 0] == pytest.approx(0.6)
    if fill_mode == "constant":
        assert y[0, 0, 0, 0] == pytest.approx(0.25)  # the corner comes from outside
    else:
        np.testing.assert_allclose(y, 0.6, atol=1e-6)


def test_reflect_mode_mirrors_about_the_edge():
    x = images(n=1, size=8)
    shift = np.array([[-3.0, 0.0]], np.float32)  # output column j reads input column j − 3
    y = np.asarray(image_ops.affine_resample(x, np.eye(2, dtype=np.float32)[None], shift))
    np.testing.assert_allclose(y[0, :, 3:], x[0, :, :5], atol=1e-6)
    np.testing.assert_allclose(y[0, :, :3], x[0, :, 2::-1], atol=1e-6)  # d c b | a b c d


def test_crop_of_full_scale_without_rotation_or_flip_is_identity():
    augmenter = Augmenter(
        "natural",
        crop_scale=(1, 1),
        flip="none",
        color_jitter_prob=0,
        grayscale_prob=0,
        blur_prob=0,
        seed=0,
    )
    x = images(channels=3)
    np.testing.assert_allclose(np.asarray(augmenter(x)), x, atol=1e-6)
    # The sampler itself returns the identity map for a full-scale crop (any aspect range).
    matrices, offsets = augmenter._sample_geometry(8, 16, 16)
    np.testing.assert_allclose(np.asarray(matrices), np.tile(np.eye(2), [8, 1, 1]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(offsets), 0.0, atol=1e-6)
    resampled = image_ops.affine_resample(x, matrices, offsets)
    np.testing.assert_allclose(np.asarray(resampled), x, atol=1e-6)


def test_sampled_crops_have_the_requested_area_aspect_and_stay_inside():
    augmenter = Augmenter("none", crop_scale=(0.2, 0.6), crop_ratio=(0.5, 2.0), seed=0)
    size = 20
    matrices, offsets = (np.asarray(t) for t in augmenter._sample_geometry(256, size, size))
    width, height = matrices[:, 0, 0], matrices[:, 1, 1]  # no rotation: diag(w, h)
    np.testing.assert_allclose(matrices[:, 0, 1], 0, atol=1e-7)
    area = np.abs(width * height)
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 0.6 + 1e-6
    ratio = np.abs(width / height)
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 2.0 + 1e-5
    # Both sides inside the image, and the crop's extent too.
    assert np.abs(width).max() <= 1 and np.abs(height).max() <= 1
    assert (np.abs(offsets[:, 0]) + np.abs(width) * size / 2 <= size / 2 + 1e-4).all()
    assert (np.abs(offsets[:, 1]) + np.abs(height) * size / 2 <= size / 2 + 1e-4).all()
    # Area roughly uniform over the range, and both landscape and portrait crops occur.
    assert abs(area.mean() - 0.4) < 0.03
    assert (ratio < 0.9).any() and (ratio > 1.1).any()


def test_rotation_angles_stay_within_the_range():
    augmenter = Augmenter("none", rotation=30, seed=0)
    matrices = np.asarray(augmenter._sample_geometry(256, 16, 16)[0])
    angles = np.degrees(np.arctan2(matrices[:, 1, 0], matrices[:, 0, 0]))
    assert np.abs(angles).max() <= 30 + 1e-4
    assert angles.min() < -20 and angles.max() > 20


# ------------------------------------------------------------------ colour and blur maths


def test_random_apply_selects_per_image():
    x = images(n=64)
    y = np.asarray(random_apply(lambda t: 1.0 - t, 0.5, x, keras.random.SeedGenerator(0)))
    applied = np.abs(y - (1.0 - x)).reshape(64, -1).max(axis=1) < 1e-6
    kept = np.abs(y - x).reshape(64, -1).max(axis=1) < 1e-6
    assert (applied ^ kept).all()
    assert 16 <= applied.sum() <= 48
    np.testing.assert_array_equal(np.asarray(random_apply(lambda t: 1.0 - t, 0.0, x, 0)), x)
    np.testing.assert_allclose(np.asarray(random_apply(lambda t: 1.0 - t, 1.0, x, 0)), 1.0 - x)
    with pytest.raises(ValueError, match="Received: p=2"):
        random_apply(lambda t: t, 2, x, 0)


def test_colour_ops_against_their_definitions():
    x = 0.25 + 0.5 * images(n=4, channels=3)  # inside [0.25, 0.75]: no clipping below
    f = np.array([1.0, 0.5, 1.2, 0.8], np.float32)
    np.testing.assert_allclose(
        image_ops.adjust_brightness(x, f), x * f[:, None, None, None], atol=1e-6
    )
    mean = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(
        image_ops.adjust_contrast(x, f), (x - mean) * f[:, None, None, None] + mean, atol=1e-6
    )
    gray = (x @ np.array([0.2989, 0.587, 0.114], np.float32))[..., None]
    np.testing.assert_allclose(
        image_ops.adjust_saturation(x, f), gray + (x - gray) * f[:, None, None, None], atol=1e-6
    )
    np.testing.assert_allclose(
        image_ops.adjust_saturation(x, 0 * f), np.repeat(gray, 3, -1), atol=1e-6
    )
    np.testing.assert_allclose(image_ops.grayscale(x), np.repeat(gray, 3, -1), atol=1e-6)


def test_hue_rotation_keeps_luma_and_grays_and_composes():
    x = 0.4 + 0.2 * images(n=4, channels=3)  # mild colours: no clipping
    shifts = np.array([0.0, 0.1, -0.05, 0.25], np.float32)
    y = np.asarray(image_ops.adjust_hue(x, shifts))
    np.testing.assert_allclose(y[0], x[0], atol=1e-5)
    assert np.abs(y[1:] - x[1:]).max() > 0.01
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(y @ luma, x @ luma, atol=1e-5)  # Y of YIQ is kept
    gray = np.repeat(x[..., :1], 3, axis=-1)
    np.testing.assert_allclose(image_ops.adjust_hue(gray, shifts), gray, atol=1e-5)
    back = image_ops.adjust_hue(image_ops.adjust_hue(x, shifts), -shifts)
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_fused_color_jitter_equals_the_ops_in_each_images_order():
    rng = np.random.default_rng(1)
    x = images(n=24, size=6, channels=3)
    factors = [rng.uniform(0.4, 1.6, 24).astype(np.float32) for _ in range(3)]
    shifts = rng.uniform(-0.2, 0.2, 24).astype(np.float32)
    order = np.array([rng.permutation(4) for _ in range(24)], np.int32)  # stage of each op
    y = np.asarray(image_ops.color_jitter(x, *factors, shifts, order=order))
    ops_ = [
        image_ops.adjust_brightness,
        image_ops.adjust_contrast,
        image_ops.adjust_saturation,
        image_ops.adjust_hue,
    ]
    values = [*factors, shifts]
    for b in range(24):
        expected = x[b : b + 1]
        for k in np.argsort(order[b]):
            expected = np.asarray(ops_[k](expected, values[k][b : b + 1]))
        np.testing.assert_allclose(y[b : b + 1], expected, atol=1e-5)
    # Without an order: brightness, contrast (1 channel: saturation and hue do not apply).
    g = images(n=4, channels=1)
    f = factors[0][:4]
    np.testing.assert_allclose(
        image_ops.color_jitter(g, brightness=f, contrast=f),
        image_ops.adjust_contrast(image_ops.adjust_brightness(g, f), f),
        atol=1e-6,
    )


def test_color_jitter_uses_a_random_order_per_image():
    # Brightness then contrast differs from contrast then brightness once clipping bites.
    # Replaying the layer's draws (one [B, 24] block: brightness, contrast, order keys) from
    # an identical seed generator tells which order each image got; both must occur.
    augmenter = Augmenter("none", brightness=0.9, contrast=0.9, color_jitter_prob=1.0, seed=4)
    x = images(n=64, size=8)
    y = np.asarray(augmenter._color_jitter(tf.constant(x)))
    replay = np.asarray(keras.random.uniform((64, 24), seed=keras.random.SeedGenerator(4)))
    fb, fc = 0.1 + 1.8 * replay[:, 0], 0.1 + 1.8 * replay[:, 1]
    keys = replay[:, 2:4]
    b_then_c = np.asarray(image_ops.adjust_contrast(image_ops.adjust_brightness(x, fb), fc))
    c_then_b = np.asarray(image_ops.adjust_brightness(image_ops.adjust_contrast(x, fc), fb))
    brightness_first = keys[:, 0] < keys[:, 1]
    expected = np.where(brightness_first[:, None, None, None], b_then_c, c_then_b)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    assert 16 <= brightness_first.sum() <= 48
    assert np.abs(b_then_c - c_then_b).max() > 0.05  # the two orders are distinguishable
    fixed = Augmenter("none", brightness=0.9, contrast=0.9, color_random_order=False, seed=4)
    np.testing.assert_allclose(np.asarray(fixed._color_jitter(tf.constant(x))), b_then_c, atol=1e-5)


def test_gaussian_blur_matches_a_numpy_convolution():
    x = images(n=3, size=12, channels=2)
    sigmas = np.array([0.5, 1.0, 2.0], np.float32)
    y = np.asarray(image_ops.gaussian_blur(x, sigmas, kernel_size=5))
    taps = np.arange(-2, 3)
    for b, sigma in enumerate(sigmas):
        kernel = np.exp(-(taps**2) / (2 * sigma**2))
        kernel /= kernel.sum()
        padded = np.pad(x[b], [(2, 2), (2, 2), (0, 0)], mode="reflect")
        rows = sum(kernel[i] * padded[i : i + 12] for i in range(5))
        expected = sum(kernel[i] * rows[:, i : i + 12] for i in range(5))
        np.testing.assert_allclose(y[b], expected, atol=1e-5)
    flat = np.full([1, 9, 9, 1], 0.3, np.float32)
    np.testing.assert_allclose(
        image_ops.gaussian_blur(flat, np.array([1.5], np.float32), 5), 0.3, atol=1e-6
    )


def test_blur_kernel_size_is_odd_and_about_a_tenth():
    assert image_ops.blur_kernel_size(224) == 23  # SimCLR's 23 px at 224
    assert image_ops.blur_kernel_size(28) == 3
    assert image_ops.blur_kernel_size(64) == 7
    assert all(image_ops.blur_kernel_size(s) % 2 == 1 for s in range(8, 225))


def test_grayscale_and_hue_skip_one_channel_images():
    augmenter = Augmenter(
        "none", saturation=0.8, hue=0.3, grayscale_prob=1.0, color_jitter_prob=1.0, seed=0
    )
    x = images(channels=1)
    np.testing.assert_array_equal(np.asarray(augmenter(x)), x)
    assert np.abs(np.asarray(augmenter(images(channels=3))) - images(channels=3)).max() > 0.01


# ------------------------------------------------------------------ serialisation, grid


@pytest.mark.parametrize("preset", [*PRESETS, "crop+blur"])
def test_get_config_round_trip(preset):
    augmenter = Augmenter(preset, rotation=10, seed=5, name="aug")
    config = augmenter.get_config()
    json.dumps(config)  # JSON-serialisable
    clone = Augmenter.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    # Saved .keras files name the layer by its registered name: it must not change.
    assert keras.saving.get_registered_name(Augmenter) == "kerassl>Augmenter"
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(augmenter))
    assert isinstance(restored, Augmenter) and restored.get_config() == config
    x = images(channels=3)
    np.testing.assert_array_equal(
        np.asarray(clone(x)), np.asarray(Augmenter(preset, rotation=10, seed=5)(x))
    )


@pytest.mark.parametrize("dtype, channels, size", [("uint8", 1, 28), ("float32", 3, 16)])
def test_augmentation_grid_png(tmp_path, dtype, channels, size):
    x = images(n=10, size=size, channels=channels)
    if dtype == "uint8":
        x = (x * 255).astype(np.uint8)
    path = tmp_path / "grid.png"
    save_augmentation_grid(make_augmenter("natural", seed=0), x, str(path), pairs=4)
    cell = size * math.ceil(96 / size)
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (3 * cell + 8, 4 * cell + 10)
        pixels = np.asarray(png.convert("RGB"))
    # The first column holds the originals, enlarged without interpolation.
    original = pixels[2 : 2 + cell : cell // size, 2 : 2 + cell : cell // size]
    expected = x[0] if dtype == "uint8" else np.round(x[0] * 255)
    np.testing.assert_allclose(original[..., :channels].astype(float), expected, atol=1)


def test_augmentation_grid_rejects_bad_images(tmp_path):
    with pytest.raises(ValueError, match="Received: shape="):
        save_augmentation_grid(make_augmenter("none"), np.zeros([4, 8, 8]), str(tmp_path / "g.png"))


def test_computes_in_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        augmenter = Augmenter("none", rot90=True, seed=0)
    finally:
        keras.config.set_dtype_policy("float32")
    x = np.repeat(asymmetric(size=224), 4, axis=0)
    y = np.asarray(augmenter(x))
    assert y.dtype == np.float32
    for view in y:  # exact quarter turns need float32 coordinates at 224 px
        assert min(np.abs(view - np.rot90(x[0], k)).max() for k in range(4)) < 1e-5
