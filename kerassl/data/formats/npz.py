"""MedMNIST `.npz` files: `train_/val_/test_images` and `train_/val_/test_labels`."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from kerassl.data.formats import Arrays, checked_split, class_names
from kerassl.data.preprocess import resize_images
from kerassl.errors import UserError

_SPLITS = ("train", "val", "test")  # val is optional
_EXPECTED = "train_images, train_labels, test_images, test_labels (val_images, val_labels optional)"


def load_npz(name: str, path: Path, image_size: int | None) -> Arrays:
    """Reads a MedMNIST `.npz`; the validation split, when present, joins the training one.

    Args:
        name: the dataset name, for messages.
        path: the `.npz` file; a `classes.txt` beside it names the classes.
        image_size: resize to this square size; None keeps the native size.

    Raises:
        UserError: no such file, not an .npz, missing keys, or arrays that are no image
            classification split (see `formats.checked_split`).
    """
    arrays = _read_npz(name, path)
    parts = {}
    for split in _SPLITS:
        if f"{split}_images" in arrays:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            parts[split] = checked_split(path, images, labels, f"{split}_images", f"{split}_labels")
    shapes = {split: images.shape[1:] for split, (images, _) in parts.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{split}_images {shape}" for split, shape in shapes.items())
        raise UserError(f"{path}: the splits' images differ in shape: {listed}")
    train = [parts[split] for split in ("train", "val") if split in parts]
    x_train = np.concatenate([images for images, _ in train])
    y_train = np.concatenate([labels for _, labels in train])
    x_test, y_test = parts["test"]
    return Arrays(
        x_train=resize_images(x_train, image_size),
        y_train=y_train,
        x_test=resize_images(x_test, image_size),
        y_test=y_test,
        class_names=class_names(path.parent, [y_train, y_test]),
        source=f"{path} (MedMNIST npz, val merged into train)",
    )


def _read_npz(name: str, path: Path) -> dict[str, np.ndarray]:
    """Every array of the `.npz` at `path`, by key, the MedMNIST keys checked present."""
    if not path.is_file():
        raise UserError(
            f"{name}: no such file {path}; pass npz:PATH to a MedMNIST .npz (e.g. pathmnist.npz)"
        )
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path}: not an .npz file (no zip archive: truncated, or saved with np.save?); "
            f"expected np.savez arrays {_EXPECTED}"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as error:
        raise UserError(f"{path}: cannot read .npz ({error})") from None
    required = [f"{split}_{kind}" for split in ("train", "test") for kind in ("images", "labels")]
    if any(f"val_{kind}" in arrays for kind in ("images", "labels")):
        required += ["val_images", "val_labels"]
    missing = [key for key in required if key not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "none"
        raise UserError(
            f"{path}: missing {', '.join(missing)} (keys found: {found}); expected MedMNIST "
            f"keys {_EXPECTED}"
        )
    return arrays
