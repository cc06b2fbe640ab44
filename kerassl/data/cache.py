"""The on-disk cache of decoded, resized images: datasets larger than memory, streamed.

A `folder:` or TFDS dataset whose decoded images would take more than `RAM_FRACTION` of the
available memory (or any, with ``load_dataset(..., stream=True)``) is decoded once, in
parallel, through `kerassl.data.preprocess` (the same pixels as the in-memory path, tested
equal), into a cache entry; every later load reads the entry. Smaller datasets are decoded
into memory as before (``stream=None`` decides by size, ``stream=False`` never caches).

Where: ``<cache_dir>/<source digest>-<content digest>/``, ``cache_dir`` by default
``<Keras home>/kerassl/images`` (``$KERAS_HOME``, else ``~/.keras``, as Keras resolves it;
`kerassl.xla_choice` keeps its cache there too). The source digest names the source
(folder path or TFDS name, config, version and data_dir), the image size and the channels;
the content digest its files (relative path, size and mtime of every file of a folder;
the files of a TFDS data_dir). A changed, added or removed file gives a new entry, and
the entries of the same source with other contents are removed when it is written.

An entry is a directory: ``images.npy`` (uint8 [N, S, S, C], train rows then test rows),
``meta.json`` (what else the loader needs: unreadable files, split sizes) and, for TFDS,
``labels.npy`` (int64 [N]; a folder's labels are its folder names). It is assembled
under a hidden temporary name and renamed into place when complete, so an interrupted
build never looks complete (its leftovers are removed by the next build of the same
source, once their process is gone). Derived arrays (the registry's stratified test
holdout of a folder without ``test/``) are written next to it by `take`, atomically too.

What a streamed dataset is to its consumers: `ImageData.x_train` and `x_test` are
read-only `np.memmap` views of ``images.npy``, ordinary uint8 NHWC arrays to NumPy. Splits
(`kerassl.data.splits`) only read labels; probes, kNN, baselines and feature extraction
index the arrays (`x[split.labeled]`, `x[start:stop]`), which reads only those rows from
disk (the page cache keeps the hot ones); `kerassl.data.pipeline` gathers each batch by
index from the memmap in a parallel, prefetched map instead of holding the array as a
tensor. What still copies into memory is what a consumer asks for by index: the labeled
subset (all of it for a 100 % label budget) and a ``--max-unlabeled`` subsample.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# Stream a dataset whose decoded images exceed this fraction of the available memory.
RAM_FRACTION = 0.25
IMAGES, LABELS, META = "images.npy", "labels.npy", "meta.json"
_FORMAT = 1  # the entry layout; a change makes every older entry a miss
_TEMP = ".tmp-"
_CHUNK_BYTES = 64 << 20  # rows copied at once by `take` and `_shrink`


def default_root() -> Path:
    """``<Keras home>/kerassl/images``."""
    from keras.src.backend.config import keras_home

    return Path(keras_home()) / "kerassl" / "images"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def should_stream(decoded_bytes: int | None, stream: bool | None) -> bool:
    """`stream` when given; else whether `decoded_bytes` exceed `RAM_FRACTION` of the
    available memory (unknown sizes or memory: in memory)."""
    if stream is not None:
        return bool(stream)
    memory = available_memory()
    if decoded_bytes is None or memory is None:
        return False
    return decoded_bytes > RAM_FRACTION * memory


def digest(value) -> str:
    """A short hex digest of a JSON-serialisable value."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_listing(paths: Iterable[Path], root: Path) -> list[tuple[str, int, int]]:
    """(path relative to `root`, size, mtime in ns) of each path; missing ones as -1."""
    listing = []
    for path in paths:
        try:
            stat = path.stat()
            listing.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
        except OSError:
            listing.append((path.relative_to(root).as_posix(), -1, -1))
    return listing


