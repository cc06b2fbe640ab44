"""One registry turning a dataset name into uint8 image arrays (`ImageData`).

Accepted names (see `DATASET_HELP`): ``fashion_mnist`` (default), ``mnist``, ``digits``,
``idx:PATH``, ``folder:PATH``, ``npz:PATH``, any TFDS builder name or ``tfds:NAME``.

Nothing is downloaded except by TFDS for a TFDS name, and only when ``download=True``.
Local files are found in this order: ``data_dir``, then ``$KERASSL_DATA_DIR`` (the one
environment variable library code reads, by design), then system folders such as Debian's
``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``).

Resizing rule (everywhere): when an image must become ``image_size x image_size``, a
non-square image is first centrally cropped to a square (aspect ratio preserved, borders of
the long side dropped), then resized bilinearly (antialiased when shrinking). Square images
are only resized.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerassl.errors import UserError

ENV_DATA_DIR = "KERASSL_DATA_DIR"

DATASET_HELP = (
    "dataset to load: fashion_mnist (default) or mnist (IDX files from --data-dir, "
    "$KERASSL_DATA_DIR or Debian's /usr/share/datasets/fashion-mnist, else TFDS); digits "
    "(scikit-learn's bundled 8x8 digits, offline); idx:PATH (a folder of MNIST-format IDX "
    "files); folder:PATH (PATH/<class>/*.png|jpg labeled, PATH/*.png or PATH/unlabeled/ "
    "unlabeled, optional PATH/test/<class>/); npz:PATH (MedMNIST .npz, e.g. pathmnist.npz); "
    "or any TFDS builder name such as stanford_dogs, cifar10, patch_camelyon (also tfds:NAME), "
    "read from --data-dir as the TFDS data_dir"
)

PRESETS = ("digits", "fashion", "natural", "histology")
_DIGITS_DATASETS = {"mnist", "digits", "emnist", "kmnist"}
_FASHION_DATASETS = {"fashion_mnist"}
_HISTOLOGY_DATASETS = {"pathmnist", "patch_camelyon", "colorectal_histology"}

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

# System folders searched after data_dir and $KERASSL_DATA_DIR, per IDX dataset.
SYSTEM_IDX_DIRS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": (),
}
# Subfolders of a data dir that may hold a dataset's IDX files.
_IDX_SUBFOLDERS = {
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
    "mnist": ("mnist",),
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_RESERVED_FOLDERS = {"test", "unlabeled"}
DEFAULT_FOLDER_SIZE = 64
DEFAULT_DIGITS_SIZE = 16
DEFAULT_VARIABLE_SIZE = 96
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0


@dataclass
class ImageData:
    """A labeled/unlabeled training pool and a labeled test split, as uint8 arrays.

    Attributes:
        name: the dataset name as given to `load_dataset`.
        x_train: uint8 [N, H, W, C]; the unlabeled pool for pretraining (never test).
        y_train: int64 [N]; -1 marks an unlabeled image.
        x_test: uint8 [M, H, W, C].
        y_test: int64 [M].
        class_names: one name per class index.
        preset: default augmentation preset, one of "digits", "fashion", "natural", "histology".
        source: human-readable origin of the arrays.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    preset: str
    source: str = field(default="")

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
            raise ValueError(f"preset must be one of {PRESETS}. Received: preset={self.preset!r}")
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
) -> ImageData:
    """Loads a dataset by name into uint8 arrays.

    Args:
        name: one of the forms in `DATASET_HELP`.
        data_dir: folder with local files (IDX files, or the TFDS data_dir). Falls back to
            ``$KERASSL_DATA_DIR``.
        image_size: resize every image to this square size; None keeps the native size
            (digits: 16, folder: 64, variable-size TFDS images: 96).
        download: let TFDS download and prepare a dataset that is not prepared yet.

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
        raise UserError(f"empty dataset name; accepted: {_accepted_forms()}")
    if image_size is not None and (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size < 1
    ):
        raise UserError(f"image size must be a positive integer, got {image_size!r}")
    name = name.strip()
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _EXAMPLES:
        if not rest.strip():
            raise UserError(
                f"{prefix}: needs a {'name' if prefix == 'tfds' else 'path'}, "
                f"e.g. {_EXAMPLES[prefix]}"
            )
        if prefix == "idx":
            return _load_idx_path(name, Path(rest).expanduser(), image_size)
        if prefix == "folder":
            return _load_folder(name, Path(rest).expanduser(), image_size)
        if prefix == "npz":
            return _load_npz(name, Path(rest).expanduser(), image_size)
        return _load_tfds(rest.strip(), _data_dir(data_dir), image_size, download, display=name)
    key = name.lower().replace("-", "_")
    if key == "digits":
        return _load_digits(image_size)
    if key in _IDX_SUBFOLDERS:
        return _load_idx_dataset(key, data_dir, image_size, download)
    return _load_tfds(name, _data_dir(data_dir), image_size, download, display=name)


def default_preset(name: str) -> str:
    """The augmentation preset for a dataset name (base name of a TFDS name or file)."""
    base = name.lower().replace("-", "_")
    if base.startswith(("idx:",)):
        return "digits"
    if base.startswith("npz:"):
        return "histology" if "path" in Path(name[4:]).name.lower() else "natural"
    if base.startswith(("tfds:", "folder:")):
        base = base.split(":", 1)[1]
    base = base.split("/")[0].split(":")[0]
    if base in _DIGITS_DATASETS:
        return "digits"
    if base in _FASHION_DATASETS:
        return "fashion"
    if base in _HISTOLOGY_DATASETS:
        return "histology"
    return "natural"


# --------------------------------------------------------------------------- IDX files

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
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise UserError(f"{path}: no such IDX file") from None
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


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    """``train-images`` → train-images-idx3-ubyte[.gz] or train-images.idx3-ubyte[.gz]."""
    kind = "idx3" if stem.endswith("images") else "idx1"
    for base in (f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"):
        for suffix in (".gz", ""):
            candidate = folder / (base + suffix)
            if candidate.is_file():
                return candidate
    return None


def _has_idx(folder: Path) -> bool:
    return folder.is_dir() and _find_idx_file(folder, "train-images") is not None


def _read_idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    images_path = _find_idx_file(folder, f"{prefix}-images")
    labels_path = _find_idx_file(folder, f"{prefix}-labels")
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        missing = f"{prefix}-{'images-idx3' if images_path is None else 'labels-idx1'}-ubyte[.gz]"
        raise UserError(f"{folder}: {missing} is missing (IDX images and labels come in pairs)")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise UserError(
            f"{images_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(
            f"{labels_path}: expected {len(images)} labels for {images_path.name}, "
            f"got shape {labels.shape}"
        )
    if images.ndim == 3:
        images = images[..., None]
    return images, labels.astype(np.int64)


def _read_idx_folder(
    name: str, folder: Path, image_size: int | None, class_names: list[str] | None
) -> ImageData:
    train = _read_idx_pair(folder, "train")
    if train is None:
        raise UserError(f"{name}: no train-images-idx3-ubyte[.gz] in {folder}")
    x_train, y_train = train
    test = _read_idx_pair(folder, "t10k")
    if test is None:
        train_idx, test_idx = stratified_holdout(y_train, HOLDOUT_FRACTION, HOLDOUT_SEED)
        x_test, y_test = x_train[test_idx], y_train[test_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
        note = f", no t10k files: {HOLDOUT_FRACTION:.0%} of train held out as test"
    else:
        x_test, y_test = test
        note = ""
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(
            f"{folder}: train images {x_train.shape[1:]} and t10k images {x_test.shape[1:]} differ"
        )
    num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    if class_names is None:
        class_names = _read_classes_txt(folder) or [str(i) for i in range(num_classes)]
    if len(class_names) < num_classes:
        raise UserError(
            f"{name}: labels go up to {num_classes - 1} but only {len(class_names)} "
            "class names are known (classes.txt)"
        )
    return ImageData(
        name=name,
        x_train=resize_images(x_train, image_size),
        y_train=y_train,
        x_test=resize_images(x_test, image_size),
        y_test=y_test,
        class_names=list(class_names),
        preset=default_preset(name),
        source=f"{folder} (IDX{note})",
    )


def _read_classes_txt(folder: Path) -> list[str] | None:
    path = folder / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return names or None


def _load_idx_path(name: str, folder: Path, image_size: int | None) -> ImageData:
    if not folder.is_dir():
        raise UserError(
            f"{name}: no such directory {folder}; pass idx:PATH with a folder of IDX files"
        )
    return _read_idx_folder(name, folder, image_size, None)


def _idx_candidates(key: str, data_dir: str | None) -> list[Path]:
    roots = [d for d in (data_dir, os.environ.get(ENV_DATA_DIR)) if d]
    folders = []
    for root in roots:
        root = Path(root).expanduser()
        folders.append(root)
        folders += [root / sub for sub in _IDX_SUBFOLDERS[key]]
    folders += [Path(d) for d in SYSTEM_IDX_DIRS[key]]
    return folders


def _load_idx_dataset(
    key: str, data_dir: str | None, image_size: int | None, download: bool
) -> ImageData:
    candidates = _idx_candidates(key, data_dir)
    for folder in candidates:
        if _has_idx(folder):
            names = FASHION_MNIST_CLASSES if key == "fashion_mnist" else [str(i) for i in range(10)]
            return _read_idx_folder(key, folder, image_size, names)
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
    return _load_tfds(key, _data_dir(data_dir), image_size, download, display=key, local_hint=hint)


# --------------------------------------------------------------------------- digits


def _load_digits(image_size: int | None) -> ImageData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 intensities → 0..255
    x = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int64)
    train_idx, test_idx = stratified_holdout(y, HOLDOUT_FRACTION, HOLDOUT_SEED)
    size = image_size or DEFAULT_DIGITS_SIZE
    return ImageData(
        name="digits",
        x_train=resize_images(x[train_idx], size),
        y_train=y[train_idx],
        x_test=resize_images(x[test_idx], size),
        y_test=y[test_idx],
        class_names=[str(i) for i in range(10)],
        preset="digits",
        source=(
            f"scikit-learn load_digits (8x8, {HOLDOUT_FRACTION:.0%} stratified test, "
            f"seed {HOLDOUT_SEED})"
        ),
    )


# --------------------------------------------------------------------------- image folder


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )


def _class_folders(folder: Path, reserved: set[str]) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name not in reserved and not p.name.startswith(".")
    )


def _decode_image(path: Path, size: int) -> np.ndarray:
    """PIL decode → grayscale [S, S] or RGB [S, S, 3] uint8, centre-cropped and resized."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            gray = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            image = image.convert("L" if gray else "RGB")
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.resize(
                (size, size), Image.BILINEAR, box=(left, top, left + side, top + side)
            )
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{path}: cannot decode image ({error})") from None


