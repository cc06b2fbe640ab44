"""MedMNIST `.npz` files: `train_/val_/test_images` and `train_/val_/test_labels`."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from kerassl.data.formats import Arrays, class_names
from kerassl.data.preprocess import resize_images
from kerassl.errors import UserError

_REQUIRED = ("train_images", "train_labels", "test_images", "test_labels")


def load_npz(name: str, path: Path, image_size: int | None) -> Arrays:
    """Reads a MedMNIST `.npz`; the validation split, when present, joins the training one.

    Args:
        name: the dataset name, for messages.
        path: the `.npz` file; a `classes.txt` beside it names the classes.
        image_size: resize to this square size; None keeps the native size.
    """
    if not path.is_file():
        raise UserError(
            f"{name}: no such file {path}; pass npz:PATH to a MedMNIST .npz (e.g. pathmnist.npz)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zlib.error) as error:
        raise UserError(f"{path}: cannot read .npz ({error})") from None
    missing = [key for key in _REQUIRED if key not in arrays]
    if missing:
        raise UserError(
            f"{path}: missing {', '.join(missing)}; expected MedMNIST keys "
            "train_/val_/test_images and train_/val_/test_labels"
        )

    def part(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise UserError(
                f"{path}: {split}_labels has shape {labels.shape}; "
                "multi-label data is not supported"
            )
        if images.ndim == 3:
            images = images[..., None]
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise UserError(
                f"{path}: {split}_images must be uint8 [N, H, W(, C)] matching "
                f"{len(labels)} labels, got {images.dtype} {images.shape}"
            )
        return images, labels.astype(np.int64)

    x_train, y_train = part("train")
    if "val_images" in arrays and "val_labels" in arrays:
        x_val, y_val = part("val")
        x_train, y_train = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
    x_test, y_test = part("test")
    return Arrays(
        x_train=resize_images(x_train, image_size),
        y_train=y_train,
        x_test=resize_images(x_test, image_size),
        y_test=y_test,
        class_names=class_names(path.parent, [y_train, y_test]),
        source=f"{path} (MedMNIST npz, val merged into train)",
    )
