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
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str]
    source: str


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