def _stack_images(images: list[np.ndarray], rgb: bool, size: int) -> np.ndarray:
    channels = 3 if rgb else 1
    out = np.empty((len(images), size, size, channels), np.uint8)
    for i, image in enumerate(images):
        out[i] = image[..., None] if image.ndim == 2 else image
    return out


def _load_folder(name: str, root: Path, image_size: int | None) -> ImageData:
    if not root.is_dir():
        raise UserError(
            f"{name}: no such directory {root}; pass folder:PATH with PATH/<class>/*.png"
        )
    size = image_size or DEFAULT_FOLDER_SIZE
    class_dirs = [d for d in _class_folders(root, _RESERVED_FOLDERS) if _image_files(d)]
    if not class_dirs:
        raise UserError(
            f"{name}: no class subfolders with images in {root}; expected PATH/<class>/*.png|jpg "
            "(and optionally PATH/unlabeled/, PATH/test/<class>/)"
        )
    class_names = [d.name for d in class_dirs]
    files, labels = [], []
    for label, folder in enumerate(class_dirs):
        paths = _image_files(folder)
        files += paths
        labels += [label] * len(paths)
    unlabeled = _image_files(root) + _image_files(root / "unlabeled")
    files += unlabeled
    labels += [-1] * len(unlabeled)
    test_root = root / "test"
    test_files, test_labels = [], []
    if test_root.is_dir():
        for folder in _class_folders(test_root, set()):
            paths = _image_files(folder)
            if paths and folder.name not in class_names:
                raise UserError(
                    f"{name}: test class {folder.name!r} has no training folder; "
                    f"classes: {', '.join(class_names)}"
                )
            test_files += paths
            test_labels += [class_names.index(folder.name)] * len(paths)
    decoded = [_decode_image(p, size) for p in files + test_files]
    rgb = any(image.ndim == 3 for image in decoded)
    x_all = _stack_images(decoded, rgb, size)
    x, y = x_all[: len(files)], np.asarray(labels, np.int64)
    if test_files:
        x_test, y_test = x_all[len(files) :], np.asarray(test_labels, np.int64)
        split_note = f"test from {test_root}"
    else:
        train_idx, test_idx = stratified_holdout(y, HOLDOUT_FRACTION, HOLDOUT_SEED)
        x_test, y_test, x, y = x[test_idx], y[test_idx], x[train_idx], y[train_idx]
        split_note = (
            f"{HOLDOUT_FRACTION:.0%} of labeled images held out as test, seed {HOLDOUT_SEED}"
        )
    return ImageData(
        name=name,
        x_train=x,
        y_train=y,
        x_test=x_test,
        y_test=y_test,
        class_names=class_names,
        preset=default_preset(name),
        source=f"{root} (image folder, {len(unlabeled)} unlabeled, {split_note})",
    )


