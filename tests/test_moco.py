import itertools

import keras
import numpy as np
import pytest

from kerassl.losses.info_nce import info_nce
from kerassl.models.moco import BatchStatsNormalization, MoCo, in_groups
from kerassl.testing.method_contract import build_tiny, check_precision, run_method_contract
from kerassl.testing.references import np_info_nce
from kerassl.testing.synthetic import tiny_float_images

# Also the distributed check's: a queue of 12 with 8 keys a step wraps around at step 2.
CONTRACT_KWARGS = {
    "temperature": 0.3,
    "momentum": 0.9,
    "queue_size": 12,
    "symmetric": False,
    "bn_groups": 2,
    "seed": 3,
}


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_loss(model, images):
    """InfoNCE (MoCo eq. 1) of the queries against their keys and the queue the step finds.

    Without Shuffling BN (`bn_groups=1`) the keys are the key networks' projections of the
    batch itself; the symmetric loss contrasts both ways (equal views: twice the same).
    """
    assert model.bn_groups == 1
    q = np.asarray(model.project(images, training=True))
    k = np.asarray(model.key_head(model.key_encoder(images, training=True), training=True))
    queue = model.queue.keys.numpy()
    copies = 2 if model.symmetric else 1
    logits = unit(q) @ np.concatenate([unit(k), queue]).T  # positive of row i: column i
    positive = logits[np.arange(len(q)), np.arange(len(q))]
    negatives = logits[:, len(q) :]
    return {
        "loss": copies * np_info_nce(q, k, queue, model.temperature),
        "contrastive_accuracy": np.mean(positive > negatives.max(axis=1)),
    }


def test_method_contract(tmp_path):
    run_method_contract(MoCo, CONTRACT_KWARGS, reference_loss, tmp_path, {"bn_groups": 1})


def test_mixed_precision():
    check_precision(MoCo, CONTRACT_KWARGS)


def make_moco(seed=0, preset="none", **kwargs):
    return build_tiny(MoCo, {"bn_groups": 1, "seed": seed, **kwargs}, preset=preset, seed=seed)


def queue_in_order(model):
    """The queue read from the pointer on: oldest key first."""
    return np.roll(model.queue.keys.numpy(), -int(model.queue.pointer.numpy()), axis=0)


