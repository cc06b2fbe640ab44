"""Image kernels of the augmentations: batched, per-image random parameters, XLA-friendly.

Every op is plain tensor arithmetic plus gathers (`keras.ops`), so it compiles with XLA on
CPU: no `ImageProjectiveTransformV3` (keras `RandomZoom`/`RandomRotation`/`RandomCrop`), no
NumPy randomness in traced code. Images are float32 [B, H, W, C] in [0, 1]; parameters come
one per image ([B] or [B, ...] tensors), drawn by the caller (`kerassl.data.augment`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from kerassl.data.preprocess import GRAY_WEIGHTS
from kerassl.data.presets import FILL_MODES

# RGB → YIQ (NTSC), rows Y, I, Q.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def random_apply(
    fn: Callable[[Any], Any],
    p: float,
    x: Any,
    seed: keras.random.SeedGenerator | int | None = None,
    uniforms: Any = None,
) -> Any:
    """Applies `fn` to each image of the batch `x` independently with probability `p`.

    A per-image Bernoulli(p) mask selects between `fn(x)` and `x` (simclr-tf2's
    `random_apply`, but per image instead of per batch). `fn` is evaluated on the whole
    batch; for `p` of exactly 0 or 1 no mask is drawn.

    Args:
        fn: maps a [B, H, W, C] batch to a batch of the same shape.
        p: probability of applying `fn` to an image, in [0, 1].
        x: [B, H, W, C] float batch.
        seed: `keras.random.SeedGenerator` (advanced) or int seed for the mask.
        uniforms: optional [B] uniforms in [0, 1) already drawn, used instead of `seed`.

    Returns:
        [B, H, W, C] batch.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1]. Received: p={p}")
    if p == 0.0:
        return x
    if p == 1.0:
        return fn(x)
    if uniforms is None:
        uniforms = keras.random.uniform((ops.shape(x)[0],), seed=seed)
    apply = uniforms < p  # [B]
    return ops.where(apply[:, None, None, None], fn(x), x)


def rotation_matrices(angles: Any) -> Any:
    """[B] angles (radians) → [B, 2, 2] matrices [[cos, −sin], [sin, cos]].

    Used as `source = R @ target` in (x right, y down) pixel coordinates, an angle of π/2
    rotates the content a quarter turn counter-clockwise, like `np.rot90(image, 1)`.
    """
    cos, sin = ops.cos(angles), ops.sin(angles)
    return ops.stack([ops.stack([cos, -sin], axis=-1), ops.stack([sin, cos], axis=-1)], axis=-2)


def _reflect(coordinate: Any, size: int) -> Any:
    """Reflects continuous pixel coordinates about the image edges (−0.5 and size − 0.5)."""
    period = 2.0 * size
    folded = ops.mod(coordinate + 0.5, period)  # [0, 2·size)
    folded = ops.where(folded >= size, period - folded, folded)
    return folded - 0.5


