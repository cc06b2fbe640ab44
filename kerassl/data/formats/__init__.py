"""One loader per file format: IDX, image folders, MedMNIST .npz, TFDS, scikit-learn digits.

A loader knows files, not dataset names: it returns `Arrays`, and the registry
(`kerassl.data.registry`) picks the loader for a name, gives the arrays the name and its
default preset, and holds out a test split when the files have none. Every loader that
changes an image's size or channels does it with `kerassl.data.preprocess`, the function
the exported model runs too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerassl.errors import UserError


@dataclass
class Arrays:
    """What a loader read: uint8 images [N, H, W, C] and int64 labels (-1: unlabeled).

    Attributes:
        x_train: the training images.
        y_train: their labels.
        x_test: the test images; None when the files have no test split.
        y_test: their labels; None with `x_test`.
        class_names: one name per class index.
        source: where the arrays come from, human-readable.
        skipped: the files left out as unreadable, each as "relative/path: reason".
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str]
    source: str
    skipped: tuple[str, ...] = ()


def checked_split(
    where: Path, images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """One split's images as uint8 [N, H, W, C] and its labels as int64 [N].

    Accepts images [N, H, W] (one channel) or [N, H, W, 1|3] with N >= 1, and one integer
    class index >= 0 per image, as labels [N] or [N, 1].

    Args:
        where: the file or folder the arrays come from, first in messages.
        images: the images as read.
        labels: the labels as read.
        images_name: what `where` calls the images (a key, a file name), for messages.
        labels_name: what `where` calls the labels.

    Raises:
        UserError: wrong dtype or dims, no images, counts that differ, labels that are no
            class indices.
    """
    if (
        images.dtype != np.uint8
        or images.ndim not in (3, 4)
        or (images.ndim == 4 and images.shape[-1] not in (1, 3))
    ):
        raise UserError(
            f"{where}: {images_name} must be uint8 images [N, H, W] or [N, H, W, 1|3], "
            f"got {images.dtype} {images.shape}"
        )
    if len(images) == 0:
        raise UserError(f"{where}: {images_name} holds no images (the split is empty)")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise UserError(
            f"{where}: {labels_name} has shape {labels.shape}; expected one class index per "
            "image, [N] or [N, 1] (multi-label data is not supported)"
        )
    if labels.dtype.kind not in "iu":
        raise UserError(
            f"{where}: {labels_name} must hold integer class indices, got {labels.dtype}"
        )
    if len(labels) != len(images):
        raise UserError(
            f"{where}: {labels_name} has {len(labels)} labels but {images_name} has "
            f"{len(images)} images"
        )
    if labels.min() < 0:
        raise UserError(
            f"{where}: {labels_name} must hold class indices >= 0, found {labels.min()}"
        )
    return (images if images.ndim == 4 else images[..., None]), labels.astype(np.int64)


def class_names(
    folder: Path, labels: Sequence[np.ndarray], known: Sequence[str] | None = None
) -> list[str]:
    """`known`, else the lines of `folder/classes.txt`, else "0" … "n − 1".

    Raises:
        UserError: fewer names than the classes the labels use.
    """
    count = max(int(y.max(initial=-1)) for y in labels) + 1
    names = list(known) if known is not None else _read_classes_txt(folder)
    if names is None:
        return [str(i) for i in range(count)]
    if len(names) < count:
        raise UserError(
            f"{folder}: labels go up to {count - 1} but only {len(names)} class names are "
            "known (classes.txt)"
        )
    return names


def _read_classes_txt(folder: Path) -> list[str] | None:
    path = folder / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return names or None
