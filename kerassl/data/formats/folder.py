"""Image folders: `PATH/<class>/*.png|jpg` labeled, `PATH/*.png` and `PATH/unlabeled/`
unlabeled, optional `PATH/test/<class>/`.

What is read:

- An image file is a file with a suffix of `IMAGE_SUFFIXES` (any case). A class is a
  subfolder of PATH (other than `test` and `unlabeled`) holding at least one image file.
- Hidden files (`.DS_Store`, macOS's `._x.png`) and `Thumbs.db`/`desktop.ini` are ignored
  everywhere, as are folders inside the image folders.
- PATH itself may hold other files (a README, `classes.txt`, a licence): only its image
  files are read. In the image folders (`PATH/<class>/`, `PATH/unlabeled/`,
  `PATH/test/<class>/`) every file is meant to be an image, so any other is skipped as
  "no image suffix".
- An image file that PIL cannot decode completely (the whole file is decoded, so a
  truncated one is caught; PIL's `LOAD_TRUNCATED_IMAGES` is left False) is skipped with a
  short reason: "not an image", "truncated", "cannot decode (PIL's message)", or "cannot
  read (the system's message)" for a broken link or a file without read permission.

Skipped files are listed in `Arrays.skipped` as "relative/path: reason", and announced by
one warning line on stderr naming the first few. No readable image at all, or a class none
of whose images is readable, is a `UserError`. A test folder with no readable image counts
as no test split.

Decoding: PIL, EXIF orientation applied; gray modes → 8-bit gray, 16-bit gray ("I;16") →
its high byte (as libpng and the SavedModel's `tf.io.decode_image` do), 32-bit "I"/"F" →
clipped to 0..255, every other mode (RGBA, palette with transparency, CMYK, …) → RGB, alpha
dropped. `kerassl.data.preprocess` then crops, resizes and converts channels, as the
exported model does. The dataset is RGB when any of its readable images is, gray otherwise.

Files are decoded by a thread per CPU, a few chunks ahead of the preprocessing. A folder
whose decoded images would not fit in memory (`kerassl.data.cache.should_stream`) is
decoded once into the on-disk cache, keyed on the folder, the size and every file's
relative path, size and mtime, and returned as memmaps of it; the gray-or-RGB choice is
then read from the files' headers first (a colour header on a file that turns out
unreadable is undone, a gray one on colour pixels restarts the build in RGB), so that the
cached pixels equal the in-memory path's.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kerassl.data import cache
from kerassl.data.formats import Arrays
from kerassl.data.preprocess import resize_images
from kerassl.errors import UserError

DEFAULT_SIZE = 64
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LAYOUT = "PATH/<class>/*.png|jpg (and optionally PATH/unlabeled/, PATH/test/<class>/)"
_SYSTEM_FILES = {"thumbs.db", "desktop.ini"}
_RESERVED_FOLDERS = {"test", "unlabeled"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}
_DECODE_CHUNK = 64  # images decoded and preprocessed as one chunk
_CHUNKS_AHEAD = 2  # chunks decoded ahead of the one being preprocessed
_NAMED = 3  # skipped files named in a message


class _Unreadable(Exception):
    """A file that yields no image; the message is the reason."""


def load_folder(
    name: str,
    root: Path,
    image_size: int | None,
    stream: bool | None = None,
    cache_dir: Path | None = None,
) -> Arrays:
    """Reads the images under `root`, resized to `image_size` (default `DEFAULT_SIZE`).

    Unreadable files are skipped, listed in `Arrays.skipped` and announced by one line on
    stderr (see the module docstring). Files are decoded in parallel threads.

    Args:
        name: the dataset name, for messages.
        root: the dataset folder.
        image_size: side of the square images.
        stream: True: decode into the on-disk cache of `kerassl.data.cache` (once) and
            return memmaps of it; False: into memory; None: the cache when the decoded
            images would exceed `cache.RAM_FRACTION` of the available memory.
        cache_dir: the cache directory; None: `cache.default_root()`.

    Raises:
        UserError: no such folder, no class folder, a test class without a training
            folder, no readable image, or a class with no readable image.
    """
    if not root.is_dir():
        raise UserError(f"{name}: no such directory {root}; pass folder:PATH with {LAYOUT}")
    class_dirs = [d for d in _subfolders(root, _RESERVED_FOLDERS) if _image_files(d)]
    if not class_dirs:
        raise UserError(f"{name}: no class subfolders with images in {root}; expected {LAYOUT}")
    class_names = [d.name for d in class_dirs]
    files, labels = _train_files(root, class_dirs)
    test_files, test_labels = _test_files(name, root / "test", class_names)
    everything = files + test_files
    size = image_size or DEFAULT_SIZE
    if cache.should_stream(len(everything) * size * size * 3, stream):
        x_all, readable, failures = _cached_images(root, everything, size, cache_dir)
    else:
        x_all, readable, failures = _read_images(everything, size)
    skipped = tuple(f"{_relative(path, root)}: {reason}" for path, reason in failures)
    if not readable.any():
        raise UserError(
            f"{name}: no readable image in {root} ({_listing(failures, root)}); expected {LAYOUT}"
        )
    y_all = np.asarray(labels + test_labels, np.int64)[readable]
    n_train = int(readable[: len(files)].sum())
    y_train = y_all[:n_train]
    _check_classes(name, class_dirs, y_train, failures, root)
    if failures:
        _warn_skipped(failures, len(everything), root)
    has_test = len(x_all) > n_train
    test_note = f", test from {root / 'test'}" if has_test else ""
    skip_note = f", {len(skipped)} unreadable files skipped" if skipped else ""
    n_unlabeled = int(np.sum(y_train < 0))
    return Arrays(
        x_train=x_all[:n_train],
        y_train=y_train,
        x_test=x_all[n_train:] if has_test else None,
        y_test=y_all[n_train:] if has_test else None,
        class_names=class_names,
        source=f"{root} (image folder, {n_unlabeled} unlabeled{test_note}{skip_note})",
        skipped=skipped,
    )


def _train_files(root: Path, class_dirs: list[Path]) -> tuple[list[Path], list[int]]:
    """The files of the class folders, then the unlabeled ones, and their labels (-1)."""
    files, labels = [], []
    for label, folder in enumerate(class_dirs):
        paths = _folder_files(folder)
        files += paths
        labels += [label] * len(paths)
    unlabeled = _image_files(root) + _folder_files(root / "unlabeled")
    return files + unlabeled, labels + [-1] * len(unlabeled)


def _test_files(name: str, test_root: Path, class_names: list[str]) -> tuple[list[Path], list[int]]:
    """The files of `test_root/<class>/` and their labels; nothing without `test_root`."""
    files, labels = [], []
    if not test_root.is_dir():
        return files, labels
    for folder in _subfolders(test_root, set()):
        if not _image_files(folder):
            continue
        if folder.name not in class_names:
            raise UserError(
                f"{name}: test class {folder.name!r} has no training folder; "
                f"classes: {', '.join(class_names)}"
            )
        paths = _folder_files(folder)
        files += paths
        labels += [class_names.index(folder.name)] * len(paths)
    return files, labels


def _check_classes(
    name: str,
    class_dirs: list[Path],
    y_train: np.ndarray,
    failures: list[tuple[Path, str]],
    root: Path,
) -> None:
    """Raises a `UserError` naming the class folders without a readable training image."""
    empty = [folder for label, folder in enumerate(class_dirs) if not np.any(y_train == label)]
    if empty:
        lost = [(path, reason) for path, reason in failures if path.parent in empty]
        raise UserError(
            f"{name}: no readable image in class folder {', '.join(map(str, empty))} "
            f"({_listing(lost, root)}); fix or remove these files"
        )


def _warn_skipped(failures: list[tuple[Path, str]], total: int, root: Path) -> None:
    """The one warning line on stderr for the skipped files."""
    files = "file" if len(failures) == 1 else "files"
    print(
        f"kerassl: warning: skipped {len(failures)} unreadable {files} of {total:,} in {root}: "
        f"{_listing(failures, root)}",
        file=sys.stderr,
        flush=True,
    )


def _listing(failures: list[tuple[Path, str]], root: Path) -> str:
    """The first failures named: "a/x.png (truncated), b/y.txt (no image suffix), and 5 more"."""
    named = [f"{_relative(path, root)} ({reason})" for path, reason in failures[:_NAMED]]
    more = len(failures) - _NAMED
    return ", ".join(named + ([f"and {more:,} more"] if more > 0 else []))


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_images(
    paths: list[Path], size: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[Path, str]]]:
    """Decodes and preprocesses the readable `paths` into uint8 [K, size, size, C].

    The images of a chunk that share a shape are preprocessed as one batch. C is 1 until
    the first colour image, then 3.

    Returns:
        The images of the readable paths in their order, a bool mask of the readable paths,
        and (path, reason) for each of the others.
    """
    out = np.empty((len(paths), size, size, 1), np.uint8)
    readable = np.zeros(len(paths), bool)
    failures = []
    count = 0
    for start, results in _decoded_chunks(paths):
        decoded = []
        for index, (image, reason) in enumerate(results, start):
            if image is None:
                failures.append((paths[index], reason))
            else:
                decoded.append(image)
                readable[index] = True
        if out.shape[-1] == 1 and any(image.shape[-1] == 3 for image in decoded):
            out = np.repeat(out, 3, axis=-1)  # gray → RGB repeats, as preprocess_images does
        for rows, batch in _same_shape_batches(decoded):
            out[count + rows] = resize_images(batch, size, out.shape[-1])
        count += len(decoded)
    return out[:count], readable, failures


def _cached_images(
    root: Path, paths: list[Path], size: int, cache_dir: Path | None
) -> tuple[np.memmap, np.ndarray, list[tuple[Path, str]]]:
    """`_read_images` through the on-disk cache: its entry for these files (names, sizes,
    mtimes) and size, built first when there is none. The images are a read-only memmap."""
    entry = cache.Entry(
        Path(cache_dir) if cache_dir is not None else cache.default_root(),
        source=["folder", str(root.resolve()), size],
        content=cache.file_listing(paths, root),
    )
    if not entry.complete():
        nbytes = len(paths) * size * size * 3
        entry.build(lambda directory: _build_cache(directory, paths, size), nbytes)
    images, _, meta = entry.read()
    unreadable = dict(meta["unreadable"])
    readable = np.ones(len(paths), bool)
    readable[list(unreadable)] = False
    return images, readable, [(paths[i], reason) for i, reason in unreadable.items()]


def _build_cache(directory: Path, paths: list[Path], size: int, channels: int | None = None):
    """Writes the cache entry of `_cached_images` into `directory`: row i of the images
    is the i-th readable path's, exactly as `_read_images` computes it. The channels are
    guessed from the files' headers unless given."""
    if channels is None:
        with _decoding_pool() as pool:
            channels = 3 if any(pool.map(_colour_header, paths)) else 1
    writer = cache.ImageWriter(directory / cache.IMAGES, len(paths))
    readable = np.zeros(len(paths), bool)
    unreadable, colour = [], False
    for start, results in _decoded_chunks(paths):
        decoded, rows = [], []
        for index, (image, reason) in enumerate(results, start):
            if image is None:
                unreadable.append((index, reason))
            else:
                decoded.append(image)
                rows.append(index)
                readable[index] = True
                colour |= image.shape[-1] == 3
        if colour and channels == 1:  # a header said gray, the pixels are colour
            return _build_cache(directory, paths, size, channels=3)
        for batch_rows, batch in _same_shape_batches(decoded):
            writer.write(np.asarray(rows)[batch_rows], resize_images(batch, size, channels))
    # No colour image after all (a colour header on an unreadable file): a gray image
    # preprocessed to RGB repeats its one channel, so the first channel is the gray image.
    writer.finish((size, size, channels), keep=readable, channels=1 if not colour else None)
    cache.write_meta(directory, {"unreadable": unreadable})


