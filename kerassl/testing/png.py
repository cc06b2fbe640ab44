"""Reading back the PNGs that figure functions write."""

from __future__ import annotations

import os

import numpy as np


def read_png(path: str | os.PathLike) -> np.ndarray:
    """The pixels of a PNG file, after checking that it is a complete, valid PNG.

    Returns:
        uint8 [H, W, C] pixels.
    """
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", f"{path} is a {image.format}, not a PNG"
        image.verify()  # the whole file: chunks and checksums
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
