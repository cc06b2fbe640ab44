"""Augmentation presets: the options of `kerassl.data.augment.Augmenter`, and their values
for each named preset or composition of single ops.

`AugmentOptions` holds every option once, with the identity as its default and its rule in
`__post_init__`; `PRESETS` maps each preset name to its options. `OPS` names single
augmentations by the options each sets; ops joined with "+" (`crop+blur`, for ablations of
augmentation pairs as in SimCLR's Fig. 5) name the union of their options, and
`get_preset` resolves either form. This module imports neither TensorFlow nor Keras, so the
command lines can check a preset name before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from kerassl.errors import UserError

FLIP_MODES: tuple[str, ...] = ("none", "horizontal", "vertical", "horizontal_and_vertical")
FILL_MODES: tuple[str, ...] = ("reflect", "nearest", "constant")

# SimCLR's jitter amounts per unit of colour strength s (Chen et al. 2020, appendix A).
JITTER_PER_STRENGTH: dict[str, float] = {
    "brightness": 0.8,
    "contrast": 0.8,
    "saturation": 0.8,
    "hue": 0.2,
}


def _number(name: str, value: Any, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number. Received: {name}={value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]. Received: {name}={value!r}")
    return number


def _pair(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    """A (min, max) pair with low < min <= max <= high."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair. Received: {name}={value!r}") from None
    if not low < a <= b <= high:
        raise ValueError(
            f"{name} must satisfy {low} < min <= max <= {high} "
            f"(interval ({low}, {high}]). Received: {name}={value!r}"
        )
    return (a, b)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}. Received: {name}={value!r}")
    return value


@dataclass(frozen=True)
class AugmentOptions:
    """The options of one augmentation; each default is the identity.

    Values are checked and normalised (floats, tuples, bools) on construction; a bad value
    raises a Keras-style `ValueError` naming the option.

    Attributes:
        crop_scale: (min, max) fraction of the image area kept by the random resized crop;
            (1, 1) disables cropping.
        crop_ratio: (min, max) aspect ratio width/height of the crop, sampled log-uniformly
            within the range that keeps a crop of the sampled area inside the image
            (torchvision retries instead).
        rotation: maximum absolute rotation in degrees (uniform in ±rotation).
        flip: one of `FLIP_MODES` (each flip independently with p = 0.5).
        rot90: also rotate by a uniformly drawn multiple of 90°.
        fill_mode: where rotated crops reach outside the image, one of `FILL_MODES`.
        fill_value: value used by `fill_mode="constant"`.
        color_strength: SimCLR's colour strength s; the jitter amounts left as None become
            `JITTER_PER_STRENGTH[name] * s` (see `with_jitter`).
        brightness: multiplicative factor drawn from [max(0, 1 − b), 1 + b].
        contrast: factor on the deviation from the per-channel mean, [max(0, 1 − c), 1 + c].
        saturation: blend factor with grayscale, [max(0, 1 − s), 1 + s] (RGB only).
        hue: maximum hue shift in turns, ≤ 0.5, as a rotation in YIQ space (RGB only).
        color_jitter_prob: probability of colour jitter per image.
        color_random_order: apply the four jitter ops in a random order per image (as the
            SimCLR code does) instead of brightness, contrast, saturation, hue.
        grayscale_prob: probability of converting an RGB image to grayscale.
        blur_prob: probability of a Gaussian blur per image.
        blur_sigma: (min, max) blur sigma in pixels of a 224-px image; multiplied by
            size/224 for the actual images.
        blur_kernel_fraction: kernel size as a fraction of the image side (made odd, ≥ 3).
    """

    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    rotation: float = 0.0
    flip: str = "none"
    rot90: bool = False
    fill_mode: str = "reflect"
    fill_value: float = 0.0
    color_strength: float = 0.0
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    color_jitter_prob: float = 0.0
    color_random_order: bool = True
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1

    def __post_init__(self) -> None:
        checked = {
            "crop_scale": _pair("crop_scale", self.crop_scale, 0.0, 1.0),
            "crop_ratio": _pair("crop_ratio", self.crop_ratio, 0.0, math.inf),
            "rotation": _number("rotation", self.rotation, 0.0, 180.0),
            "flip": _choice("flip", self.flip, FLIP_MODES),
            "rot90": bool(self.rot90),
            "fill_mode": _choice("fill_mode", self.fill_mode, FILL_MODES),
            "fill_value": _number("fill_value", self.fill_value, -math.inf, math.inf),
            "color_strength": _number("color_strength", self.color_strength, 0.0, math.inf),
            "color_jitter_prob": _number("color_jitter_prob", self.color_jitter_prob, 0, 1),
            "color_random_order": bool(self.color_random_order),
            "grayscale_prob": _number("grayscale_prob", self.grayscale_prob, 0.0, 1.0),
            "blur_prob": _number("blur_prob", self.blur_prob, 0.0, 1.0),
            "blur_sigma": _pair("blur_sigma", self.blur_sigma, 0.0, math.inf),
            "blur_kernel_fraction": _number(
                "blur_kernel_fraction", self.blur_kernel_fraction, 0.0, 1.0
            ),
        }
        for name in JITTER_PER_STRENGTH:
            value = getattr(self, name)
            high = 0.5 if name == "hue" else math.inf
            checked[name] = None if value is None else _number(name, value, 0.0, high)
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # normalised values of a frozen instance

    def replace(self, **changes: Any) -> AugmentOptions:
        """A copy with some options changed (and checked)."""
        return dataclasses.replace(self, **changes)

    def with_jitter(self) -> AugmentOptions:
        """A copy whose unset jitter amounts are derived from `color_strength`."""
        return self.replace(
            **{
                name: per_strength * self.color_strength
                for name, per_strength in JITTER_PER_STRENGTH.items()
                if getattr(self, name) is None
            }
        )


