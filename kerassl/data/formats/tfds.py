"""TensorFlow Datasets image classification builders (downloaded only when allowed).

Images are decoded and preprocessed in a parallel tf.data map; a builder too large for
memory is written into the on-disk cache of `kerassl.data.cache` (train rows, then test
rows), keyed on the builder's name, version, config and data_dir and on the names, sizes
and modification times of its data_dir's files. A builder without files to list (mocked
by `tfds.testing.mock_data`, or not on a listable file system) is decoded into the cache
afresh at every load, never read from an older entry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from kerassl.data import cache
from kerassl.data.formats import Arrays
from kerassl.data.preprocess import preprocess_images
from kerassl.errors import UserError

DEFAULT_VARIABLE_SIZE = 96  # side of the images of a builder whose image sizes vary
_BATCH = 512


class UnknownBuilder(Exception):
    """`name` is no TFDS builder.

    Attributes:
        detail: TFDS's reason when the name is malformed; None when it is just unknown.
        builders: the registered builder names, when the name is just unknown.
    """

    def __init__(self, detail: str | None, builders: list[str]):
        super().__init__(detail or "unknown TFDS builder")
        self.detail = detail
        self.builders = builders


def load_tfds(
    name: str,
    data_dir: str | None,
    image_size: int | None,
    download: bool,
    display: str,
    local_hint: str | None = None,
    stream: bool | None = None,
    cache_dir: Path | None = None,
) -> Arrays:
    """Reads the `train` and, when present, `test` splits of a TFDS builder.

    Args:
        name: the builder name (`stanford_dogs`, `emnist/balanced`, …).
        data_dir: the TFDS data_dir; None for TFDS's default.
        image_size: resize to this square size; None keeps a fixed native size, and
            resizes images of varying sizes to `DEFAULT_VARIABLE_SIZE`.
        download: let TFDS download and prepare a builder that is not prepared yet.
        display: the dataset name, for messages.
        local_hint: how to get the data locally instead, said when TFDS cannot give it.
        stream: True: through the on-disk cache (memmaps of it returned); False: into
            memory; None: the cache when the decoded images would exceed
            `cache.RAM_FRACTION` of the available memory (by the split sizes TFDS records).
        cache_dir: the cache directory; None: `cache.default_root()`.

    Raises:
        UnknownBuilder: `name` is no TFDS builder.
        UserError: the data is not prepared and cannot be, or is no image classification.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UnknownBuilder(None, tfds.list_builders(with_community_datasets=False)) from None
    except ValueError as error:  # bad builder string or unknown config
        raise UnknownBuilder(str(error).strip().splitlines()[0], []) from None
    if not builder.is_prepared():
        _prepare(builder, name, download, display, local_hint)
    info = builder.info
    image_key, label_key = (tuple(info.supervised_keys or ()) + ("image", "label"))[:2]
    features = info.features
    label_feature = features[label_key] if label_key in features else None
    if image_key not in features or not isinstance(label_feature, tfds.features.ClassLabel):
        raise UserError(
            f"{display}: not an image classification dataset (needs image and class label features)"
        )
    shape = tuple(features[image_key].shape)
    variable = len(shape) != 3 or shape[0] is None or shape[1] is None
    size = image_size or (DEFAULT_VARIABLE_SIZE if variable else None)
    channels = 1 if shape[-1] in (1, 2) else 3
    split_names = list(info.splits.keys())
    if split_names and "train" not in split_names:
        raise UserError(f"{display}: no 'train' split (splits: {', '.join(split_names)})")

    splits = ["train"] + (["test"] if not split_names or "test" in split_names else [])

    def batches(split: str):
        return _split_batches(builder, split, image_key, label_key, size, channels, variable)

    counts = [info.splits[split].num_examples if split in split_names else None for split in splits]
    known = None if None in counts else sum(counts)
    side = size or (shape[0] if not variable else None)
    decoded = known * side * side * channels if known is not None and side else None
    if cache.should_stream(decoded, stream):
        key = [builder.info.full_name, str(builder.data_dir), size, channels, splits]
        read = _cached_splits(builder, key, splits, batches, known, cache_dir, decoded)
    else:
        read = [_concatenate(builder, split, batches(split)) for split in splits]
    (x_train, y_train), (x_test, y_test) = read[0], (read[1] if len(read) > 1 else (None, None))
    resize_note = f", centre-cropped and resized to {size}" if size else ""
    return Arrays(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=list(label_feature.names),
        source=f"TFDS {builder.name} {builder.version} in {builder.data_dir}{resize_note}",
    )


