"""The augmentation layer: seeded Keras `Augmenter` making one random view of a batch per call.

All random numbers come from one `keras.random.SeedGenerator`, whose state advances on every
call: calling the layer twice on the same batch gives two different views, and two layers
built with the same seed give the same sequence of views. The layer compiles with XLA on
CPU (`jit_compile=True`, as inside the SSL methods' `train_step`); its kernels are in
`kerassl.data.image_ops`, its options and presets in `kerassl.data.presets`.

Geometry is ONE sampled affine transform per image (random resized crop, rotation, flips,
90° rotations composed into a 2x2 matrix and an offset) followed by ONE bilinear
resampling of the batch back to the input size. Colour ops act on 3-channel images; on
1-channel images only brightness and contrast apply (saturation, hue and grayscale are
skipped because they have no meaning without colour).

References:
    Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
    Representations" (SimCLR), ICML 2020, appendix A (crop, colour distortion, blur).
    Szegedy et al., "Going Deeper with Convolutions", CVPR 2015 (random resized crop).
    Tellez et al., "Quantifying the effects of data augmentation and stain color
    normalization in convolutional neural networks for computational pathology", Medical
    Image Analysis 2019 (flips, 90° rotations and mild colour jitter for histology).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np
from keras import ops

from kerassl.data.image_ops import (
    affine_resample,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    grayscale,
    random_apply,
    rotation_matrices,
)
from kerassl.data.presets import OPTION_NAMES, AugmentOptions, get_preset
from kerassl.errors import UserError


class _Draws:
    """Per-image uniforms for one call, drawn in ONE random op and handed out by column.

    Each separate stateless random op adds to XLA compile time (16 draws compile about 3x
    slower than one draw of 16 columns), so a call draws a [B, 24] block once; the
    columns are consumed in a fixed order, which keeps calls reproducible from the seed.
    """

    columns = 24  # ≥ geometry 8 + jitter 1 + 4 + 4 + grayscale 1 + blur 2

    def __init__(self, seed_generator: keras.random.SeedGenerator, batch: Any):
        self.values = keras.random.uniform((batch, self.columns), seed=seed_generator)
        self.used = 0

    def next(self, low: float = 0.0, high: float = 1.0) -> Any:
        """[B] uniforms in [low, high)."""
        if self.used == self.columns:
            raise RuntimeError("Augmenter used more random draws than _Draws.columns")
        column = self.values[:, self.used]
        self.used += 1
        return low + (high - low) * column


@keras.saving.register_keras_serializable(package="kerassl")
class Augmenter(keras.layers.Layer):
    """One random view of a batch of [0, 1] images per call, from a named preset.

    Presets (`kerassl.data.presets.PRESETS`; each value overridable by the argument of the
    same name):

    - `digits`: random resized crop of 35-100 % of the area, rotation ±25°, no flips (6 and
      9 must stay apart), no colour.
    - `fashion`: crop of 30-100 %, horizontal flip, brightness and contrast jitter 0.8 with
      p = 0.8 (grayscale objects: without intensity jitter the views are matched by their
      intensity histogram and the features collapse).
    - `natural`: SimCLR (Chen et al. 2020, appendix A): crop of 8-100 % of the area, aspect
      3/4-4/3, horizontal flip; colour jitter with strength s = 0.5 (brightness, contrast,
      saturation 0.8·s, hue 0.2·s) with p = 0.8 in random order; grayscale with p = 0.2;
      Gaussian blur with p = 0.5, sigma 0.1-2.0 px for a 224-px image (scaled to the size).
    - `histology`: crop of 30-100 %, horizontal and vertical flips and 90° rotations (no
      canonical orientation), mild colour jitter for stain variation (brightness and
      contrast 0.2, saturation 0.15, hue 0.04), Gaussian blur with p = 0.5, no grayscale.
    - `none`: the identity.

    Single ops joined with "+" (`crop+blur`; `kerassl.data.presets.OPS`) take the union of
    the options each op sets.

    Order of operations: geometry (one resampling), colour jitter, grayscale, blur. Inputs
    are cast to float32 and are expected in [0, 1]; outputs are clipped to [0, 1]. Images
    should be square when `rot90` is on (a quarter turn of a rectangle leaves fill).

    Args:
        preset: one of `PRESETS` or ops joined with "+"; supplies the default of every
            option left as None.
        crop_scale, crop_ratio, rotation, flip, rot90, fill_mode, fill_value,
            color_strength, brightness, contrast, saturation, hue, color_jitter_prob,
            color_random_order, grayscale_prob, blur_prob, blur_sigma,
            blur_kernel_fraction: the options of `kerassl.data.presets.AugmentOptions`
            (documented there), each also an attribute of the layer; None takes the
            preset's value. Jitter amounts the preset leaves unset follow
            `color_strength` (brightness, contrast, saturation 0.8·s, hue 0.2·s).
        seed: int seed of the layer's `keras.random.SeedGenerator`; None draws one.
        **kwargs: `keras.layers.Layer` arguments (name, …); dtype defaults to float32.

    Example:
        >>> augmenter = Augmenter("digits", seed=0)
        >>> view1, view2 = augmenter(images), augmenter(images)  # two different views
    """

    def __init__(
        self,
        preset: str = "natural",
        crop_scale: tuple[float, float] | None = None,
        crop_ratio: tuple[float, float] | None = None,
        rotation: float | None = None,
        flip: str | None = None,
        rot90: bool | None = None,
        fill_mode: str | None = None,
        fill_value: float | None = None,
        color_strength: float | None = None,
        brightness: float | None = None,
        contrast: float | None = None,
        saturation: float | None = None,
        hue: float | None = None,
        color_jitter_prob: float | None = None,
        color_random_order: bool | None = None,
        grayscale_prob: float | None = None,
        blur_prob: float | None = None,
        blur_sigma: tuple[float, float] | None = None,
        blur_kernel_fraction: float | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        arguments = locals()  # first: the option arguments above, by name
        overrides = {name: arguments[name] for name in OPTION_NAMES if arguments[name] is not None}
        # Always float32: under a mixed-precision policy, float16 sampling coordinates would
        # be off by whole pixels at 224 px.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        try:
            options = get_preset(preset)
        except UserError as error:
            raise ValueError(f"{error}. Received: preset={preset!r}") from None
        self.preset = preset
        self.options: AugmentOptions = options.replace(**overrides).with_jitter()
        for name, value in dataclasses.asdict(self.options).items():
            setattr(self, name, value)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="augment_seed")

    # ----------------------------------------------------------------- geometry

    @property
    def has_geometry(self) -> bool:
        """False when the geometric part is the identity (no resampling is done)."""
        return (
            self.crop_scale != (1.0, 1.0)
            or self.rotation > 0.0
            or self.flip != "none"
            or self.rot90
        )

    def _draws(self, batch) -> _Draws:
        return _Draws(self.seed_generator, batch)

    def _sample_geometry(self, batch, height: int, width: int, draws: _Draws | None = None):
        """Per-image affine maps (output pixel → input pixel), [B, 2, 2] and [B, 2]."""
        draws = draws or self._draws(batch)
        # Random resized crop: area fraction s, then log-aspect r within the range that keeps
        # both sides ≤ 1 (r ∈ [s, 1/s]) intersected with crop_ratio.
        area = draws.next(*self.crop_scale)
        log_lo = ops.maximum(math.log(self.crop_ratio[0]), ops.log(area))
        log_hi = ops.minimum(math.log(self.crop_ratio[1]), -ops.log(area))
        log_hi = ops.maximum(log_hi, log_lo)  # crop_ratio excluding 1 at large areas
        ratio = ops.exp(log_lo + (log_hi - log_lo) * draws.next())
        crop_w = ops.minimum(ops.sqrt(area * ratio), 1.0)  # fractions of the side
        crop_h = ops.minimum(ops.sqrt(area / ratio), 1.0)
        # Crop centre such that the (unrotated) crop lies inside the image, in pixels.
        shift_x = (draws.next() - 0.5) * (1.0 - crop_w) * width
        shift_y = (draws.next() - 0.5) * (1.0 - crop_h) * height

        angle = draws.next(-1.0, 1.0) * (self.rotation * math.pi / 180.0)
        if self.rot90:
            quarter = ops.floor(draws.next(0.0, 4.0))  # 0, 1, 2, 3
            angle = angle + ops.minimum(quarter, 3.0) * (math.pi / 2.0)
        ones = ops.ones_like(area)
        flip_x = ops.where(draws.next() < 0.5, -ones, ones)
        flip_y = ops.where(draws.next() < 0.5, -ones, ones)
        if self.flip not in ("horizontal", "horizontal_and_vertical"):
            flip_x = ones
        if self.flip not in ("vertical", "horizontal_and_vertical"):
            flip_y = ones
        scale = ops.stack([crop_w * flip_x, crop_h * flip_y], axis=-1)  # [B, 2] (x, y)
        matrices = rotation_matrices(angle) * scale[:, None, :]  # R @ diag(scale)
        offsets = ops.stack([shift_x, shift_y], axis=-1)  # [B, 2]
        return matrices, offsets

    # ----------------------------------------------------------------- colour

    def _color_jitter(self, images, draws: _Draws | None = None):
        batch = ops.shape(images)[0]
        draws = draws or self._draws(batch)
        rgb = images.shape[-1] == 3

        def factor(amount):
            if amount <= 0:
                return None
            return draws.next(max(0.0, 1.0 - amount), 1.0 + amount)

        factors = {
            "brightness": factor(self.brightness),
            "contrast": factor(self.contrast),
            "saturation": factor(self.saturation) if rgb else None,
            "hue": draws.next(-self.hue, self.hue) if rgb and self.hue > 0 else None,
        }
        n = sum(f is not None for f in factors.values())
        order = None
        if self.color_random_order and n > 1:
            # Stage of op i = rank of its random key (ties broken by index): a uniformly
            # random order per image, without a sort.
            keys = ops.stack([draws.next() for _ in range(n)], axis=1)  # [B, n]
            before = (keys[:, None, :] < keys[:, :, None]) | (
                (keys[:, None, :] == keys[:, :, None]) & np.tri(n, k=-1, dtype=bool)
            )  # [B, i, j]: op j goes before op i
            order = ops.sum(ops.cast(before, "int32"), axis=-1)  # [B, n]
        return color_jitter(images, order=order, **factors)

    def _has_color(self, channels: int) -> bool:
        jitter = self.brightness > 0 or self.contrast > 0
        if channels == 3:
            jitter = jitter or self.saturation > 0 or self.hue > 0
        return jitter and self.color_jitter_prob > 0

    # ----------------------------------------------------------------- call

    def call(self, images, training=True):
        images = ops.cast(images, "float32")
        if not training:
            return images
        shape = images.shape
        if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] is None:
            raise ValueError(
                f"Augmenter expects [batch, height, width, channels] images with known "
                f"height, width and channels. Received: shape={tuple(shape)}"
            )
        height, width, channels = shape[1], shape[2], shape[3]
        batch = ops.shape(images)[0]
        draws = self._draws(batch)
        if self.has_geometry:
            matrices, offsets = self._sample_geometry(batch, height, width, draws)
            images = affine_resample(images, matrices, offsets, self.fill_mode, self.fill_value)
        if self._has_color(channels):
            images = random_apply(
                lambda x: self._color_jitter(x, draws),
                self.color_jitter_prob,
                images,
                uniforms=draws.next(),
            )
        if channels == 3 and self.grayscale_prob > 0:
            images = random_apply(grayscale, self.grayscale_prob, images, uniforms=draws.next())
        if self.blur_prob > 0:
            size = min(height, width)
            kernel = blur_kernel_size(size, self.blur_kernel_fraction)
            if kernel < size:
                sigma = draws.next(*self.blur_sigma) * (size / 224.0)
                images = random_apply(
                    lambda x: gaussian_blur(x, sigma, kernel),
                    self.blur_prob,
                    images,
                    uniforms=draws.next(),
                )
        return ops.clip(images, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {"preset": self.preset, **dataclasses.asdict(self.options), "seed": self.seed}
        )
        return config


def make_augmenter(preset: str, seed: int | None = None, **overrides: Any) -> Augmenter:
    """Builds the `Augmenter` of a named preset, raising `UserError` for an unknown name.

    Args:
        preset: one of `PRESETS`, or ops of `OPS` joined with "+" (`"crop+blur"`).
        seed: seed of the augmenter's random stream.
        **overrides: any `Augmenter` option, e.g. `rotation=15`.
    """
    get_preset(preset)
    return Augmenter(preset, seed=seed, **overrides)
