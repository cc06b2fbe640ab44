"""Corrupt or odd files in folder:, idx: and npz: datasets: unreadable images are skipped
with one warning line and recorded, odd image modes follow the one preprocessing rule, and
broken IDX/npz files are a one-line UserError naming the file."""

from __future__ import annotations

import gzip
import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerassl.data.formats import folder
from kerassl.data.registry import load_dataset
from kerassl.errors import UserError

RNG = np.random.default_rng(0)


def _noise(mode: str, size=(16, 12)) -> Image.Image:
    """A random image of a PIL mode (every pixel differs, so crops and resizes show)."""
    if mode == "I;16":
        return Image.fromarray(RNG.integers(0, 65536, size[::-1], dtype=np.uint16))
    if mode == "P":
        image = Image.fromarray(RNG.integers(0, 4, size[::-1], dtype=np.uint8), "L").convert("P")
        image.putpalette([0, 0, 0, 200, 10, 20, 30, 250, 40, 90, 90, 240])
        return image
    channels = {"1": 1, "L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    pixels = RNG.integers(0, 256, (*size[::-1], channels), dtype=np.uint8)
    if mode == "1":
        return Image.fromarray(pixels[..., 0] > 127)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def _encoded(image: Image.Image, fmt="PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _flat_png(value: int) -> bytes:
    return _encoded(Image.new("L", (6, 6), value))


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message
    return message


# --------------------------------------------------------------------------- folder: skipping


@pytest.fixture
def photos(tmp_path) -> Path:
    """Two classes of 8 flat PNGs (cat 40 + i, dog 140 + i), a test split, and junk."""
    root = tmp_path / "photos"
    for i in range(8):
        _write(root / "cat" / f"c{i}.png", _flat_png(40 + i))
        _write(root / "dog" / f"d{i}.png", _flat_png(140 + i))
    _write(root / "test" / "cat" / "t.png", _flat_png(30))
    _write(root / "test" / "dog" / "t.png", _flat_png(130))
    truncated_png = _encoded(_noise("RGB"))
    _write(root / "cat" / "cut.png", truncated_png[: len(truncated_png) // 2])
    truncated_jpeg = _encoded(_noise("RGB"), "JPEG")
    _write(root / "dog" / "cut.jpg", truncated_jpeg[: len(truncated_jpeg) // 2])
    _write(root / "dog" / "fake.png", b"a text file renamed .png\n")
    _write(root / "dog" / "notes.txt", b"not an image")
    _write(root / "test" / "dog" / "empty.PNG", b"")
    # Ignored silently: hidden and system files everywhere, non-images at the root.
    _write(root / "cat" / ".DS_Store", b"\0\0\0\1Bud1")
    _write(root / "cat" / "._c0.png", b"\0\5\26\7AppleDouble")
    _write(root / "dog" / "Thumbs.db", b"\xd0\xcf\x11\xe0")
    _write(root / "README.md", b"# photos\n")
    return root


def test_unreadable_files_are_skipped_with_one_warning_line(photos, capsys):
    data = load_dataset(f"folder:{photos}", image_size=4)
    assert data.skipped == (
        "cat/cut.png: truncated",
        "dog/cut.jpg: truncated",
        "dog/fake.png: not an image",
        "dog/notes.txt: no image suffix",
        "test/dog/empty.PNG: not an image",
    )
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"kerassl: warning: skipped 5 unreadable files of 23 in {photos}: "
        "cat/cut.png (truncated), dog/cut.jpg (truncated), dog/fake.png (not an image), "
        "and 2 more"
    ]
    assert "5 unreadable files skipped" in data.source
    # The readable images, in order, with their labels (each image's value is its id).
    np.testing.assert_array_equal(data.y_train, [0] * 8 + [1] * 8)
    np.testing.assert_array_equal(data.x_train[:, 2, 2, 0], [*range(40, 48), *range(140, 148)])
    np.testing.assert_array_equal(data.y_test, [0, 1])
    np.testing.assert_array_equal(data.x_test[:, 2, 2, 0], [30, 130])
    assert data.image_shape == (4, 4, 1)  # the truncated RGB files do not make it colour


def test_one_skipped_file_is_named_alone(tmp_path, capsys):
    for i in range(3):
        _write(tmp_path / "a" / f"{i}.png", _flat_png(i))
    _write(tmp_path / "a" / "bad.png", b"GIF89a broken")
    data = load_dataset(f"folder:{tmp_path}", image_size=4)
    assert data.skipped == ("a/bad.png: not an image",)
    assert capsys.readouterr().err == (
        f"kerassl: warning: skipped 1 unreadable file of 4 in {tmp_path}: "
        "a/bad.png (not an image)\n"
    )
    assert len(data.x_train) + len(data.x_test) == 3


def test_broken_link_is_skipped_as_unreadable(tmp_path):
    for i in range(3):
        _write(tmp_path / "a" / f"{i}.png", _flat_png(i))
    (tmp_path / "a" / "link.png").symlink_to(tmp_path / "gone.png")
    data = load_dataset(f"folder:{tmp_path}", image_size=4)
    assert data.skipped == ("a/link.png: cannot read (No such file or directory)",)


def test_clean_folder_warns_nothing_and_skips_nothing(tmp_path, capsys):
    for i in range(3):
        _write(tmp_path / "a" / f"{i}.png", _flat_png(i))
    assert load_dataset(f"folder:{tmp_path}", image_size=4).skipped == ()
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- folder: odd modes


def _decoded_by_tensorflow(data: bytes, size: int, channels: int) -> np.ndarray:
    """What the exported model makes of the file: tf.io.decode_image + preprocess_images."""
    import tensorflow as tf

    from kerassl.data.preprocess import preprocess_images

    image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
    return preprocess_images(image, size, channels).numpy()


@pytest.mark.parametrize(
    "modes, channels",
    [(("L", "LA", "1", "I;16"), 1), (("L", "RGB", "RGBA", "P", "I;16", "LA"), 3)],
)
def test_modes_and_sizes_follow_the_serving_decode(tmp_path, monkeypatch, modes, channels):
    """Every mode, non-square and of its own size, reaches the same pixels as in serving."""
    monkeypatch.setattr(folder, "_DECODE_CHUNK", 1)  # RGB arrives after gray was stored
    encoded = []
    for i, mode in enumerate(modes):
        image = _noise(mode, size=(9 + 3 * i, 7 + 2 * i))
        options = {"transparency": 2} if mode == "P" else {}
        encoded.append(_encoded(image, **options))
        _write(tmp_path / "k" / f"{i}-{mode.replace(';', '_')}.png", encoded[-1])
    with Image.open(tmp_path / "k" / f"{modes.index('I;16')}-I_16.png") as image:
        assert image.mode == "I;16"
    data = load_dataset(f"folder:{tmp_path}", image_size=5)
    assert data.image_shape == (5, 5, channels)
    everything = np.concatenate([data.x_train, data.x_test])
    expected = np.stack([_decoded_by_tensorflow(b, 5, channels) for b in encoded])
    # The holdout shuffles the images: compare as sets of images.
    assert sorted(map(bytes, everything)) == sorted(map(bytes, expected))


def test_cmyk_jpeg_and_palette_transparency_are_rgb(tmp_path):
    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # red in ink
    _write(tmp_path / "k" / "cmyk.jpg", _encoded(cmyk, "JPEG", quality=95))
    palette = Image.new("P", (6, 8), 1)
    palette.putpalette([0, 0, 0, 20, 200, 40, 5, 5, 5])
    # Partial transparency is kept as bytes, which makes PIL warn on conversion; the loader
    # stays silent.
    _write(tmp_path / "k" / "p.png", _encoded(palette, transparency=bytes([255, 0, 128])))
    _write(tmp_path / "k" / "rgba.png", _encoded(Image.new("RGBA", (7, 7), (9, 8, 7, 0))))
    _write(tmp_path / "k" / "gray16.tif", _encoded(Image.new("I;16", (6, 6), 0x8040), "TIFF"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        data = load_dataset(f"folder:{tmp_path}", image_size=4)
    assert data.skipped == () and data.image_shape == (4, 4, 3)
    colours = {tuple(image[1, 1]) for image in np.concatenate([data.x_train, data.x_test])}
    red = [c for c in colours if c[0] > 200]
    assert len(red) == 1 and max(red[0][1:]) <= 3  # JPEG: within a few levels
    # Palette colour and RGB kept, alpha dropped (not composited); 16-bit gray → high byte.
    assert colours - set(red) == {(20, 200, 40), (9, 8, 7), (128, 128, 128)}


# --------------------------------------------------------------------------- folder: errors


def test_folder_with_nothing_readable(tmp_path):
    _write(tmp_path / "cat" / "a.png", b"text")
    _write(tmp_path / "cat" / "b.png", _encoded(_noise("RGB"))[:60])
    with pytest.raises(UserError) as error:
        load_dataset(f"folder:{tmp_path}")
    _one_line(error, f"no readable image in {tmp_path}", "cat/a.png (not an image)")
    _one_line(error, "cat/b.png (truncated)", "expected PATH/<class>/*.png|jpg")


def test_folder_without_images(tmp_path):
    _write(tmp_path / "docs" / "readme.txt", b"no images here")
    _write(tmp_path / "notes.txt", b"nor here")
    with pytest.raises(UserError) as error:
        load_dataset(f"folder:{tmp_path}")
    _one_line(error, "no class subfolders with images", str(tmp_path), "PATH/<class>/")


def test_class_without_a_readable_image(tmp_path, capsys):
    _write(tmp_path / "cat" / "a.png", _flat_png(1))
    _write(tmp_path / "dog" / "a.png", b"text")
    with pytest.raises(UserError) as error:
        load_dataset(f"folder:{tmp_path}")
    _one_line(error, f"no readable image in class folder {tmp_path / 'dog'}", "dog/a.png")
    assert capsys.readouterr().err == ""  # the error is the one line


# --------------------------------------------------------------------------- idx: errors


def _idx(array: np.ndarray, code=0x08) -> bytes:
    return (
        bytes([0, 0, code, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + (array.tobytes())
    )


def _idx_folder(folder: Path, images: bytes, labels: bytes, gz: bool) -> Path:
    suffix = ".gz" if gz else ""
    pack = gzip.compress if gz else bytes
    _write(folder / f"train-images-idx3-ubyte{suffix}", pack(images))
    _write(folder / f"train-labels-idx1-ubyte{suffix}", pack(labels))
    return folder


_IMAGES = _idx(np.zeros((5, 4, 4), np.uint8))
_LABELS = _idx(np.arange(5, dtype=np.uint8) % 2)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "images, labels, file, message",
    [
        (_IMAGES[:-7], _LABELS, "train-images", "header says shape (5, 4, 4) (80 data bytes)"),
        (b"\x00\x01" + _IMAGES[2:], _LABELS, "train-images", "magic number 0x00010803"),
        (b"PK\x03\x04" + _IMAGES[4:], _LABELS, "train-images", "not an IDX file"),
        (_LABELS, _LABELS, "train-images", "must be uint8 images [N, H, W]"),
        (_IMAGES, _LABELS[:-1], "train-labels", "the file holds 4"),
        (_IMAGES, _idx(np.zeros(4, np.uint8)), "train-labels", "has 4 labels but"),
        (_IMAGES, _idx(np.zeros(5, ">f4"), 0x0D), "train-labels", "integer class indices"),
        (
            _idx(np.zeros((0, 4, 4), np.uint8)),
            _idx(np.zeros(0, np.uint8)),
            "train-images",
            "no images",
        ),
        (_idx(np.zeros((5, 4, 4), ">i2"), 0x0B), _LABELS, "train-images", "got int16"),
    ],
)
def test_idx_errors_name_the_file(tmp_path, gz, images, labels, file, message):
    folder = _idx_folder(tmp_path / "set", images, labels, gz)
    with pytest.raises(UserError) as error:
        load_dataset(f"idx:{folder}")
    _one_line(error, str(folder), file, message)


# --------------------------------------------------------------------------- npz: errors


def _npz(path: Path, **arrays) -> Path:
    split = {
        "train_images": np.zeros((6, 4, 4), np.uint8),
        "train_labels": np.arange(6)[:, None] % 2,
        "test_images": np.zeros((2, 4, 4), np.uint8),
        "test_labels": np.array([[0], [1]]),
    }
    split.update(arrays)
    np.savez(path, **{key: value for key, value in split.items() if value is not None})
    return path


@pytest.mark.parametrize(
    "arrays, message",
    [
        (
            {"train_images": None, "x": np.zeros(1)},
            "missing train_images (keys found: test_images, test_labels, train_labels, x); "
            "expected MedMNIST keys train_images, train_labels, test_images, test_labels",
        ),
        ({"val_images": np.zeros((1, 4, 4), np.uint8)}, "missing val_labels"),
        ({"train_images": np.zeros((6, 16), np.uint8)}, "train_images must be uint8 images"),
        ({"test_images": np.zeros((2, 4, 4), np.float32)}, "got float32 (2, 4, 4)"),
        ({"test_images": np.zeros((2, 4, 4, 5), np.uint8)}, "[N, H, W, 1|3]"),
        ({"train_labels": np.arange(5)}, "train_labels has 5 labels but train_images has 6"),
        ({"train_labels": np.zeros(6, np.float32)}, "integer class indices, got float32"),
        ({"test_labels": np.array([0, -1])}, "class indices >= 0, found -1"),
        ({"test_labels": np.zeros((2, 3), int)}, "multi-label data is not supported"),
        (
            {"test_images": np.zeros((0, 4, 4), np.uint8), "test_labels": np.zeros(0, int)},
            "test_images holds no images (the split is empty)",
        ),
        ({"test_images": np.zeros((2, 5, 5), np.uint8)}, "differ in shape"),
    ],
)
def test_npz_errors_name_the_file_and_what_was_expected(tmp_path, arrays, message):
    path = _npz(tmp_path / "bloodmnist.npz", **arrays)
    with pytest.raises(UserError) as error:
        load_dataset(f"npz:{path}")
    _one_line(error, str(path), message)


def test_npz_that_is_no_zip_archive(tmp_path):
    whole = _npz(tmp_path / "whole.npz").read_bytes()
    cut = _write(tmp_path / "cut.npz", whole[: len(whole) // 2])
    array = tmp_path / "array.npz"
    np.save(array, np.zeros(3))  # np.save writes array.npz.npy
    array.write_bytes((tmp_path / "array.npz.npy").read_bytes())
    for path in (cut, array, _write(tmp_path / "empty.npz", b"")):
        with pytest.raises(UserError) as error:
            load_dataset(f"npz:{path}")
        _one_line(error, str(path), "not an .npz file", "expected np.savez arrays train_images")
