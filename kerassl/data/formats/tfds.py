"""TensorFlow Datasets image classification builders (downloaded only when allowed)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

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

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        return _split_arrays(builder, split, image_key, label_key, size, channels, variable)

    x_train, y_train = read("train")
    x_test, y_test = read("test") if not split_names or "test" in split_names else (None, None)
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


def _split_arrays(builder, split, image_key, label_key, size, channels, variable):
    """uint8 images and int64 labels of one split, preprocessed to `size` when given."""
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
    images, labels = [], []
    for x, y in ds.prefetch(autotune).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise UserError(f"{builder.name}: split {split!r} is empty")
    return np.concatenate(images).astype(np.uint8, copy=False), np.concatenate(labels).astype(
        np.int64
    )
