"""tf.data builders: uint8 arrays → float32 [0, 1] batches out.

The uint8 array stays the source (4x smaller than float32); batches are gathered by index
and converted to float inside the pipeline. Shuffling permutes indices, not images, so no
shuffle buffer holds a second copy of the data.

An array in memory is captured by the dataset's functions as one tensor (arrays over 2 GB
cannot be serialized with the dataset graph, e.g. for tf.data service). An `np.memmap` (a
streamed dataset, `kerassl.data.cache`) is never copied whole: each batch's rows are read
from it by index in a `tf.numpy_function`, in a parallel, ordered, prefetched map, so the
batches and their order are the same as from the array in memory.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerassl.data.preprocess import to_unit_float
from kerassl.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE


def to_float(x_uint8: np.ndarray) -> np.ndarray:
    """uint8 images → float32 in [0, 1], `x / 255` (the input contract of every kerassl
    model), bit-identical to `kerassl.data.preprocess.to_unit_float` and so to what the
    exported model computes."""
    x = np.asarray(x_uint8)
    if x.dtype != np.uint8:
        raise ValueError(f"to_float expects uint8 images. Received: dtype={x.dtype}")
    return x.astype(np.float32) / np.float32(255.0)


def _array(x) -> np.ndarray:
    """`x` as an array; a memmap stays one (`np.asarray` would hide it, not copy it)."""
    return x if isinstance(x, np.memmap) else np.asarray(x)


def _check(x: np.ndarray, batch_size: int) -> None:
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"x must be uint8 [N, H, W, C]. Received: {x.dtype} {x.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")


def _gatherer(x: np.ndarray):
    """idx [B] int64 → uint8 images [B, H, W, C] of `x`: a `tf.gather` of a constant
    for an array in memory, a read by index for a memmap."""
    if not isinstance(x, np.memmap):
        images = tf.constant(x)  # [N, H, W, C] uint8
        return lambda idx: tf.gather(images, idx)

    def read(idx: np.ndarray) -> np.ndarray:
        order = np.argsort(idx, kind="stable")  # rows read in file order
        out = np.empty((len(idx), *x.shape[1:]), np.uint8)
        out[order] = x[idx[order]]
        return out

    def gather(idx: tf.Tensor) -> tf.Tensor:
        images = tf.numpy_function(read, [idx], tf.uint8, stateful=False)
        return tf.ensure_shape(images, [idx.shape[0], *x.shape[1:]])

    return gather


def _index_batches(
    n: int, batch_size: int, shuffle: bool, seed: int, drop_remainder: bool
) -> tf.data.Dataset:
    indices = tf.data.Dataset.range(n)
    if shuffle:
        # A full permutation of the indices, different every epoch, reproducible by seed.
        indices = indices.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    return indices.batch(batch_size, drop_remainder=drop_remainder)


def _permutation(n: int, seed, shuffle: bool = True) -> tf.Tensor:
    """0..n-1, permuted by a stateless seed pair (the same pair, the same order)."""
    order = tf.range(n, dtype=tf.int64)
    if not shuffle:
        return order
    return tf.random.experimental.stateless_shuffle(order, seed=tf.cast(seed, tf.int64))


def pretrain_dataset(
    x: np.ndarray,
    batch_size: int,
    seed: int,
    epochs: tuple[int, int] = (0, 1),
    steps_per_epoch: int | None = None,
    skip: int = 0,
    shuffle: bool = True,
) -> tf.data.Dataset:
    """Unlabeled batches of the epochs `[first, last)` of a pretraining run.

    Epoch e's order is a permutation drawn from `(seed, e)` alone, so a run resumed at
    step s of epoch e (`epochs=(e, last), skip=s`) gets exactly the batches the
    uninterrupted run got. Every batch is full (contrastive losses always see `batch_size`
    examples; the static batch size is known to XLA); each epoch has `steps_per_epoch`
    batches (default: one pass, `N // batch_size`, which is also the most).

    Args:
        x: uint8 images [N, H, W, C].
        batch_size: images per batch, at most N.
        seed: the run's seed.
        epochs: `(first, last)` epoch numbers.
        steps_per_epoch: batches per epoch, capped at one pass.
        skip: batches of the first epoch already trained.
        shuffle: permute each epoch (False: the array order every epoch).

    Returns:
        A dataset of float32 [batch_size, H, W, C] in [0, 1].

    Raises:
        UserError: ``batch_size`` > N (the dataset would be empty).
    """
    x = _array(x)
    _check(x, batch_size)
    if batch_size > len(x):
        raise UserError(
            f"batch size {batch_size} is larger than the {len(x)} images; use at most {len(x)}"
        )
    n = len(x)
    steps = min(steps_per_epoch or n // batch_size, n // batch_size)
    gather = _gatherer(x)

    def epoch_batches(epoch):
        order = _permutation(n, tf.stack([tf.cast(seed, tf.int64), epoch]), shuffle)
        return tf.data.Dataset.from_tensor_slices(
            tf.reshape(order[: steps * batch_size], [steps, batch_size])
        )

    first, last = epochs
    ds = tf.data.Dataset.range(first, last).flat_map(epoch_batches).skip(skip)
    ds = ds.map(lambda idx: to_unit_float(gather(idx)), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def sampled_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, first_step: int = 0
) -> tf.data.Dataset:
    """An endless stream of (images, labels) batches, batch k of distinct examples drawn
    from `(seed, k)` alone (k counted from 0 at the run's first step): the online probe's
    labeled batches, which a resumed run continues at `first_step` exactly.

    Args:
        x: uint8 images [N, H, W, C].
        y: int labels [N].
        batch_size: examples per batch, at most N.
        seed: the run's seed.
        first_step: the step the stream starts at.
    """
    x, y = _array(x), np.asarray(y)
    _check(x, batch_size)
    if batch_size > len(x):
        raise UserError(
            f"batch size {batch_size} is larger than the {len(x)} examples; use at most {len(x)}"
        )
    gather, labels = _gatherer(x), tf.constant(y.astype(np.int64))
    n = len(x)

    def batch(step):
        # A second stream of the same seed: its pairs (seed, -1 - k) never meet
        # `pretrain_dataset`'s (seed, epoch >= 0).
        idx = _permutation(n, tf.stack([tf.cast(seed, tf.int64), -1 - step]))[:batch_size]
        return to_unit_float(gather(idx)), tf.gather(labels, idx)

    ds = tf.data.Dataset.range(first_step, np.iinfo(np.int64).max)
    return ds.map(batch, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def labeled_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """(images, labels) batches for probes, baselines and evaluation.

    Args:
        x: uint8 images [N, H, W, C].
        y: int labels [N].
        batch_size: examples per batch.
        shuffle: shuffle every epoch (reproducible by ``seed``).
        seed: shuffle seed.
        drop_remainder: drop the last partial batch.

    Returns:
        A dataset of (float32 [B, H, W, C] in [0, 1], int64 [B]).

    Raises:
        UserError: bad ``batch_size``, or ``drop_remainder`` with fewer than
            ``batch_size`` examples.
    """
    x, y = _array(x), np.asarray(y)
    _check(x, batch_size)
    if y.shape != (len(x),):
        raise ValueError(f"y must have shape ({len(x)},). Received: shape={y.shape}")
    if drop_remainder and batch_size > len(x):
        raise UserError(
            f"batch size {batch_size} is larger than the {len(x)} examples; use at most {len(x)}"
        )
    gather, labels = _gatherer(x), tf.constant(y.astype(np.int64))
    ds = _index_batches(len(x), batch_size, shuffle, seed, drop_remainder)
    ds = ds.map(
        lambda idx: (to_unit_float(gather(idx)), tf.gather(labels, idx)),
        num_parallel_calls=AUTOTUNE,
    )
    return ds.prefetch(AUTOTUNE)