# --------------------------------------------------------------------------- MedMNIST npz


def _load_npz(name: str, path: Path, image_size: int | None) -> ImageData:
    if not path.is_file():
        raise UserError(
            f"{name}: no such file {path}; pass npz:PATH to a MedMNIST .npz (e.g. pathmnist.npz)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zlib.error) as error:
        raise UserError(f"{path}: cannot read .npz ({error})") from None
    required = ["train_images", "train_labels", "test_images", "test_labels"]
    missing = [key for key in required if key not in arrays]
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
    num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    class_names = _read_classes_txt(path.parent) or [str(i) for i in range(num_classes)]
    return ImageData(
        name=name,
        x_train=resize_images(x_train, image_size),
        y_train=y_train,
        x_test=resize_images(x_test, image_size),
        y_test=y_test,
        class_names=class_names,
        preset=default_preset(name),
        source=f"{path} (MedMNIST npz, val merged into train)",
    )


# --------------------------------------------------------------------------- TFDS


def _load_tfds(
    name: str,
    data_dir: str | None,
    image_size: int | None,
    download: bool,
    display: str,
    local_hint: str | None = None,
) -> ImageData:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(_unknown_name_message(name, tfds)) from None
    except ValueError as error:  # bad builder string or unknown config
        first = str(error).strip().splitlines()[0]
        raise UserError(
            f"dataset {display!r}: {first}{_path_hint(name)}; accepted: {_accepted_forms()}"
        ) from None
    prepare_cmd = (
        f'on a machine with network run: python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='DIR').download_and_prepare()\", copy DIR here "
        "and pass --data-dir DIR"
    )
    if not builder.is_prepared():
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
    split_names = list(info.splits.keys())
    if split_names and "train" not in split_names:
        raise UserError(f"{display}: no 'train' split (splits: {', '.join(split_names)})")
    x_train, y_train = _tfds_arrays(builder, "train", image_key, label_key, size, variable)
    if not split_names or "test" in split_names:
        x_test, y_test = _tfds_arrays(builder, "test", image_key, label_key, size, variable)
        split_note = ""
    else:
        train_idx, test_idx = stratified_holdout(y_train, HOLDOUT_FRACTION, HOLDOUT_SEED)
        x_test, y_test = x_train[test_idx], y_train[test_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
        split_note = f", no test split: {HOLDOUT_FRACTION:.0%} of train held out"
    resize_note = f", centre-cropped and resized to {size}" if size else ""
    return ImageData(
        name=display,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=list(label_feature.names),
        preset=default_preset(name),
        source=(
            f"TFDS {builder.name} {builder.version} in {builder.data_dir}{split_note}{resize_note}"
        ),
    )


def _tfds_arrays(builder, split, image_key, label_key, size, variable):
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: (ex[image_key], ex[label_key]), num_parallel_calls=autotune)
    resize = lambda x, y: (_crop_resize_tf(x, size), y)
    if variable:  # ragged sizes: resize each image before batching
        ds = ds.map(resize, num_parallel_calls=autotune).batch(512)
    else:  # fixed size: batch first, then one batched resize
        ds = ds.batch(512)
        if size:
            ds = ds.map(resize, num_parallel_calls=autotune)
    images, labels = [], []
    for x, y in ds.prefetch(autotune).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise UserError(f"{builder.name}: split {split!r} is empty")
    return np.concatenate(images).astype(np.uint8, copy=False), np.concatenate(labels).astype(
        np.int64
    )


def _unknown_name_message(name: str, tfds) -> str:
    import difflib

    builders = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name.lower(), builders + ["fashion_mnist", "digits"], n=3)
    hint = _path_hint(name) or (f" (did you mean {', '.join(close)}?)" if close else "")
    return (
        f"unknown dataset {name!r}: not a local form nor a TFDS builder{hint}; "
        f"accepted: {_accepted_forms()}"
    )


