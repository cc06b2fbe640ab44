"""Dataset registry and format loaders: IDX reader, local sources, TFDS through mock data,
user errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerassl.data import registry
from kerassl.data.formats.idx import read_idx
from kerassl.data.registry import (
    DATASET_FORMS,
    FASHION_MNIST_CLASSES,
    ImageData,
    default_preset,
    load_dataset,
)
from kerassl.errors import UserError

_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i2"): 0x0B, np.dtype(">f4"): 0x0D}


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """Independent transcription of the IDX format (LeCun et al., MNIST page)."""
    array = np.asarray(array)
    header = bytes([0, 0, _TYPE_CODES[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_idx_set(folder: Path, n_train=12, n_test=4, size=6, value=None, test=True, gz=True):
    """A tiny MNIST-style folder; image i (label i % 3) is filled with `value` or 3 * i + i % 3,
    a unique id per image."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    splits = [("train", n_train)] + ([("t10k", n_test)] if test else [])
    for prefix, n in splits:
        labels = (np.arange(n) % 3).astype(np.uint8)
        fill = 3 * np.arange(n) + labels if value is None else np.full(n, value)
        images = np.broadcast_to(fill[:, None, None], (n, size, size)).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return folder


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_DATA_DIR, raising=False)
    return monkeypatch


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / "x-idx3-ubyte", images, compress)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, images)
    out[0, 0, 0] = 7  # writable copy, not a view of the file bytes


