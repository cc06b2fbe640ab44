"""tf.data builders: values, dtype, batching, shuffling, user errors."""

from __future__ import annotations

import numpy as np
import pytest

from kerassl.data.pipeline import labeled_dataset, pretrain_dataset, sampled_batches, to_float
from kerassl.errors import UserError


def images(n=20, size=16, channels=1) -> np.ndarray:
    """Image i is filled with the value 10 * i (a readable id that survives batching)."""
    return np.broadcast_to((10 * np.arange(n, dtype=np.uint8))[:, None, None, None],
                           (n, size, size, channels)).copy()  # fmt: skip


def ids(batch: np.ndarray) -> list[int]:
    return [int(v) for v in np.round(batch[:, 0, 0, 0] * 255 / 10)]


def test_to_float_exact():
    x = np.array([0, 1, 128, 255], np.uint8).reshape(1, 2, 2, 1)
    out = to_float(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.ravel(), [0, 1 / 255, 128 / 255, 1], rtol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        to_float(x.astype(np.float32))


def test_pretrain_dataset_values_and_drop_remainder():
    x = images(20)
    batches = [b.numpy() for b in pretrain_dataset(x, 8, seed=0, shuffle=False)]
    assert len(batches) == 2  # 20 // 8, the last 4 are dropped
    for batch in batches:
        assert batch.dtype == np.float32 and batch.shape == (8, 16, 16, 1)
        assert batch.min() >= 0.0 and batch.max() <= 1.0
    np.testing.assert_allclose(np.concatenate(batches), to_float(x[:16]))
    spec = pretrain_dataset(x, 8, seed=0).element_spec
    assert tuple(spec.shape) == (8, 16, 16, 1)  # static batch size for XLA


def test_pretrain_dataset_shuffles_reproducibly():
    x = images(24, size=4, channels=3)
    first = [ids(b.numpy()) for b in pretrain_dataset(x, 6, seed=1)]
    flat = sum(first, [])
    assert sorted(flat) == list(range(24)) and flat != list(range(24))  # a permutation
    again = [ids(b.numpy()) for b in pretrain_dataset(x, 6, seed=1)]
    other = [ids(b.numpy()) for b in pretrain_dataset(x, 6, seed=2)]
    assert first == again and first != other
    two_epochs = [ids(b.numpy()) for b in pretrain_dataset(x, 6, seed=1, epochs=(0, 2))]
    assert two_epochs[:4] == first and two_epochs[4:] != first  # reshuffled each epoch
    # Epoch 1 from step 2 on, alone (a resumed run): the batches the whole run had there.
    resumed = [ids(b.numpy()) for b in pretrain_dataset(x, 6, seed=1, epochs=(1, 2), skip=2)]
    assert resumed == two_epochs[6:]
    capped = [ids(b.numpy()) for b in pretrain_dataset(x, 6, 1, (0, 2), steps_per_epoch=3)]
    assert capped == first[:3] + two_epochs[4:7]  # each epoch its own order, cut short


def test_sampled_batches_are_a_function_of_the_step():
    x, y = images(10, size=4, channels=1), np.arange(10)
    whole = [b[1].tolist() for b in sampled_batches(x, y, 4, seed=3).take(5).as_numpy_iterator()]
    assert all(len(set(batch)) == 4 for batch in whole)  # distinct examples in a batch
    later = sampled_batches(x, y, 4, seed=3, first_step=2).take(3).as_numpy_iterator()
    assert [b[1].tolist() for b in later] == whole[2:]
    other = sampled_batches(x, y, 4, seed=4).take(5).as_numpy_iterator()
    assert [b[1].tolist() for b in other] != whole


@pytest.mark.parametrize("batch_size", [21, 0])
def test_pretrain_dataset_bad_batch(batch_size):
    with pytest.raises(UserError, match="batch size"):
        pretrain_dataset(images(20), batch_size, seed=0)


def test_labeled_dataset_pairs_and_remainder():
    x = images(10, size=8)
    y = np.arange(10) * 3
    batches = list(labeled_dataset(x, y, 4).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 2]  # last partial batch kept
    for xb, yb in batches:
        assert xb.dtype == np.float32 and yb.dtype == np.int64
        np.testing.assert_array_equal(np.array(ids(xb)) * 3, yb)  # image ↔ label aligned
    shuffled = list(labeled_dataset(x, y, 4, shuffle=True, seed=0, drop_remainder=True))
    assert len(shuffled) == 2
    for xb, yb in shuffled:
        np.testing.assert_array_equal(np.array(ids(xb.numpy())) * 3, yb.numpy())
    labels = np.concatenate([yb.numpy() for _, yb in shuffled])
    assert len(set(labels.tolist())) == 8 and not np.array_equal(labels, y[:8])


def test_labeled_dataset_errors():
    x = images(5)
    with pytest.raises(UserError, match="batch size 8"):
        labeled_dataset(x, np.zeros(5), 8, drop_remainder=True)
    assert len(list(labeled_dataset(x, np.zeros(5), 8))) == 1  # fine without dropping
    with pytest.raises(ValueError, match="shape"):
        labeled_dataset(x, np.zeros(4), 2)