def _path_hint(name: str) -> str:
    if Path(name).expanduser().exists():
        return f" (a local path: write folder:{name}, idx:{name} or npz:{name})"
    return ""


def _accepted_forms() -> str:
    return (
        "fashion_mnist, mnist, digits, idx:PATH, folder:PATH, npz:PATH, "
        "a TFDS name (stanford_dogs, cifar10, …) or tfds:NAME"
    )


_EXAMPLES = {
    "idx": "idx:/data/mnist",
    "folder": "folder:/data/photos",
    "npz": "npz:/data/pathmnist.npz",
    "tfds": "tfds:cifar10",
}


# --------------------------------------------------------------------------- helpers


def _data_dir(data_dir: str | None) -> str | None:
    directory = data_dir or os.environ.get(ENV_DATA_DIR) or None
    return str(Path(directory).expanduser()) if directory else None


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (keep, held_out), holding out ``fraction`` of each labeled class.

    A class with n >= 2 examples gives round(fraction * n) clipped to [1, n - 1]; a class
    with one example keeps it. Unlabeled examples (y < 0) always stay in ``keep``. Both
    index arrays are sorted; the split depends only on ``y``, ``fraction`` and ``seed``.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(y[y >= 0]):
        members = np.flatnonzero(y == label)
        if len(members) < 2:
            continue
        count = int(np.clip(np.floor(fraction * len(members) + 0.5), 1, len(members) - 1))
        held.append(rng.choice(members, count, replace=False))
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(y)), held_out)
    return keep.astype(np.int64), held_out.astype(np.int64)