def _colour_header(path: Path) -> bool:
    """Whether `path`'s header announces a mode `_pixels` makes RGB (no pixels decoded);
    False for what cannot be opened."""
    from PIL import Image

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    try:
        with Image.open(path) as image:
            return not (image.mode.startswith("I;16") or image.mode in _GRAY_MODES)
    except Exception:
        return False


def _same_shape_batches(decoded: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions in `decoded`, stacked images) for each shape among `decoded`."""
    rows_by_shape: dict[tuple[int, ...], list[int]] = {}
    for row, image in enumerate(decoded):
        rows_by_shape.setdefault(image.shape, []).append(row)
    for rows in rows_by_shape.values():
        yield np.asarray(rows), np.stack([decoded[row] for row in rows])


@contextlib.contextmanager
def _decoding_pool() -> Iterator[ThreadPoolExecutor]:
    """A thread per CPU for PIL (which releases the GIL while decoding), with PIL's remarks
    on what it recovers (bad EXIF, palette transparency, …) silenced while the pool lives.

    The warnings filters are process-wide (Python < 3.14): a worker that entered and left
    `warnings.catch_warnings` itself would restore them under another worker's feet, so
    the filter is set here, in the thread that owns the pool."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            yield pool


def _decoded_chunks(
    paths: list[Path],
) -> Iterator[tuple[int, list[tuple[np.ndarray | None, str | None]]]]:
    """(first index, [(image, None) or (None, reason)]) for each chunk of `_DECODE_CHUNK`
    paths, in order, decoded by a thread per CPU (PIL releases the GIL while decoding)
    at most `_CHUNKS_AHEAD` chunks ahead of the consumer."""
    starts = iter(range(0, len(paths), _DECODE_CHUNK))
    with _decoding_pool() as pool:
        pending: deque = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                chunk = paths[start : start + _DECODE_CHUNK]
                pending.append((start, [pool.submit(_try_decode, path) for path in chunk]))

        for _ in range(_CHUNKS_AHEAD + 1):
            submit()
        while pending:
            start, futures = pending.popleft()
            submit()
            yield start, [future.result() for future in futures]


