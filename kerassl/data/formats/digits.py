"""scikit-learn's bundled 8x8 digits (offline, 1797 images, no test split)."""

from __future__ import annotations

import numpy as np

from kerassl.data.formats import Arrays
from kerassl.data.preprocess import resize_images

DEFAULT_SIZE = 16


def load_digits(image_size: int | None) -> Arrays:
    """The digits upscaled to `image_size` (default `DEFAULT_SIZE`), 0..16 → 0..255."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    return Arrays(
        x_train=resize_images(x, image_size or DEFAULT_SIZE),
        y_train=digits.target.astype(np.int64),
        x_test=None,
        y_test=None,
        class_names=[str(i) for i in range(10)],
        source="scikit-learn load_digits (8x8)",
    )