def affine_resample(
    images: Any,
    matrices: Any,
    offsets: Any,
    fill_mode: str = "reflect",
    fill_value: float = 0.0,
) -> Any:
    """Resamples each image under its own affine map, bilinearly, at the input size.

    Coordinates are pixels measured from the image centre (x right, y down). Output pixel p
    takes the value of the input at `matrices[b] @ p + offsets[b]`, so the identity matrix
    and a zero offset reproduce the input exactly.

    Args:
        images: [B, H, W, C] float32.
        matrices: [B, 2, 2] float32 linear part (x, y order).
        offsets: [B, 2] float32 translation in pixels (x, y).
        fill_mode: where the source lies outside the image: "reflect" (d c b a | a b c d),
            "nearest" (repeat the border) or "constant" (`fill_value`).
        fill_value: value outside the image for `fill_mode="constant"`.

    Returns:
        [B, H, W, C] float32.
    """
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode must be one of {FILL_MODES}. Received: fill_mode={fill_mode}")
    shape = ops.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    xs = ops.arange(width, dtype="float32") - (width - 1) / 2.0  # [W]
    ys = ops.arange(height, dtype="float32") - (height - 1) / 2.0  # [H]
    grid_y, grid_x = ops.meshgrid(ys, xs, indexing="ij")  # [H, W] each
    points = ops.stack([ops.reshape(grid_x, [-1]), ops.reshape(grid_y, [-1])], axis=0)  # [2, HW]
    source = ops.matmul(matrices, points) + offsets[:, :, None]  # [B, 2, HW]
    x = source[:, 0, :] + (width - 1) / 2.0  # [B, HW] in input pixel units
    y = source[:, 1, :] + (height - 1) / 2.0
    if fill_mode == "reflect":
        x, y = _reflect(x, width), _reflect(y, height)
    x0, y0 = ops.floor(x), ops.floor(y)
    wx, wy = x - x0, y - y0  # [B, HW] bilinear weights of the +1 neighbours
    base = ops.arange(batch, dtype="int32")[:, None] * (height * width)  # [B, 1]
    flat = ops.reshape(images, [-1, channels])  # [B·H·W, C]

    def corner(cx, cy):
        inside = (cx >= 0) & (cx <= width - 1) & (cy >= 0) & (cy <= height - 1)  # [B, HW]
        ix = ops.cast(ops.clip(cx, 0, width - 1), "int32")
        iy = ops.cast(ops.clip(cy, 0, height - 1), "int32")
        values = ops.take(flat, ops.reshape(base + iy * width + ix, [-1]), axis=0)
        values = ops.reshape(values, [batch, height * width, channels])  # [B, HW, C]
        if fill_mode == "constant":
            values = ops.where(inside[..., None], values, fill_value)
        return values

    # For "nearest" (and "reflect", whose folded coordinates can lie in the outer half
    # pixel) clamping the corner indices repeats the border.
    wx, wy = wx[..., None], wy[..., None]
    top = corner(x0, y0) * (1.0 - wx) + corner(x0 + 1.0, y0) * wx
    bottom = corner(x0, y0 + 1.0) * (1.0 - wx) + corner(x0 + 1.0, y0 + 1.0) * wx
    out = top * (1.0 - wy) + bottom * wy  # [B, HW, C]
    return ops.reshape(out, [batch, height, width, channels])


def grayscale(images: Any) -> Any:
    """[B, H, W, 3] RGB → [B, H, W, 3] luma repeated on the three channels."""
    luma = ops.sum(images * ops.convert_to_tensor(GRAY_WEIGHTS, "float32"), axis=-1, keepdims=True)
    return ops.repeat(luma, 3, axis=-1)


def adjust_brightness(images: Any, factors: Any) -> Any:
    """Multiplies each image by its factor (SimCLR v2 code's brightness), [B] factors."""
    return ops.clip(images * factors[:, None, None, None], 0.0, 1.0)