def _crop_resize_tf(images, size: int, antialias: bool | None = None):
    """Centre square crop + bilinear resize of [H, W, C] or [N, H, W, C] uint8 images.

    Antialiasing (needed when shrinking, and 15x slower) is applied only when the square is
    larger than ``size``; ``antialias=None`` decides in-graph for variable-size images.
    """
    import tensorflow as tf

    shape = tf.shape(images)
    height, width = shape[-3], shape[-2]
    side = tf.minimum(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = images[..., top : top + side, left : left + side, :]
    resize = lambda aa: tf.image.resize(square, (size, size), method="bilinear", antialias=aa)
    if antialias is None:
        resized = tf.cond(side > size, lambda: resize(True), lambda: resize(False))
    else:
        resized = resize(antialias)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def resize_images(x: np.ndarray, image_size: int | None, chunk: int = 4096) -> np.ndarray:
    """Returns uint8 images [N, S, S, C], centre-cropped to a square first if needed.

    No-op when ``image_size`` is None or already the images' size.
    """
    if image_size is None or x.shape[1:3] == (image_size, image_size):
        return x
    import tensorflow as tf

    shrink = min(x.shape[1:3]) > image_size
    out = np.empty((len(x), image_size, image_size, x.shape[-1]), np.uint8)
    for start in range(0, len(x), chunk):
        batch = tf.constant(x[start : start + chunk])
        out[start : start + chunk] = _crop_resize_tf(batch, image_size, shrink).numpy()
    return out
