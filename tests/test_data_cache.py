"""The on-disk image cache (`kerassl.data.cache`): streamed `folder:` and TFDS datasets equal
the in-memory ones exactly, a second load decodes nothing, an interrupted build leaves no
complete-looking entry, changed files invalidate it, and the pretraining pipeline reads the
same batches in the same order from a memmap as from memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerassl.data import cache, pipeline
from kerassl.data.formats import folder
from kerassl.data.registry import load_dataset

RNG = np.random.default_rng(0)


def _image(path: Path, mode: str = "RGB") -> None:
    """A random-texture image of random size (16-28 px), PNG or JPEG by suffix."""
    height, width = RNG.integers(16, 29, 2)
    pixels = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(
        path, **({"quality": 90} if path.suffix == ".jpg" else {})
    )


def _folder(root: Path, per_class: int = 6, test: bool = True, mode: str = "RGB") -> Path:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _image(root / name / f"{i}.{'jpg' if i % 2 else 'png'}", mode)
        if test:
            (root / "test" / name).mkdir(parents=True)
            _image(root / "test" / name / "t.png", mode)
    (root / "unlabeled").mkdir()
    _image(root / "unlabeled" / "u.jpg", mode)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def _same(a, b) -> None:
    for split in ("x_train", "y_train", "x_test", "y_test"):
        left, right = getattr(a, split), getattr(b, split)
        assert left.dtype == right.dtype and np.array_equal(left, right), split
    assert a.class_names == b.class_names and a.skipped == b.skipped and a.source == b.source


@pytest.fixture
def decodes(monkeypatch):
    """The number of image files decoded so far."""
    count = [0]
    decode = folder._decode

    def counted(path):
        count[0] += 1
        return decode(path)

    monkeypatch.setattr(folder, "_decode", counted)
    return count


def _entries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if (p / cache.META).is_file()] if root.is_dir() else []


@pytest.mark.parametrize("test, mode", [(True, "RGB"), (False, "L")])
def test_folder_cache_equals_memory_and_second_load_decodes_nothing(tmp_path, decodes, test, mode):
    name = f"folder:{_folder(tmp_path / 'photos', test=test, mode=mode)}"
    store = tmp_path / "cache"
    memory = load_dataset(name, image_size=20, stream=False)
    built = load_dataset(name, image_size=20, stream=True, cache_dir=store)
    assert decodes[0] == 2 * (16 if test else 14)  # every file, once per load
    again = load_dataset(name, image_size=20, stream=True, cache_dir=store)
    assert decodes[0] == 2 * (16 if test else 14)  # read from the cache: nothing decoded
    for streamed in (built, again):
        _same(memory, streamed)
        assert isinstance(streamed.x_train, np.memmap) and isinstance(streamed.x_test, np.memmap)
    assert memory.image_shape == (20, 20, 3 if mode == "RGB" else 1)
    assert memory.skipped == ("cat/broken.png: not an image",)
    assert len(_entries(store)) == 1


def test_colour_header_on_an_unreadable_file_keeps_a_gray_dataset_gray(tmp_path):
    root = _folder(tmp_path / "gray", per_class=2, test=False, mode="L")
    buffer = tmp_path / "colour.png"
    _image(buffer, "RGB")
    (root / "dog" / "truncated.png").write_bytes(buffer.read_bytes()[:60])  # header only
    memory = load_dataset(f"folder:{root}", image_size=16, stream=False)
    streamed = load_dataset(f"folder:{root}", image_size=16, stream=True, cache_dir=tmp_path / "c")
    _same(memory, streamed)
    assert streamed.image_shape == (16, 16, 1)


def test_interrupted_build_leaves_no_complete_entry(tmp_path, decodes, monkeypatch):
    name = f"folder:{_folder(tmp_path / 'photos')}"
    store = tmp_path / "cache"
    resize = folder.resize_images

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the build

    monkeypatch.setattr(folder, "resize_images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(name, image_size=16, stream=True, cache_dir=store)
    assert _entries(store) == [] and list(store.iterdir()) == []
    monkeypatch.setattr(folder, "resize_images", resize)

    # A killed build (no chance to clean up): its temporary directory, half written.
    first = load_dataset(name, image_size=16, stream=True, cache_dir=store)
    (entry,) = _entries(store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = store / f".tmp-{entry.name}-{cache._host()}-{dead.pid}-0000abcd"
    elsewhere = store / f".tmp-{entry.name}-otherhost-{dead.pid}-0000abcd"
    elsewhere.mkdir()  # another host's build in progress (a cluster sharing the cache)
    os.rename(entry, leftover)
    (leftover / cache.META).unlink()
    del first
    count = decodes[0]
    rebuilt = load_dataset(name, image_size=16, stream=True, cache_dir=store)
    assert decodes[0] > count  # the leftover was not taken for an entry
    assert not leftover.exists() and elsewhere.exists() and len(_entries(store)) == 1
    _same(load_dataset(name, image_size=16, stream=False), rebuilt)


def test_changed_files_invalidate_the_cache(tmp_path, decodes):
    root = _folder(tmp_path / "photos")
    name, store = f"folder:{root}", tmp_path / "cache"
    before = load_dataset(name, image_size=16, stream=True, cache_dir=store)
    old = np.array(before.x_train)
    _image(root / "cat" / "0.png")  # new pixels
    os.utime(root / "cat" / "0.png", ns=(1, 1))  # and an mtime of its own
    count = decodes[0]
    after = load_dataset(name, image_size=16, stream=True, cache_dir=store)
    assert decodes[0] > count and not np.array_equal(old, np.asarray(after.x_train))
    _same(load_dataset(name, image_size=16, stream=False), after)
    (root / "dog" / "5.jpg").unlink()  # a removed file
    fewer = load_dataset(name, image_size=16, stream=True, cache_dir=store)
    assert len(fewer.y_train) + len(fewer.y_test) == len(after.y_train) + len(after.y_test) - 1
    assert len(_entries(store)) == 1  # the entries of older contents are removed


def test_auto_streams_above_the_memory_fraction(tmp_path, monkeypatch):
    name, store = f"folder:{_folder(tmp_path / 'photos', per_class=2)}", tmp_path / "cache"
    assert not isinstance(load_dataset(name, image_size=16, cache_dir=store).x_train, np.memmap)
    assert not store.exists()
    monkeypatch.setattr(cache, "available_memory", lambda: 1000)
    assert isinstance(load_dataset(name, image_size=16, cache_dir=store).x_train, np.memmap)


def test_pretraining_batches_from_a_memmap_equal_those_from_memory(tmp_path):
    x = RNG.integers(0, 256, (26, 5, 5, 3), dtype=np.uint8)
    y = RNG.integers(0, 3, 26)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")

    def batches(ds):
        return list(ds.as_numpy_iterator())

    for kwargs in ({"epochs": (0, 3)}, {"epochs": (1, 3), "skip": 2, "steps_per_epoch": 2}):
        memory = batches(pipeline.pretrain_dataset(x, 8, seed=5, **kwargs))
        streamed = batches(pipeline.pretrain_dataset(mapped, 8, seed=5, **kwargs))
        assert len(memory) == len(streamed) > 0
        for a, b in zip(memory, streamed, strict=True):
            np.testing.assert_array_equal(a, b)
    # skip: the resumed epoch gets exactly the batches the uninterrupted one had left.
    straight = batches(pipeline.pretrain_dataset(mapped, 8, seed=5, epochs=(0, 2)))
    resumed = batches(pipeline.pretrain_dataset(mapped, 8, seed=5, epochs=(1, 2), skip=1))
    for a, b in zip(straight[4:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    for make in (
        lambda x: pipeline.labeled_dataset(x, y, 7, shuffle=True, seed=1),
        lambda x: pipeline.sampled_batches(x, y, 7, seed=1).take(3),
    ):
        for (xa, ya), (xb, yb) in zip(make(x), make(mapped), strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def test_tfds_through_the_cache_equals_memory(tmp_path):
    import tensorflow_datasets as tfds

    store = tmp_path / "cache"
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=5):
        memory = load_dataset("tfds:cifar10", image_size=12, stream=False)
        streamed = load_dataset("tfds:cifar10", image_size=12, stream=True, cache_dir=store)
        _same(memory, streamed)
        assert isinstance(streamed.x_train, np.memmap) and streamed.x_train.shape == (5, 12, 12, 3)
    # Mocked data has no files to tell entries apart by: a later load decodes afresh.
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=3):
        fewer = load_dataset("tfds:cifar10", image_size=12, stream=True, cache_dir=store)
    assert fewer.x_train.shape == (3, 12, 12, 3)


def test_a_full_disk_is_a_user_error_naming_the_cache(tmp_path, monkeypatch):
    from collections import namedtuple

    from kerassl.errors import UserError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: usage(10, 9, 1))
    store = tmp_path / "cache"
    with pytest.raises(UserError, match=f"{store}.*KERAS_HOME"):
        load_dataset(
            f"folder:{_folder(tmp_path / 'p', 1)}", image_size=16, stream=True, cache_dir=store
        )
    assert _entries(store) == []