def adjust_contrast(images: Any, factors: Any) -> Any:
    """Scales each image's deviation from its per-channel mean (`tf.image.adjust_contrast`)."""
    mean = ops.mean(images, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    return ops.clip((images - mean) * factors[:, None, None, None] + mean, 0.0, 1.0)


def adjust_saturation(images: Any, factors: Any) -> Any:
    """Blends each RGB image with its grayscale version: gray + f·(x − gray) (torchvision)."""
    gray = grayscale(images)
    return ops.clip(gray + (images - gray) * factors[:, None, None, None], 0.0, 1.0)


def hue_matrices(shifts: Any) -> Any:
    """[B] hue shifts in turns → [B, 3, 3] RGB matrices rotating chroma in YIQ space.

    A rotation of the (I, Q) plane keeps luma Y and chroma magnitude and approximates a hue
    shift in HSV (`tf.image.adjust_hue`) with one 3x3 matrix per image.
    """
    angle = shifts * (2.0 * math.pi)
    cos, sin = ops.cos(angle), ops.sin(angle)
    zero, one = ops.zeros_like(angle), ops.ones_like(angle)
    rotation = ops.stack(  # [B, 3, 3] acting on (Y, I, Q)
        [
            ops.stack([one, zero, zero], axis=-1),
            ops.stack([zero, cos, -sin], axis=-1),
            ops.stack([zero, sin, cos], axis=-1),
        ],
        axis=-2,
    )
    to_yiq = ops.convert_to_tensor(_RGB_TO_YIQ)
    to_rgb = ops.convert_to_tensor(_YIQ_TO_RGB)
    return ops.matmul(ops.matmul(to_rgb, rotation), to_yiq)


def adjust_hue(images: Any, shifts: Any) -> Any:
    """Rotates the chroma of each RGB image by `shifts` turns in [−0.5, 0.5] (`hue_matrices`)."""
    out = ops.einsum("bhwc,bdc->bhwd", images, hue_matrices(shifts))
    return ops.clip(out, 0.0, 1.0)


def color_jitter(
    images: Any,
    brightness: Any = None,
    contrast: Any = None,
    saturation: Any = None,
    hue: Any = None,
    order: Any = None,
) -> Any:
    """Colour jitter with per-image factors and a per-image order of the ops.

    Equivalent to applying `adjust_brightness`, `adjust_contrast`, `adjust_saturation` and
    `adjust_hue` (each clipping to [0, 1], as the SimCLR code does) in the order given for
    each image, but computed as one stage per op position: every op is
    `y = clip(A·x + (1 − g)·mean(x))` with a per-image C x C matrix A (f·I for brightness and
    contrast, the grayscale blend for saturation, the YIQ rotation for hue) and g the
    contrast factor (1 for the other ops), so a stage selects each image's (A, g) instead of
    evaluating every op on every image.

    Args:
        images: [B, H, W, C] float32 in [0, 1]; saturation and hue need C = 3.
        brightness, contrast, saturation: [B] factors, or None to skip the op.
        hue: [B] shifts in turns, or None to skip the op.
        order: [B, n] position (0 … n − 1) of each of the n ops given, in the sequence
            brightness, contrast, saturation, hue: image b applies op k at stage
            `order[b, k]`; each row must be a permutation. None applies them in sequence.

    Returns:
        [B, H, W, C] float32 in [0, 1].
    """
    channels = images.shape[-1]
    eye = ops.eye(channels, dtype="float32")
    matrices, gains = [], []  # per op: [B, C, C] and [B] (contrast factor or 1)
    if brightness is not None:
        matrices.append(brightness[:, None, None] * eye)
        gains.append(ops.ones_like(brightness))
    if contrast is not None:
        matrices.append(contrast[:, None, None] * eye)
        gains.append(contrast)
    if saturation is not None:
        luma = ops.convert_to_tensor(GRAY_WEIGHTS, "float32")[None, None, :]  # [1, 1, 3]
        f = saturation[:, None, None]
        matrices.append(f * eye + (1.0 - f) * ops.ones((1, 3, 1)) * luma)
        gains.append(ops.ones_like(saturation))
    if hue is not None:
        matrices.append(hue_matrices(hue))
        gains.append(ops.ones_like(hue))
    if not matrices:
        return images
    n = len(matrices)
    matrices = ops.stack(matrices, axis=1)  # [B, n, C, C]
    gains = ops.stack(gains, axis=1)  # [B, n]
    for stage in range(n):
        if order is None:
            matrix, gain = matrices[:, stage], gains[:, stage]
        else:
            choice = ops.cast(ops.equal(order, stage), "float32")  # [B, n] one op per image
            matrix = ops.sum(choice[:, :, None, None] * matrices, axis=1)  # [B, C, C]
            gain = ops.sum(choice * gains, axis=1)  # [B]
        mean = ops.mean(images, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
        images = ops.einsum("bhwc,bdc->bhwd", images, matrix)
        images = ops.clip(images + (1.0 - gain[:, None, None, None]) * mean, 0.0, 1.0)
    return images


def gaussian_blur(images: Any, sigmas: Any, kernel_size: int) -> Any:
    """Separable Gaussian blur with one sigma per image, edges reflected.

    Written as a weighted sum of shifted copies (one per tap, along rows then columns) so
    that each image can have its own kernel without a per-image convolution.

    Args:
        images: [B, H, W, C] float32.
        sigmas: [B] standard deviations in pixels (> 0).
        kernel_size: odd number of taps, smaller than the image side.
    """
    radius = kernel_size // 2
    taps = ops.arange(-radius, radius + 1, dtype="float32")  # [K]
    weights = ops.exp(-ops.square(taps)[None, :] / (2.0 * ops.square(sigmas)[:, None]))  # [B, K]
    weights = weights / ops.sum(weights, axis=1, keepdims=True)

    def blur_axis(x, axis):
        size = x.shape[axis]
        padding = [[0, 0]] * 4
        padding[axis] = [radius, radius]
        # Reflect (d c b | a b c d) padding; a pad, not a gather, which XLA on CPU runs
        # about 4x faster here (224 px, 23 taps).
        padded = ops.pad(x, padding, mode="reflect")
        out = 0.0
        for k in range(kernel_size):
            part = padded[:, k : k + size] if axis == 1 else padded[:, :, k : k + size]
            out = out + weights[:, k, None, None, None] * part
        return out

    return blur_axis(blur_axis(images, 1), 2)


def blur_kernel_size(image_size: int, fraction: float = 0.1) -> int:
    """Odd kernel size ≈ `fraction` of the image side, at least 3 (SimCLR: 10 %, 23 at 224)."""
    return max(3, int(fraction * image_size) // 2 * 2 + 1)