def _try_decode(path: Path) -> tuple[np.ndarray | None, str | None]:
    try:
        return _decode(path), None
    except _Unreadable as error:
        return None, str(error)


def _decode(path: Path) -> np.ndarray:
    """The whole image file decoded, EXIF-transposed: uint8 [H, W, 1] or [H, W, 3].

    Raises:
        _Unreadable: no image suffix, not an image, truncated, or undecodable.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise _Unreadable("no image suffix")
    try:
        with Image.open(path) as image:
            image.load()  # decodes the whole file: a truncated one fails here
            return _pixels(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise _Unreadable("not an image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _Unreadable(_reason(error)) from None


def _reason(error: Exception) -> str:
    """A short reason for a decoding error of PIL or of the file system."""
    if getattr(error, "strerror", None):  # the file system's: missing, permission, …
        return f"cannot read ({error.strerror})"
    message = str(error).strip()
    return "truncated" if "truncated" in message.lower() else f"cannot decode ({message})"


def _pixels(image) -> np.ndarray:
    """A decoded PIL image → uint8 [H, W, 1] (gray modes) or [H, W, 3] (alpha dropped)."""
    if image.mode.startswith("I;16"):
        return (np.asarray(image) >> 8).astype(np.uint8)[..., None]
    if image.mode in _GRAY_MODES:
        return np.asarray(image.convert("L"))[..., None]
    return np.asarray(image.convert("RGB"))


def _image_files(folder: Path) -> list[Path]:
    """The visible files of `folder` with an image suffix, sorted; [] without the folder."""
    return [path for path in _folder_files(folder) if path.suffix.lower() in IMAGE_SUFFIXES]


def _folder_files(folder: Path) -> list[Path]:
    """The visible entries of `folder` other than folders, sorted; [] without the folder."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if not path.is_dir()
        and not path.name.startswith(".")
        and path.name.lower() not in _SYSTEM_FILES
    )


def _subfolders(folder: Path, reserved: set[str]) -> list[Path]:
    """The visible subfolders of `folder` not named in `reserved`, sorted."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_dir() and path.name not in reserved and not path.name.startswith(".")
    )
