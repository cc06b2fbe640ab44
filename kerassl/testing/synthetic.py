"""Tiny synthetic image sets for tests: a few classes of distinct patterns plus noise."""

from __future__ import annotations

import numpy as np


def tiny_images(
    n: int = 32,
    size: int = 16,
    channels: int = 1,
    classes: int = 4,
    seed: int = 0,
    dtype: str = "uint8",
) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(x, y)`: images [n, size, size, channels] and int64 labels `arange(n) % classes`.

    Class k draws stripes whose orientation and period depend on k, at a random phase,
    with noise, so classes are learnable but no two images are identical.

    Args:
        dtype: `"uint8"` for pixels as datasets hold them, `"float32"` for the same images
            in [0, 1] (what every kerassl model takes).
    """
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32'. Received: dtype={dtype!r}")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rows, cols = np.mgrid[0:size, 0:size]
    x = np.empty((n, size, size, channels), np.float32)
    for i, label in enumerate(y):
        angle = np.pi * label / classes
        period = 3 + label % 3
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin((np.cos(angle) * rows + np.sin(angle) * cols) * 2 * np.pi / period + phase)
        image = 0.5 + 0.4 * wave + rng.normal(0, 0.05, (size, size))
        tint = 0.6 + 0.4 * rng.random(channels)
        x[i] = image[..., None] * tint
    pixels = (np.clip(x, 0, 1) * 255).astype(np.uint8)
    if dtype == "float32":
        pixels = pixels.astype(np.float32) / np.float32(255.0)
    return pixels, y.astype(np.int64)


def tiny_float_images(
    n: int = 8, size: int = 16, channels: int = 1, classes: int = 4, seed: int = 0
) -> np.ndarray:
    """The images of `tiny_images(..., dtype="float32")`: float32 in [0, 1], no labels."""
    return tiny_images(n, size, channels, classes, seed, dtype="float32")[0]
