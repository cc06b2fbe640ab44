"""Tiny synthetic image sets for tests: a few classes of distinct patterns plus noise."""

from __future__ import annotations

import numpy as np


def tiny_images(
    n: int = 32, size: int = 16, channels: int = 1, classes: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(x, y)`: uint8 images [n, size, size, channels] and int64 labels.

    Class k draws stripes whose orientation and period depend on k, at a random phase,
    with noise, so classes are learnable but no two images are identical.
    """
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
    return (np.clip(x, 0, 1) * 255).astype(np.uint8), y.astype(np.int64)