OPTION_NAMES: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(AugmentOptions))

PRESETS: dict[str, AugmentOptions] = {
    "none": AugmentOptions(),
    # Digits and other centred glyphs: crops and rotations, never flips (6 and 9 must stay
    # apart), no colour. "nearest" repeats the border (black for MNIST-like data). Study A's
    # crop of 20-100 % and ±45° turn a 1 into a diagonal bar and keep a corner of a 4; on
    # Kannada digits (10 epochs, 100 labels, 2 seeds) the probe scored 76.0 / 76.2 % with
    # them, 85.7 / 82.2 % with 35-100 % and ±25° (50-100 %, ±15°: 82.2; 70-100 %, ±10°: 83.0);
    # on scikit-learn's digits (30 epochs) 90.5 against 91.6 %.
    "digits": AugmentOptions(crop_scale=(0.35, 1.0), rotation=25.0, fill_mode="nearest"),
    # Centred grayscale objects without a handedness (Fashion-MNIST): crops and horizontal
    # flips, and strong brightness/contrast jitter. Without the jitter, views of one image
    # share their intensity histogram and SimCLR matches them by it: at 160 steps the probe
    # (100 labels) reached 59 % with the digits preset, 71 % with jitter 0.4, 73 % with 0.8.
    "fashion": AugmentOptions(
        crop_scale=(0.3, 1.0),
        flip="horizontal",
        brightness=0.8,
        contrast=0.8,
        color_jitter_prob=0.8,
    ),
    # SimCLR appendix A with colour strength s = 0.5.
    "natural": AugmentOptions(
        crop_scale=(0.08, 1.0),
        flip="horizontal",
        color_strength=0.5,
        color_jitter_prob=0.8,
        grayscale_prob=0.2,
        blur_prob=0.5,
    ),
    # Tissue has no canonical orientation: all flips and 90° rotations; mild jitter for stain
    # variation (small hue/saturation); colour carries information, so no grayscale.
    "histology": AugmentOptions(
        crop_scale=(0.3, 1.0),
        flip="horizontal_and_vertical",
        rot90=True,
        brightness=0.2,
        contrast=0.2,
        saturation=0.15,
        hue=0.04,
        color_jitter_prob=0.8,
        blur_prob=0.5,
    ),
}


# Single ops for compositions (`--augment crop+blur`): the options each sets, no two ops
# setting the same one. Values of SimCLR's appendix A (its `natural` preset above) unless
# said; each op alone acts on any image kind (colour ops on 1-channel images: see `color`).
OPS: dict[str, dict[str, Any]] = {
    # Random resized crop of 8-100 % of the area, aspect 3/4-4/3 (the crop_ratio default).
    "crop": {"crop_scale": (0.08, 1.0)},
    "flip": {"flip": "horizontal"},
    # Rotation by up to ±45°, study A's (the `digits` preset turns ±25°; SimCLR's "rotate" is
    # quarter turns: rot90).
    "rotate": {"rotation": 45.0},
    # Quarter turns (0, 90, 180 or 270°), the `histology` preset's.
    "rot90": {"rot90": True},
    # Colour jitter of strength s = 0.5 with p = 0.8 (brightness, contrast, saturation 0.4,
    # hue 0.1, random order); 1-channel images get its brightness and contrast part.
    "color": {"color_strength": 0.5, "color_jitter_prob": 0.8},
    # Random grayscale with p = 0.2 (nothing to do on 1-channel images).
    "gray": {"grayscale_prob": 0.2},
    # Gaussian blur with p = 0.5, sigma 0.1-2.0 px at 224 px (the blur_sigma default).
    "blur": {"blur_prob": 0.5},
}


def _unknown(what: str) -> UserError:
    return UserError(
        f"unknown augmentation {what}; presets: {', '.join(PRESETS)}; "
        f"ops to join with +: {', '.join(OPS)}"
    )


def compose(name: str) -> AugmentOptions:
    """The options of ops joined with "+" (`"crop+blur"`): the union of the options each
    op sets. Their order does not matter (the `Augmenter` applies geometry, colour,
    grayscale, blur in its own order).

    Raises:
        UserError: an unknown op (naming the presets and the ops), an op given twice, or
            two ops setting the same option.
    """
    fields: dict[str, Any] = {}
    setter: dict[str, str] = {}
    ops = name.split("+")
    for index, op in enumerate(ops):
        if op not in OPS:
            raise _unknown(f"{op!r} in {name!r}")
        if op in ops[:index]:
            raise UserError(f"augmentation {name!r} names {op!r} twice")
        for field, value in OPS[op].items():
            if field in setter:
                raise UserError(
                    f"augmentation {name!r}: {setter[field]!r} and {op!r} both set {field}"
                )
            fields[field], setter[field] = value, op
    return AugmentOptions(**fields)


def get_preset(name: str) -> AugmentOptions:
    """The options of a preset name, or of ops joined with "+" (`compose`).

    Raises:
        UserError: an unknown name, one line naming the presets and the ops.
    """
    if name in PRESETS:
        return PRESETS[name]
    if isinstance(name, str) and (name in OPS or "+" in name):
        return compose(name)
    raise _unknown(f"preset {name!r}")


def label_flip(preset: str) -> bool:
    """Whether horizontal flips preserve labels under `preset` (its `flip` includes them).

    True for fashion, natural and histology and for compositions with `flip`; False for
    digits (a mirrored 2 is no digit), none and compositions without `flip`. Raises
    `UserError` for an unknown name.
    """
    return get_preset(preset).flip in ("horizontal", "horizontal_and_vertical")
