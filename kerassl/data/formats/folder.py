"""Image folders: `PATH/<class>/*.png|jpg` labeled, `PATH/*.png` and `PATH/unlabeled/`
unlabeled, optional `PATH/test/<class>/`.

PIL decodes (any format it reads, EXIF orientation applied); `kerassl.data.preprocess`
crops, resizes and converts channels, as the exported model does. The dataset is RGB when
any of its files is, and gray otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kerassl.data.formats import Arrays
from kerassl.data.preprocess import resize_images
from kerassl.errors import UserError

DEFAULT_SIZE = 64
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_RESERVED_FOLDERS = {"test", "unlabeled"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
_DECODE_CHUNK = 64  # full-size images held in memory at once


def load_folder(name: str, root: Path, image_size: int | None) -> Arrays:
    """Reads the images under `root`, resized to `image_size` (default `DEFAULT_SIZE`).

    Args:
        name: the dataset name, for messages.
        root: the dataset folder.
        image_size: side of the square images.
    """
    if not root.is_dir():
        raise UserError(
            f"{name}: no such directory {root}; pass folder:PATH with PATH/<class>/*.png"
        )
    class_dirs = [d for d in _class_folders(root, _RESERVED_FOLDERS) if _image_files(d)]
    if not class_dirs:
        raise UserError(
            f"{name}: no class subfolders with images in {root}; expected PATH/<class>/*.png|jpg "
            "(and optionally PATH/unlabeled/, PATH/test/<class>/)"
        )
    class_names = [d.name for d in class_dirs]
    files, labels = [], []
    for label, folder in enumerate(class_dirs):
        paths = _image_files(folder)
        files += paths
        labels += [label] * len(paths)
    unlabeled = _image_files(root) + _image_files(root / "unlabeled")
    files += unlabeled
    labels += [-1] * len(unlabeled)
    test_root = root / "test"
    test_files, test_labels = [], []
    if test_root.is_dir():
        for folder in _class_folders(test_root, set()):
            paths = _image_files(folder)
            if paths and folder.name not in class_names:
                raise UserError(
                    f"{name}: test class {folder.name!r} has no training folder; "
                    f"classes: {', '.join(class_names)}"
                )
            test_files += paths
            test_labels += [class_names.index(folder.name)] * len(paths)
    everything = files + test_files
    channels = 1 if all(_mode(path) in _GRAY_MODES for path in everything) else 3
    x_all = _read_images(everything, image_size or DEFAULT_SIZE, channels)
    test_note = f", test from {test_root}" if test_files else ""
    return Arrays(
        x_train=x_all[: len(files)],
        y_train=np.asarray(labels, np.int64),
        x_test=x_all[len(files) :] if test_files else None,
        y_test=np.asarray(test_labels, np.int64) if test_files else None,
        class_names=class_names,
        source=f"{root} (image folder, {len(unlabeled)} unlabeled{test_note})",
    )


def _read_images(paths: list[Path], size: int, channels: int) -> np.ndarray:
    """Decodes and preprocesses `paths` into uint8 [N, size, size, channels].

    Images are decoded a chunk at a time, and the images of a chunk that share a shape
    are preprocessed as one batch.
    """
    out = np.empty((len(paths), size, size, channels), np.uint8)
    for start in range(0, len(paths), _DECODE_CHUNK):
        decoded = [_decode(path) for path in paths[start : start + _DECODE_CHUNK]]
        rows_by_shape: dict[tuple[int, ...], list[int]] = {}
        for row, image in enumerate(decoded):
            rows_by_shape.setdefault(image.shape, []).append(row)
        for rows in rows_by_shape.values():
            batch = np.stack([decoded[row] for row in rows])
            out[start + np.asarray(rows)] = resize_images(batch, size, channels)
    return out


@contextlib.contextmanager
def _opened(path: Path) -> Iterator:
    """`PIL.Image.open(path)`, any failure to read it raised as a `UserError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            yield image
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{path}: cannot decode image ({error})") from None


def _mode(path: Path) -> str:
    """The PIL mode of an image file (reads its header only)."""
    with _opened(path) as image:
        return image.mode


def _decode(path: Path) -> np.ndarray:
    """PIL decode → uint8 [H, W, 1] (gray modes) or [H, W, 3], EXIF-transposed."""
    from PIL import ImageOps

    with _opened(path) as image:
        image = ImageOps.exif_transpose(image)
        gray = image.mode in _GRAY_MODES
        pixels = np.asarray(image.convert("L" if gray else "RGB"), dtype=np.uint8)
    return pixels[..., None] if gray else pixels


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )


def _class_folders(folder: Path, reserved: set[str]) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name not in reserved and not p.name.startswith(".")
    )