def _prepare(builder, name: str, download: bool, display: str, local_hint: str | None) -> None:
    """Downloads and prepares `builder`, or says how to when it may not or cannot."""
    prepare_cmd = (
        f'on a machine with network run: python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='DIR').download_and_prepare()\", copy DIR here "
        "and pass --data-dir DIR"
    )
    if not download:
        if local_hint:
            raise UserError(
                f"{local_hint} (downloads are off: TFDS data is not in {builder.data_dir})"
            )
        raise UserError(
            f"{display}: TFDS data is not prepared in {builder.data_dir} and downloads "
            f"are off; {prepare_cmd}"
        )
    try:
        builder.download_and_prepare()
    except Exception as error:  # network, manual-download or packaging failures
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        prefix = f"{local_hint}; TFDS" if local_hint else f"{display}: TFDS"
        raise UserError(
            f"{prefix} could not download and prepare it ({reason}); {prepare_cmd}"
        ) from error


def _split_batches(builder, split, image_key, label_key, size, channels, variable):
    """(uint8 images, labels) NumPy batches of one split, preprocessed to `size` when
    given, decoded and preprocessed in parallel and prefetched."""
    autotune = tf.data.AUTOTUNE
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: (ex[image_key], ex[label_key]), num_parallel_calls=autotune)
    preprocess = lambda x, y: (preprocess_images(x, size, channels), y)
    if variable:  # ragged sizes: preprocess each image before batching
        ds = ds.map(preprocess, num_parallel_calls=autotune).batch(_BATCH)
    else:  # fixed size: batch first, then one batched preprocessing
        ds = ds.batch(_BATCH)
        if size:
            ds = ds.map(preprocess, num_parallel_calls=autotune)
    for x, y in ds.prefetch(autotune).as_numpy_iterator():
        yield x.astype(np.uint8, copy=False), y.astype(np.int64)


def _concatenate(builder, split, batches) -> tuple[np.ndarray, np.ndarray]:
    """One split's batches as arrays in memory."""
    images, labels = [], []
    for x, y in batches:
        images.append(x)
        labels.append(y)
    if not images:
        raise UserError(f"{builder.name}: split {split!r} is empty")
    return np.concatenate(images), np.concatenate(labels)


def _cached_splits(builder, key, splits, batches, rows, cache_dir, nbytes):
    """[(images, labels)] of each split from the builder's cache entry (built first when
    there is none, or always when the builder's files cannot be listed); the images are
    read-only memmap views of one file."""
    listing = _listing(str(builder.data_dir))
    entry = cache.Entry(
        Path(cache_dir) if cache_dir is not None else cache.default_root(), key, listing
    )

    def write(directory: Path) -> None:
        writer = cache.ImageWriter(directory / cache.IMAGES, rows)
        labels, counts, tail = [], [], None
        for split in splits:
            count = 0
            for x, y in batches(split):
                writer.append(x)
                labels.append(y)
                count += len(x)
                tail = x.shape[1:]
            if not count:
                raise UserError(f"{builder.name}: split {split!r} is empty")
            counts.append(count)
        writer.finish(tail)
        cache.write_labels(directory, np.concatenate(labels))
        cache.write_meta(directory, {"counts": counts})

    if not listing and entry.complete():
        import shutil

        shutil.rmtree(entry.path, ignore_errors=True)  # nothing to tell a stale entry by
    if not entry.complete():
        entry.build(write, nbytes)
    images, labels, meta = entry.read()
    ends = np.cumsum([0, *meta["counts"]])
    return [(images[a:b], labels[a:b]) for a, b in zip(ends[:-1], ends[1:], strict=True)]


def _listing(data_dir: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of the files of a TFDS data_dir; [] when it has none or
    cannot be listed."""
    try:
        names = sorted(tf.io.gfile.listdir(data_dir))
    except (tf.errors.OpError, OSError):
        return []
    listing = []
    for name in names:
        stat = tf.io.gfile.stat(f"{data_dir}/{name}")
        if not stat.is_directory:
            listing.append((name, int(stat.length), int(stat.mtime_nsec)))
    return listing
