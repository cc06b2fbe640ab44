"""A PNG of augmented pairs, to see what a preset does to a dataset."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras


def save_augmentation_grid(
    augmenter: keras.layers.Layer, images: np.ndarray, path: str, pairs: int = 8
) -> None:
    """Writes a PNG whose rows are `original | view 1 | view 2` for the first `pairs` images.

    Each image is enlarged by an integer factor (nearest neighbour) to at least 96 px and
    cells are separated by 2-px white borders, so the PNG is
    `3·cell + 8` pixels wide and `rows·cell + 2·(rows + 1)` high, with
    `cell = size · max(1, ceil(96 / size))` and `rows = min(pairs, len(images))`.

    Args:
        augmenter: layer called as `augmenter(batch, training=True)`.
        images: [N, H, W, C] (C = 1 or 3) uint8 in [0, 255] or float in [0, 1].
        path: output PNG path.
        pairs: number of rows.
    """
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty [N, H, W, 1 or 3] array. Received: shape={images.shape}"
        )
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1. Received: pairs={pairs}")
    batch = images[:pairs]
    if np.issubdtype(batch.dtype, np.integer):
        batch = batch.astype(np.float32) / 255.0
    batch = np.clip(batch.astype(np.float32), 0.0, 1.0)
    view1 = np.asarray(augmenter(batch, training=True))
    view2 = np.asarray(augmenter(batch, training=True))
    rows, height, width, channels = batch.shape
    zoom = max(1, math.ceil(96 / max(height, width)))
    gap = 2
    cell_h, cell_w = height * zoom, width * zoom
    canvas = np.full(
        (rows * cell_h + (rows + 1) * gap, 3 * cell_w + 4 * gap, 3), 255, dtype=np.uint8
    )
    for row in range(rows):
        for column, source in enumerate((batch, view1, view2)):
            cell = np.repeat(np.repeat(source[row], zoom, axis=0), zoom, axis=1)
            cell = np.round(np.clip(cell, 0.0, 1.0) * 255).astype(np.uint8)
            if channels == 1:
                cell = np.repeat(cell, 3, axis=-1)
            top = gap + row * (cell_h + gap)
            left = gap + column * (cell_w + gap)
            canvas[top : top + cell_h, left : left + cell_w] = cell
    Image.fromarray(canvas, mode="RGB").save(path, format="PNG")
