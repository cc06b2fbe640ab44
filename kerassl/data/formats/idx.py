"""IDX files (LeCun's MNIST format): `train-images-idx3-ubyte[.gz]` and friends."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kerassl.data.formats import Arrays, checked_split, class_names
from kerassl.data.preprocess import resize_images
from kerassl.errors import UserError

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (LeCun's MNIST format), gzip-compressed or raw.

    Format: two zero bytes, a type byte (0x08 ubyte … 0x0E double), a byte with the number
    of dimensions d, then d big-endian uint32 sizes, then the data in C order, big-endian.

    Raises:
        UserError: the file is missing, not IDX, truncated, or its size disagrees with its
            header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such IDX file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror or error})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise UserError(f"{path}: corrupt gzip file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise UserError(
            f"{path}: not an IDX file (magic number 0x{raw[:4].hex() or '(empty)'}); expected "
            "00 00 <type 08-0E> <ndim>, as in MNIST's train-images-idx3-ubyte"
        )
    ndim, dtype = raw[3], _IDX_DTYPES[raw[2]]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: corrupt IDX file: truncated header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(
            f"{path}: corrupt IDX file: header says shape {dims} ({expected} data bytes) "
            f"but the file holds {len(raw) - header}"
        )
    array = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def has_idx(folder: Path) -> bool:
    """Whether `folder` holds IDX training images."""
    return folder.is_dir() and _find_idx_file(folder, "train-images") is not None


def load_idx(
    name: str, folder: Path, image_size: int | None, known_classes: Sequence[str] | None = None
) -> Arrays:
    """Reads `train-*` and, when present, `t10k-*` images and labels from `folder`.

    Args:
        name: the dataset name, for messages.
        folder: the folder of IDX files.
        image_size: resize to this square size; None keeps the native size.
        known_classes: class names; None reads `classes.txt`, else "0" … "n − 1".
    """
    if not folder.is_dir():
        raise UserError(
            f"{name}: no such directory {folder}; pass idx:PATH with a folder of IDX files"
        )
    train = _read_idx_pair(folder, "train")
    if train is None:
        raise UserError(f"{name}: no train-images-idx3-ubyte[.gz] in {folder}")
    x_train, y_train = train
    x_test, y_test = _read_idx_pair(folder, "t10k") or (None, None)
    if x_test is not None and x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(
            f"{folder}: train images {x_train.shape[1:]} and t10k images {x_test.shape[1:]} differ"
        )
    labels = [y for y in (y_train, y_test) if y is not None]
    return Arrays(
        x_train=resize_images(x_train, image_size),
        y_train=y_train,
        x_test=None if x_test is None else resize_images(x_test, image_size),
        y_test=y_test,
        class_names=class_names(folder, labels, known_classes),
        source=f"{folder} (IDX)",
    )


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    """``train-images`` → train-images-idx3-ubyte[.gz] or train-images.idx3-ubyte[.gz]."""
    kind = "idx3" if stem.endswith("images") else "idx1"
    for base in (f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"):
        for suffix in (".gz", ""):
            candidate = folder / (base + suffix)
            if candidate.is_file():
                return candidate
    return None


def _read_idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The checked images and labels of `prefix` (`train`, `t10k`); None without either file."""
    images_path = _find_idx_file(folder, f"{prefix}-images")
    labels_path = _find_idx_file(folder, f"{prefix}-labels")
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        missing = f"{prefix}-{'images-idx3' if images_path is None else 'labels-idx1'}-ubyte[.gz]"
        raise UserError(f"{folder}: {missing} is missing (IDX images and labels come in pairs)")
    return checked_split(
        folder, read_idx(images_path), read_idx(labels_path), images_path.name, labels_path.name
    )
