"""The dataset registry: a dataset name → uint8 image arrays (`ImageData`).

Accepted names (`DATASET_FORMS`): ``fashion_mnist`` (default), ``mnist``, ``digits``,
``idx:PATH``, ``folder:PATH``, ``npz:PATH``, any TFDS builder name or ``tfds:NAME``. The
registry resolves a name to a loader of `kerassl.data.formats`, names the arrays it
returns, picks the default augmentation preset, and holds out a stratified test split
when the files have none.

Nothing is downloaded except by TFDS for a TFDS name, and only when ``download=True``.
Local files are found in this order: ``data_dir``, then ``$KERASSL_DATA_DIR`` (the one
environment variable library code reads, by design), then system folders such as Debian's
``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``).

Images that must change size are centre-cropped to a square and resized by
`kerassl.data.preprocess`, the preprocessing the exported model runs too. Unreadable files
of a `folder:` dataset are skipped with one warning line and listed in `ImageData.skipped`;
corrupt IDX or npz files are a `UserError` naming the file and what was expected. A
`folder:` or TFDS dataset too large for memory is streamed from an on-disk cache of its
decoded images (`kerassl.data.cache`).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kerassl.data.formats import Arrays
from kerassl.data.presets import PRESETS
from kerassl.data.splits import stratified_holdout
from kerassl.errors import UserError

if TYPE_CHECKING:
    from kerassl.data.formats.tfds import UnknownBuilder

ENV_DATA_DIR = "KERASSL_DATA_DIR"

# Every accepted form of a dataset name → what it reads (error messages and the CLI help).
DATASET_FORMS: dict[str, str] = {
    "fashion_mnist": "the default: IDX files from --data-dir, $KERASSL_DATA_DIR or Debian's "
    "/usr/share/datasets/fashion-mnist, else TFDS",
    "mnist": "IDX files searched the same way, else TFDS",
    "digits": "scikit-learn's bundled 8x8 digits, offline",
    "idx:PATH": "a folder of MNIST-format IDX files",
    "folder:PATH": "PATH/<class>/*.png|jpg labeled, PATH/*.png or PATH/unlabeled/ unlabeled, "
    "optional PATH/test/<class>/",
    "npz:PATH": "a MedMNIST .npz, e.g. pathmnist.npz",
    "a TFDS name or tfds:NAME": "any TFDS builder such as stanford_dogs, cifar10, "
    "patch_camelyon, read from --data-dir as the TFDS data_dir",
}
# Prefix of a local form → an example, for "needs a path" messages.
_PREFIX_EXAMPLES = {
    "idx": "idx:/data/mnist",
    "folder": "folder:/data/photos",
    "npz": "npz:/data/pathmnist.npz",
    "tfds": "tfds:cifar10",
}

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# The named IDX datasets: class names, subfolders of a data dir that may hold their files,
# and system folders searched after data_dir and $KERASSL_DATA_DIR.
_IDX_CLASSES = {"fashion_mnist": FASHION_MNIST_CLASSES, "mnist": [str(i) for i in range(10)]}
_IDX_SUBFOLDERS = {"fashion_mnist": ("fashion-mnist", "fashion_mnist"), "mnist": ("mnist",)}
SYSTEM_IDX_DIRS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": (),
}

# Default augmentation preset by base dataset name; "natural" otherwise.
_PRESET_OF_DATASET = {
    **dict.fromkeys(("mnist", "digits", "emnist", "kmnist"), "digits"),
    "fashion_mnist": "fashion",
    **dict.fromkeys(("pathmnist", "patch_camelyon", "colorectal_histology"), "histology"),
}

# A dataset without a test split gets one: this fraction of each class, drawn with this seed.
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0


@dataclass
class ImageData:
    """A labeled/unlabeled training pool and a labeled test split, as uint8 arrays.

    The arrays of a streamed dataset (`kerassl.data.cache`) are read-only `np.memmap`s of
    its cache entry: index them (`x[indices]`, `x[a:b]`) rather than copy them whole.

    Attributes:
        name: the dataset name as given to `load_dataset`.
        x_train: uint8 [N, H, W, C]; the unlabeled pool for pretraining (never test).
        y_train: int64 [N]; -1 marks an unlabeled image.
        x_test: uint8 [M, H, W, C].
        y_test: int64 [M].
        class_names: one name per class index.
        preset: default augmentation preset, a key of `kerassl.data.presets.PRESETS`.
        source: human-readable origin of the arrays.
        skipped: the files the loader left out as unreadable, each as "relative/path:
            reason" (a `folder:` dataset's truncated or non-image files); () for the others.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    preset: str
    source: str = field(default="")
    skipped: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4:
                raise ValueError(
                    f"x_{split} must be uint8 [N, H, W, C]. Received: {x.dtype} {x.shape}"
                )
            if y.shape != (len(x),):
                raise ValueError(f"y_{split} must have shape ({len(x)},). Received: {y.shape}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                "train and test images differ in shape: "
                f"{self.x_train.shape} vs {self.x_test.shape}"
            )
        if self.preset not in PRESETS:
            raise ValueError(
                f"preset must be one of {tuple(PRESETS)}. Received: preset={self.preset!r}"
            )
        self.y_train = self.y_train.astype(np.int64, copy=False)
        self.y_test = self.y_test.astype(np.int64, copy=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_unlabeled(self) -> int:
        return int(np.sum(self.y_train < 0))


def load_dataset(
    name: str = "fashion_mnist",
    data_dir: str | None = None,
    image_size: int | None = None,
    download: bool = True,
    stream: bool | None = None,
    cache_dir: str | Path | None = None,
) -> ImageData:
    """Loads a dataset by name into uint8 arrays.

    A `folder:` or TFDS dataset too large for memory is streamed: decoded once into the
    on-disk cache of `kerassl.data.cache`, its arrays then read-only memmaps of it (see
    that module for how consumers read them). Other formats are read into memory.

    Args:
        name: one of the forms of `DATASET_FORMS`.
        data_dir: folder with local files (IDX files, or the TFDS data_dir). Falls back to
            ``$KERASSL_DATA_DIR``.
        image_size: resize every image to this square size; None keeps the native size
            (digits: 16, folder: 64, variable-size TFDS images: 96).
        download: let TFDS download and prepare a dataset that is not prepared yet.
        stream: `folder:` and TFDS only. True: through the on-disk cache; False: into
            memory; None: the cache when the decoded images would take more than
            `kerassl.data.cache.RAM_FRACTION` of the available memory. The arrays are
            the same either way.
        cache_dir: the cache's directory; None: ``<Keras home>/kerassl/images``.

    Returns:
        An `ImageData`.

    Raises:
        UserError: unknown name, missing or corrupt data, bad image_size.

    Example:
        >>> data = load_dataset("digits")
        >>> data.x_train.shape[1:], data.num_classes
        ((16, 16, 1), 10)
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"empty dataset name; accepted: {accepted_forms()}")
    if image_size is not None and (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size < 1
    ):
        raise UserError(f"image size must be a positive integer, got {image_size!r}")
    streaming = {"stream": stream, "cache_dir": Path(cache_dir) if cache_dir else None}
    display, arrays = _read(name.strip(), data_dir, image_size, download, streaming)
    return _image_data(display, arrays)


def default_preset(name: str) -> str:
    """The augmentation preset for a dataset name (base name of a TFDS name or file)."""
    base = name.lower().replace("-", "_")
    if base.startswith("idx:"):
        return "digits"
    if base.startswith("npz:"):
        return "histology" if "path" in Path(name[4:]).name.lower() else "natural"
    if base.startswith(("tfds:", "folder:")):
        base = base.split(":", 1)[1]
    base = base.split("/")[0].split(":")[0]
    return _PRESET_OF_DATASET.get(base, "natural")


def accepted_forms() -> str:
    """The accepted forms of a dataset name, comma-separated."""
    return ", ".join(DATASET_FORMS)


# --------------------------------------------------------------------------- resolution


def _read(name: str, data_dir: str | None, image_size: int | None, download: bool, streaming: dict):
    """The dataset's display name and the arrays of the loader its name resolves to
    (`streaming`: the `stream` and `cache_dir` arguments of the folder and TFDS loaders)."""
    # The loaders are imported when a dataset is read: they bring TensorFlow, which the
    # registry itself does not import (the command lines check names before it loads).
    from kerassl.data.formats.digits import load_digits
    from kerassl.data.formats.folder import load_folder
    from kerassl.data.formats.idx import load_idx
    from kerassl.data.formats.npz import load_npz

    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIX_EXAMPLES:
        if not rest.strip():
            raise UserError(
                f"{prefix}: needs a {'name' if prefix == 'tfds' else 'path'}, "
                f"e.g. {_PREFIX_EXAMPLES[prefix]}"
            )
        path = Path(rest).expanduser()
        if prefix == "idx":
            return name, load_idx(name, path, image_size)
        if prefix == "folder":
            return name, load_folder(name, path, image_size, **streaming)
        if prefix == "npz":
            return name, load_npz(name, path, image_size)
        return name, _load_tfds(
            rest.strip(), data_dir, image_size, download, display=name, **streaming
        )
    key = name.lower().replace("-", "_")
    if key == "digits":
        return key, load_digits(image_size)
    if key in _IDX_SUBFOLDERS:
        return key, _load_named_idx(key, data_dir, image_size, download, streaming)
    return name, _load_tfds(name, data_dir, image_size, download, display=name, **streaming)


def _load_named_idx(
    key: str, data_dir: str | None, image_size: int | None, download: bool, streaming: dict
):
    """fashion_mnist or mnist from the first folder holding its IDX files, else TFDS."""
    from kerassl.data.formats.idx import has_idx, load_idx

    candidates = _idx_candidates(key, data_dir)
    for folder in candidates:
        if has_idx(folder):
            return load_idx(key, folder, image_size, _IDX_CLASSES[key])
    searched = ", ".join(str(f) for f in candidates) or "(no --data-dir or $KERASSL_DATA_DIR)"
    ways = []
    if key == "fashion_mnist":
        ways.append(
            "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
        )
    ways.append(
        "pass --data-dir DIR with the IDX files (train-images-idx3-ubyte.gz, …) "
        "or set $KERASSL_DATA_DIR"
    )
    hint = f"{key}: no IDX files in {searched}; {', '.join(ways)}, or allow TFDS to download it"
    return _load_tfds(
        key, data_dir, image_size, download, display=key, local_hint=hint, **streaming
    )


def _idx_candidates(key: str, data_dir: str | None) -> list[Path]:
    folders = []
    for root in (d for d in (data_dir, os.environ.get(ENV_DATA_DIR)) if d):
        root = Path(root).expanduser()
        folders += [root] + [root / sub for sub in _IDX_SUBFOLDERS[key]]
    return folders + [Path(d) for d in SYSTEM_IDX_DIRS[key]]


def _load_tfds(name: str, data_dir: str | None, *args, **kwargs) -> Arrays:
    """`formats.tfds.load_tfds` (same arguments; `display` by keyword) in the data dir of
    the registry, unknown names explained."""
    from kerassl.data.formats.tfds import UnknownBuilder, load_tfds

    directory = data_dir or os.environ.get(ENV_DATA_DIR) or None
    directory = str(Path(directory).expanduser()) if directory else None
    try:
        return load_tfds(name, directory, *args, **kwargs)
    except UnknownBuilder as error:
        raise UserError(_unknown_name_message(name, kwargs["display"], error)) from None


def _unknown_name_message(name: str, display: str, error: UnknownBuilder) -> str:
    if error.detail is not None:  # a malformed builder string or an unknown config
        return (
            f"dataset {display!r}: {error.detail}{_path_hint(name)}; accepted: {accepted_forms()}"
        )
    local = [form for form in DATASET_FORMS if ":" not in form and " " not in form]
    close = difflib.get_close_matches(name.lower(), error.builders + local, n=3)
    hint = _path_hint(name) or (f" (did you mean {', '.join(close)}?)" if close else "")
    return (
        f"unknown dataset {name!r}: not a local form nor a TFDS builder{hint}; "
        f"accepted: {accepted_forms()}"
    )


def _path_hint(name: str) -> str:
    if Path(name).expanduser().exists():
        return f" (a local path: write folder:{name}, idx:{name} or npz:{name})"
    return ""


def _rows(x: np.ndarray, indices: np.ndarray, part: str) -> np.ndarray:
    """``x[indices]`` of the holdout; for a streamed (memmap) `x` a memmap of a file
    beside its cache entry's, so that the whole pool is never read into memory."""
    if isinstance(x, np.memmap):
        from kerassl.data.cache import take

        return take(x, indices, f"holdout-{HOLDOUT_FRACTION}-{HOLDOUT_SEED}-{part}")
    return x[indices]


def _image_data(name: str, arrays: Arrays) -> ImageData:
    """Names the arrays, picks their preset, and holds out a test split if they have none."""
    x_train, y_train, x_test, y_test = arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test
    source = arrays.source
    if x_test is None:
        keep, held_out = stratified_holdout(y_train, HOLDOUT_FRACTION, HOLDOUT_SEED)
        x_test, y_test = _rows(x_train, held_out, "test"), y_train[held_out]
        x_train, y_train = _rows(x_train, keep, "train"), y_train[keep]
        source += (
            f"; no test split: {HOLDOUT_FRACTION:.0%} of the labeled images held out as test "
            f"(stratified, seed {HOLDOUT_SEED})"
        )
    return ImageData(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=arrays.class_names,
        preset=default_preset(name),
        source=source,
        skipped=arrays.skipped,
    )