class Entry:
    """One cache entry: `source` (what it is of) and `content` (the state of its files).

    Args:
        root: the cache directory.
        source: JSON-serialisable description of the source, size and channels.
        content: JSON-serialisable state of the source's files.
    """

    def __init__(self, root: Path, source, content):
        self.root = Path(root)
        self.prefix = digest([_FORMAT, source])
        self.path = self.root / f"{self.prefix}-{digest(content)}"

    def complete(self) -> bool:
        return (self.path / META).is_file()

    def read(self) -> tuple[np.memmap, np.ndarray | None, dict]:
        """The images (read-only memmap), labels (None if the entry has none) and
        metadata of a complete entry."""
        images = np.load(self.path / IMAGES, mmap_mode="r")
        labels = np.load(self.path / LABELS) if (self.path / LABELS).is_file() else None
        meta = json.loads((self.path / META).read_text())
        return images, labels, meta

    def build(self, write, nbytes: int | None = None) -> None:
        """Runs `write(directory)` in a temporary directory, which must leave `IMAGES`
        and `META` (and may leave `LABELS`) there, then renames it into place and removes
        the other entries of the same source. An exception leaves no entry.

        Raises:
            UserError: the cache's disk has less than `nbytes` free.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        free = shutil.disk_usage(self.root).free
        if nbytes is not None and nbytes > free:
            from kerassl.errors import UserError

            raise UserError(
                f"the decoded images need {nbytes / 1e9:.1f} GB in the image cache "
                f"{self.root}, which has {free / 1e9:.1f} GB free; free some space or "
                "set $KERAS_HOME to a folder on a larger disk"
            )
        temp = self.root / f"{_TEMP}{self.path.name}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
        try:
            write(temp)
            for name in (IMAGES, META):
                if not (temp / name).is_file():
                    raise RuntimeError(f"cache build wrote no {name}")
            try:
                os.rename(temp, self.path)
            except OSError:
                if not self.complete():  # not another process having finished first
                    raise
                shutil.rmtree(temp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        for other in self.root.glob(f"{self.prefix}-*"):
            if other != self.path:
                shutil.rmtree(other, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        """Temporary directories of this source left by a process of this host that is
        gone (killed builds); other hosts' (a cluster sharing the cache) are theirs."""
        for temp in self.root.glob(f"{_TEMP}{self.prefix}-*-{_host()}-*"):
            pid = temp.name.rsplit("-", 2)[-2]
            if not pid.isdigit() or not _alive(int(pid)):
                shutil.rmtree(temp, ignore_errors=True)


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_meta(directory: Path, meta: dict) -> None:
    (directory / META).write_text(json.dumps(meta))


def write_labels(directory: Path, labels: np.ndarray) -> None:
    np.save(directory / LABELS, np.asarray(labels, np.int64))


class ImageWriter:
    """Writes uint8 images [N, S, S, C] into a .npy file as they come.

    With the row count known, rows go straight into a memmap of the file (created at the
    first write, of that write's image shape); unknown (a TFDS split whose info has no
    count), they are held until `finish`.

    Args:
        path: the .npy file.
        rows: the row count, or None.
    """

    def __init__(self, path: Path, rows: int | None):
        self.path, self.rows = Path(path), rows
        self.count = 0
        self._held: list[np.ndarray] = []
        self._out = None

    def _open(self, tail: tuple[int, ...]) -> np.memmap:
        if self._out is None:
            self._out = np.lib.format.open_memmap(
                self.path, mode="w+", dtype=np.uint8, shape=(self.rows, *tail)
            )
        return self._out

    def write(self, rows: np.ndarray, images: np.ndarray) -> None:
        """Writes `images` at `rows` (known row count only)."""
        self._open(images.shape[1:])[rows] = images

    def append(self, images: np.ndarray) -> None:
        """Writes `images` after the rows appended so far."""
        if self.rows is None:
            self._held.append(np.asarray(images, np.uint8))
        else:
            if self.count + len(images) > self.rows:
                raise RuntimeError(f"more than the {self.rows} expected images")
            self._open(images.shape[1:])[self.count : self.count + len(images)] = images
        self.count += len(images)

    def finish(
        self,
        tail: tuple[int, ...],
        keep: np.ndarray | None = None,
        channels: int | None = None,
    ) -> None:
        """Completes the file: of shape [rows, *tail] if nothing was written, the rows of
        the bool mask `keep` only (None: all written), the first `channels` only (None:
        all)."""
        if self.rows is None:
            held = np.concatenate(self._held) if self._held else np.zeros((0, *tail), np.uint8)
            self._held = []
            self.rows, self._out = len(held), None
            np.save(self.path, held.astype(np.uint8, copy=False))
            out = np.load(self.path, mmap_mode="r")
        else:
            out = self._open(tail)
            out.flush()
            if keep is None and 0 < self.count < self.rows:  # fewer appended than expected
                keep = np.arange(self.rows) < self.count
        self._out = None
        if (keep is not None and not keep.all()) or (channels and channels < out.shape[-1]):
            rows = np.flatnonzero(keep) if keep is not None else np.arange(len(out))
            temp = self.path.with_name(f"{_TEMP}{self.path.name}")
            _copy_rows(out, rows, temp, channels)
            del out
            os.replace(temp, self.path)


def take(x: np.memmap, indices: np.ndarray, name: str) -> np.memmap:
    """``x[indices]`` as a memmap of ``<name>.npy`` beside `x`'s file, written (atomically,
    by chunks) the first time; later calls read it. The caller guarantees that `name`
    determines `indices` for this entry (e.g. a seeded holdout of its labels)."""
    path = Path(x.filename).with_name(f"{name}.npy")
    if not path.is_file():
        temp = path.with_name(f"{_TEMP}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            _copy_rows(x, np.asarray(indices, np.int64), temp)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def _copy_rows(x: np.ndarray, indices: np.ndarray, path: Path, channels: int | None = None) -> None:
    """Writes ``x[indices]`` (its first `channels`) to the .npy file `path`, a chunk of
    rows at a time."""
    channels = channels or x.shape[-1]
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=x.dtype, shape=(len(indices), *x.shape[1:-1], channels)
    )
    step = max(1, _CHUNK_BYTES // max(1, int(np.prod(x.shape[1:]))))
    for start in range(0, len(indices), step):
        out[start : start + step] = x[indices[start : start + step]][..., :channels]
    out.flush()
    del out