def test_fit_lowers_the_loss():
    x = tiny_float_images(32)
    model = make_moco(preset="digits", queue_size=16, bn_groups=2, temperature=0.2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x, batch_size=8, epochs=10, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    # The random initial queue is easy to beat; from epoch 2 on it holds real keys.
    assert np.mean(losses[-3:]) < np.mean(losses[1:4]) - 0.1, losses
    assert 0.0 <= history.history["contrastive_accuracy"][-1] <= 1.0


def test_symmetric_step_contrasts_both_ways_and_enqueues_both_key_sets():
    # Identity augmentation and a key encoder equal to the query encoder: the keys are the
    # queries, so the step's loss is twice InfoNCE(q, q, queue), and the step then enqueues
    # the normalised keys k1 then k2. (The one-way step is the method contract's.)
    x = tiny_float_images(8)
    model = make_moco(queue_size=40, symmetric=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    queue_before = model.queue.keys.numpy()
    logs = model.train_on_batch(x, return_dict=True)
    q = np.asarray(model.project(x, training=True))
    expected, logits, _ = info_nce(q, q, queue_before, model.temperature)
    np.testing.assert_allclose(logs["loss"], 2 * float(expected), rtol=1e-5)
    # Top-1 accuracy: the positive beats the 40 queued keys for every query.
    assert logs["contrastive_accuracy"] == pytest.approx(
        np.mean(np.argmax(np.asarray(logits), axis=1) == 0)
    )
    assert int(model.queue.pointer.numpy()) == 16
    np.testing.assert_allclose(model.queue.keys.numpy()[:16], np.r_[unit(q), unit(q)], atol=1e-5)
    np.testing.assert_array_equal(model.queue.keys.numpy()[16:], queue_before[16:])


def test_queue_is_fifo_over_training_steps_with_wrap_around():
    # K = 10 is not a multiple of the batch (4): after each step the queue, read from the
    # pointer on, holds the newest 10 keys in order.
    model = make_moco(queue_size=10)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    initial = queue_in_order(model)
    stream = [initial]
    for step in range(7):
        batch = tiny_float_images(4, seed=step + 1)
        model.train_on_batch(batch)
        stream.append(unit(model.project(batch, training=True)))  # this step's keys
        expected = np.concatenate(stream)[-10:]
        np.testing.assert_allclose(queue_in_order(model), expected, atol=1e-5)
        assert int(model.queue.pointer.numpy()) == 4 * (step + 1) % 10


def test_enqueue_keeps_the_newest_keys_when_more_than_the_queue_arrive():
    model = make_moco(queue_size=5)
    rng = np.random.default_rng(0)
    stream = [queue_in_order(model)]
    for n in (3, 3, 12, 1, 5, 4):
        keys = unit(rng.normal(size=(n, 16))).astype("float32")
        model.queue.enqueue(keys)
        stream.append(keys)
        np.testing.assert_allclose(queue_in_order(model), np.concatenate(stream)[-5:], atol=1e-6)
    assert int(model.queue.pointer.numpy()) == (3 + 3 + 12 + 1 + 5 + 4) % 5


def test_momentum_update_is_exact_and_the_key_networks_get_no_gradient():
    x = tiny_float_images(8)
    model = make_moco(momentum=0.9, queue_size=16, bn_groups=2)
    rng = np.random.default_rng(1)
    key_networks = model.key_encoder.weights + model.key_head.weights
    for weight in key_networks:  # make θ_k differ from θ_q
        weight.assign(weight.numpy() + rng.normal(0, 0.1, weight.shape).astype("float32"))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)  # as in kerassl train
    key_before = [w.numpy() for w in key_networks]
    model.train_on_batch(x)
    query_after = [w.numpy() for w in model.encoder.weights + model.head.weights]
    for weight, before, query in zip(key_networks, key_before, query_after, strict=True):
        # θ_k ← m·θ_k + (1 − m)·θ_q, with θ_q after this step's gradient update.
        np.testing.assert_allclose(weight.numpy(), 0.9 * before + 0.1 * query, atol=1e-6)
    key_ids = {id(w) for w in key_networks}
    assert not key_ids & {id(v) for v in model.trainable_variables}
    assert not key_ids & {id(v) for v in model.optimizer._trainable_variables}
    assert len(model.trainable_variables) == len(
        model.encoder.trainable_weights + model.head.trainable_weights
    )


def test_key_encoder_uses_batch_statistics_although_frozen():
    model = make_moco()
    assert not model.key_encoder.trainable
    batch_norms = [layer for layer in model.key_encoder.layers if "bn" in layer.name]
    assert batch_norms and all(isinstance(layer, BatchStatsNormalization) for layer in batch_norms)
    x = tiny_float_images(8)
    # Same weights: in training mode the frozen key encoder equals the query encoder (batch
    # statistics), unlike a frozen Keras BatchNormalization (moving statistics).
    np.testing.assert_allclose(
        model.key_encoder(x, training=True), model.encoder(x, training=True), atol=1e-5
    )
    assert not np.allclose(
        model.key_encoder(x, training=True), model.key_encoder(x, training=False), atol=1e-3
    )


def test_in_groups_applies_the_function_to_interleaved_groups():
    x = np.arange(24, dtype="float32").reshape(12, 2) ** 1.5

    def centre(rows):  # depends on the batch, like BatchNorm
        return rows - keras.ops.mean(rows, axis=0)

    out = np.asarray(in_groups(centre, keras.ops.convert_to_tensor(x), 3))
    for g in range(3):
        np.testing.assert_allclose(out[g::3], x[g::3] - x[g::3].mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of bn_groups"):
        in_groups(centre, keras.ops.convert_to_tensor(x), 5)


def test_shuffling_bn_normalises_each_key_with_a_random_half_of_the_batch():
    # With 2 groups, the keys of a batch of 8 are those of the key network applied to two
    # halves of it; the halves change from step to step and are not the queries' halves
    # (rows 0, 2, 4, 6 and 1, 3, 5, 7), so a query and its key do not share statistics.
    x = tiny_float_images(8)
    model = make_moco(bn_groups=2)

    def key_net(rows):
        return np.asarray(model.key_head(model.key_encoder(rows, training=True), training=True))

    halves = []
    for _ in range(3):
        keys = np.asarray(model.momentum_keys(x, training=True)[0])
        matches = []
        for first in itertools.combinations(range(1, 8), 3):
            half = [0, *first]
            other = [i for i in range(8) if i not in half]
            if np.allclose(key_net(x[half]), keys[half], atol=1e-5) and np.allclose(
                key_net(x[other]), keys[other], atol=1e-5
            ):
                matches.append(tuple(half))
        assert len(matches) == 1
        halves.append(matches[0])
    assert len(set(halves)) > 1
    assert any(half != (0, 2, 4, 6) for half in halves)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0}, "temperature must be > 0"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"queue_size": 0}, "queue_size must be an integer >= 1"),
        ({"bn_groups": 0}, "bn_groups must be an integer >= 1"),
        ({"queue_size": 2.5}, "queue_size must be an integer >= 1"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_moco(**kwargs)


def test_momentum_copy_refuses_a_batchnorm_subclass():
    """A frozen copy would run a BatchNorm subclass on its moving statistics in training
    mode; the copy says so instead of doing it silently."""
    from kerassl.models.moco import momentum_copy

    class OwnNorm(keras.layers.BatchNormalization):
        pass

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), OwnNorm(name="own")])
    model = keras.Sequential([keras.Input((4,)), inner])
    with pytest.raises(ValueError, match="'own' is a OwnNorm"):
        momentum_copy(model)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    assert isinstance(momentum_copy(plain).layers[0], BatchStatsNormalization)