def test_read_idx_big_endian_types(tmp_path):
    values = np.array([[-2, 258], [32767, -32768]], dtype=">i2")
    out = read_idx(write_idx(tmp_path / "s", values, False))
    assert out.dtype.byteorder in ("=", "|", "<" if np.little_endian else ">")
    np.testing.assert_array_equal(out, [[-2, 258], [32767, -32768]])
    floats = np.array([1.5, -0.25, 3e8], dtype=">f4")
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f", floats, True)), floats)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x08\x03\x00\x00", "not an IDX file"),  # magic must start 00 00
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "not an IDX file"),  # 0x07 is no type
        (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "header says shape (5,)"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "the file holds 2"),
        (b"", "not an IDX file"),
    ],
)
def test_read_idx_corrupt(tmp_path, payload, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(UserError, match="bad-idx1-ubyte") as info:
        read_idx(path)
    assert message in str(info.value)


def test_read_idx_truncated_gzip(tmp_path):
    good = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x40" + bytes(64))
    path = tmp_path / "t.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="corrupt gzip"):
        read_idx(path)


# --------------------------------------------------------------------------- IDX datasets


def test_fashion_mnist_from_debian_package(no_env):
    data = load_dataset("fashion_mnist")
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    # Fashion-MNIST is balanced: 6000 / 1000 images per class.
    np.testing.assert_array_equal(np.bincount(data.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(data.y_test), [1000] * 10)
    assert data.class_names == FASHION_MNIST_CLASSES and data.class_names[9] == "Ankle boot"
    assert data.preset == "fashion" and "fashion-mnist" in data.source
    assert data.num_classes == 10 and data.image_shape == (28, 28, 1)
    assert data.x_train.max() == 255 and data.x_train.min() == 0


def test_idx_search_order(tmp_path, no_env):
    given = write_idx_set(tmp_path / "given", value=10)
    env = write_idx_set(tmp_path / "env", value=200)
    system = write_idx_set(tmp_path / "system", value=99)
    no_env.setitem(registry.SYSTEM_IDX_DIRS, "fashion_mnist", (str(system),))
    no_env.setenv(registry.ENV_DATA_DIR, str(env))
    assert load_dataset("fashion_mnist", data_dir=str(given)).x_train.max() == 10
    assert load_dataset("fashion_mnist").x_train.max() == 200
    empty = tmp_path / "empty"
    empty.mkdir()
    no_env.setenv(registry.ENV_DATA_DIR, str(empty))
    data = load_dataset("fashion_mnist", data_dir=str(empty))
    assert data.x_train.max() == 99 and str(system) in data.source


def test_idx_subfolder_named_like_dataset(tmp_path, no_env):
    write_idx_set(tmp_path / "fashion-mnist", value=33)
    write_idx_set(tmp_path / "mnist", value=44)
    no_env.setenv(registry.ENV_DATA_DIR, str(tmp_path))
    fashion = load_dataset("fashion_mnist")
    mnist = load_dataset("mnist")
    assert fashion.x_train.max() == 33 and mnist.x_train.max() == 44
    assert mnist.class_names == [str(i) for i in range(10)] and mnist.preset == "digits"
    assert mnist.x_train.shape == (12, 6, 6, 1) and mnist.x_test.shape == (4, 6, 6, 1)


def test_idx_path_raw_files_classes_txt_and_resize(tmp_path):
    folder = write_idx_set(tmp_path / "emnist", gz=False)
    (folder / "classes.txt").write_text("a\nb\nc\n")
    data = load_dataset(f"idx:{folder}", image_size=10)
    assert data.class_names == ["a", "b", "c"] and data.preset == "digits"
    assert data.x_train.shape == (12, 10, 10, 1)
    # Constant images stay exactly constant through the bilinear resize.
    expected = 3 * np.arange(12) + np.arange(12) % 3
    np.testing.assert_array_equal(data.x_train[:, 4, 7, 0], expected)
    np.testing.assert_array_equal(data.y_train, np.arange(12) % 3)


def test_idx_path_without_test_files_holds_out(tmp_path):
    folder = write_idx_set(tmp_path / "only_train", n_train=30, test=False)
    data = load_dataset(f"idx:{folder}")
    assert len(data.x_train) == 24 and len(data.x_test) == 6
    np.testing.assert_array_equal(np.bincount(data.y_test), [2, 2, 2])
    train_values = set(data.x_train[:, 0, 0, 0].tolist())
    assert train_values.isdisjoint(data.x_test[:, 0, 0, 0].tolist())  # values are unique ids


def test_idx_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_dataset(f"idx:{tmp_path / 'nope'}")
    with pytest.raises(UserError, match="needs a path"):
        load_dataset("idx:")
    folder = write_idx_set(tmp_path / "pairless")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        load_dataset(f"idx:{folder}")


def test_fashion_mnist_missing_offline_says_how_to_get_it(tmp_path, no_env):
    no_env.setitem(registry.SYSTEM_IDX_DIRS, "fashion_mnist", ())
    with pytest.raises(UserError) as info:
        load_dataset("fashion_mnist", data_dir=str(tmp_path), download=False)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    for hint in ("dataset-fashion-mnist", "--data-dir", "TFDS"):
        assert hint in message


def test_tfds_not_prepared_offline(tmp_path):
    with pytest.raises(UserError) as info:
        load_dataset("stanford_dogs", data_dir=str(tmp_path), download=False)
    message = str(info.value)
    assert "not prepared" in message and "download_and_prepare" in message
    assert "--data-dir" in message and "\n" not in message


def test_unknown_names():
    with pytest.raises(UserError, match="did you mean stanford_dogs") as info:
        load_dataset("stanford_dog")
    assert all(form in str(info.value) for form in DATASET_FORMS)  # the one list of forms
    with pytest.raises(UserError, match="accepted"):
        load_dataset("not a name!")
    with pytest.raises(UserError, match="accepted"):
        load_dataset("tfds:no_such_dataset_xyz")


def test_local_path_without_prefix_gets_a_hint(tmp_path):
    with pytest.raises(UserError, match=f"folder:{tmp_path}"):
        load_dataset(str(tmp_path))


def test_bad_image_size():
    with pytest.raises(UserError, match="image size"):
        load_dataset("digits", image_size=0)


# --------------------------------------------------------------------------- digits


def test_digits():
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    assert data.x_train.shape == (1438, 16, 16, 1) and data.x_test.shape == (359, 16, 16, 1)
    assert data.preset == "digits" and data.class_names == [str(i) for i in range(10)]
    counts = np.bincount(load_digits().target)
    test_counts = np.bincount(data.y_test)
    np.testing.assert_array_equal(test_counts, np.floor(0.2 * counts + 0.5))
    native = load_dataset("digits", image_size=8)
    # 0..16 → 0..255 exactly, and the same fixed split every time.
    images = load_digits().images
    expected = {tuple(np.round(im * 255 / 16).astype(np.uint8).ravel()) for im in images}
    got = {tuple(im.ravel()) for im in native.x_train} | {tuple(im.ravel()) for im in native.x_test}
    assert got <= expected
    np.testing.assert_array_equal(native.y_test, load_dataset("digits", image_size=8).y_test)


# --------------------------------------------------------------------------- folder


def _png(path: Path, value, size=(10, 6), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_folder_labeled_unlabeled_and_test(tmp_path):
    root = tmp_path / "photos"
    for i in range(3):
        _png(root / "cat" / f"c{i}.png", 50)
        _png(root / "dog" / f"d{i}.jpg", 150)
    _png(root / "u0.png", 7)
    _png(root / "u1.png", 7)
    _png(root / "unlabeled" / "u2.png", 7)
    _png(root / "test" / "cat" / "t0.png", 50)
    _png(root / "test" / "dog" / "t1.png", 150)
    (root / "notes.txt").write_text("not an image")
    data = load_dataset(f"folder:{root}", image_size=8)
    assert data.class_names == ["cat", "dog"] and data.preset == "natural"
    assert data.x_train.shape == (9, 8, 8, 1) and data.x_test.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(data.y_train, [0, 0, 0, 1, 1, 1, -1, -1, -1])
    np.testing.assert_array_equal(data.y_test, [0, 1])
    assert data.num_unlabeled == 3
    # Pixel values follow the labels (JPEG of a flat image stays within 1 level).
    np.testing.assert_allclose(data.x_train[:, 4, 4, 0], [50] * 3 + [150] * 3 + [7] * 3, atol=1)


def test_folder_rgb_centre_crop_and_holdout(tmp_path):
    root = tmp_path / "colour"
    for label, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (root / f"k{label}").mkdir(parents=True)
        for i in range(5):
            image = Image.new("RGB", (12, 4), (0, 255, 0))  # wide: green borders
            image.paste(colour, (4, 0, 8, 4))  # the centre 4x4 square carries the class
            image.save(root / f"k{label}" / f"{i}.png")
    _png(root / "k0" / "gray.png", 128, size=(4, 4))  # one grayscale image → stored as RGB
    data = load_dataset(f"folder:{root}", image_size=4)
    assert data.x_train.shape[1:] == (4, 4, 3)
    # No test folder: 20 % of each class held out (k0 has 6 images → 1, k1 has 5 → 1).
    np.testing.assert_array_equal(np.bincount(data.y_test), [1, 1])
    assert len(data.x_train) == 9
    everything = np.concatenate([data.x_train, data.x_test])
    labels = np.concatenate([data.y_train, data.y_test])
    reds = everything[(labels == 0) & (everything[:, 0, 0, 1] == 0)]
    assert len(reds) == 5 and np.all(reds[..., 0] == 255) and np.all(reds[..., 2] == 0)
    blues = everything[labels == 1]
    assert np.all(blues[..., 2] == 255) and np.all(blues[..., 1] == 0)  # borders cropped away
    grays = everything[(labels == 0) & (everything[:, 0, 0, 1] == 128)]
    assert len(grays) == 1 and np.all(grays == 128)


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="no class subfolders"):
        load_dataset(f"folder:{tmp_path}")
    _png(tmp_path / "a" / "0.png", 1)
    _png(tmp_path / "test" / "b" / "0.png", 1)
    with pytest.raises(UserError, match="test class 'b'"):
        load_dataset(f"folder:{tmp_path}")


# --------------------------------------------------------------------------- npz


def test_npz_medmnist(tmp_path):
    rng = np.random.default_rng(0)

    def part(n):
        return rng.integers(0, 256, (n, 7, 7, 3), dtype=np.uint8), (np.arange(n) % 3)[:, None]

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = part(6), part(3), part(4)
    path = tmp_path / "pathmnist_tiny.npz"
    np.savez(path, train_images=x_tr, train_labels=y_tr, val_images=x_va, val_labels=y_va,
             test_images=x_te, test_labels=y_te)  # fmt: skip
    data = load_dataset(f"npz:{path}")
    assert data.preset == "histology" and data.class_names == ["0", "1", "2"]
    np.testing.assert_array_equal(data.x_train, np.concatenate([x_tr, x_va]))
    np.testing.assert_array_equal(data.y_train, np.concatenate([y_tr, y_va])[:, 0])
    np.testing.assert_array_equal(data.x_test, x_te)
    assert load_dataset(f"npz:{path}", image_size=14).x_train.shape == (9, 14, 14, 3)
    other = tmp_path / "dermamnist.npz"
    np.savez(other, train_images=x_tr[..., 0], train_labels=y_tr, test_images=x_te[..., 0],
             test_labels=y_te)  # fmt: skip
    gray = load_dataset(f"npz:{other}")
    assert gray.preset == "natural" and gray.x_train.shape == (6, 7, 7, 1)
    np.savez(other, train_images=x_tr, train_labels=y_tr)
    with pytest.raises(UserError, match="test_images"):
        load_dataset(f"npz:{other}")
    with pytest.raises(UserError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")


# --------------------------------------------------------------------------- TFDS (mocked)


def test_stanford_dogs_through_tfds_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=6):
        data = load_dataset("stanford_dogs", image_size=32)
        fixed = load_dataset("tfds:cifar10")
    assert data.x_train.shape == (6, 32, 32, 3) and data.x_test.shape == (6, 32, 32, 3)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    assert len(data.class_names) == 120 and data.num_classes == 120
    assert data.preset == "natural" and "stanford_dogs" in data.source
    assert np.all((data.y_train >= 0) & (data.y_train < 120))
    assert fixed.x_train.shape == (6, 32, 32, 3) and fixed.name == "tfds:cifar10"  # native size


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    "name, preset",
    [
        ("mnist", "digits"),
        ("emnist/balanced", "digits"),
        ("tfds:kmnist", "digits"),
        ("idx:/data/x", "digits"),
        ("patch_camelyon", "histology"),
        ("colorectal_histology", "histology"),
        ("npz:/d/pathmnist.npz", "histology"),
        ("npz:/d/bloodmnist.npz", "natural"),
        ("stanford_dogs", "natural"),
        ("folder:/photos", "natural"),
    ],
)
def test_default_preset(name, preset):
    assert default_preset(name) == preset


def test_image_data_validates_arrays():
    x = np.zeros((2, 4, 4, 1), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ImageData("t", x.astype(np.float32), np.zeros(2), x, np.zeros(2), ["a"], "digits")
    with pytest.raises(ValueError, match="preset"):
        ImageData("t", x, np.zeros(2), x, np.zeros(2), ["a"], "cartoon")
