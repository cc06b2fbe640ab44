import itertools
import json

import keras
import numpy as np
import pytest

from kerassl.data.augment import make_augmenter
from kerassl.losses.info_nce import info_nce
from kerassl.models.encoders import build_encoder
from kerassl.models.heads import build_head
from kerassl.models.moco import BatchStatsNormalization, MoCo, in_groups
from kerassl.testing.synthetic import tiny_images


def make_moco(seed=0, preset="none", **kwargs):
    keras.utils.set_random_seed(seed)
    encoder = build_encoder("cnn", (16, 16, 1), filters=(8, 16), convs_per_block=1)
    head = build_head("mlp", encoder.output_shape[-1], output_dim=16, hidden_dim=32)
    kwargs = {"bn_groups": 1, "seed": seed, **kwargs}
    return MoCo(encoder, head, make_augmenter(preset, seed=seed), **kwargs)


def images(n=8, seed=0):
    return tiny_images(n, 16, seed=seed)[0].astype("float32") / 255


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def queue_in_order(model):
    """The queue read from the pointer on: oldest key first."""
    return np.roll(model.queue.keys.numpy(), -int(model.queue.pointer.numpy()), axis=0)


def test_fit_lowers_the_loss():
    x = images(32)
    model = make_moco(preset="digits", queue_size=16, bn_groups=2, temperature=0.2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x, batch_size=8, epochs=10, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    # The random initial queue is easy to beat; from epoch 2 on it holds real keys.
    assert np.mean(losses[-3:]) < np.mean(losses[1:4]) - 0.1, losses
    assert 0.0 <= history.history["contrastive_accuracy"][-1] <= 1.0


@pytest.mark.parametrize("symmetric", [False, True])
def test_train_step_is_info_nce_of_query_against_key_and_queue(symmetric):
    # Identity augmentation and a key encoder equal to the query encoder: the keys are the
    # queries, so the step's loss is InfoNCE(q, q, queue) (twice when symmetric), and the
    # step then enqueues the normalised keys (k1 then k2 when symmetric).
    x = images(8)
    model = make_moco(queue_size=40, symmetric=symmetric)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    queue_before = model.queue.keys.numpy()
    logs = model.train_on_batch(x, return_dict=True)
    q = np.asarray(model.project(x, training=True))
    expected, logits, _ = info_nce(q, q, queue_before, 0.2)
    copies = 2 if symmetric else 1
    np.testing.assert_allclose(logs["loss"], copies * float(expected), rtol=1e-5)
    # Top-1 accuracy: the positive beats the 40 queued keys for every query.
    assert logs["contrastive_accuracy"] == pytest.approx(
        np.mean(np.argmax(np.asarray(logits), axis=1) == 0)
    )
    assert int(model.queue.pointer.numpy()) == 8 * copies
    keys = np.concatenate([unit(q)] * copies)
    np.testing.assert_allclose(model.queue.keys.numpy()[: 8 * copies], keys, atol=1e-5)
    untouched = slice(8 * copies, None)
    np.testing.assert_array_equal(model.queue.keys.numpy()[untouched], queue_before[untouched])


def test_queue_is_fifo_over_training_steps_with_wrap_around():
    # K = 10 is not a multiple of the batch (4): after each step the queue, read from the
    # pointer on, holds the newest 10 keys in order.
    model = make_moco(queue_size=10)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    initial = queue_in_order(model)
    stream = [initial]
    for step in range(7):
        batch = images(4, seed=step + 1)
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
    x = images(8)
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
    x = images(8)
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
    x = images(8)
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


def test_save_load_round_trip(tmp_path):
    x = images(16)
    model = make_moco(queue_size=12, momentum=0.95, symmetric=True, bn_groups=2, seed=4)
    model.compile(optimizer="adam")
    model.fit(x, batch_size=8, epochs=1, verbose=0)
    assert int(model.queue.pointer.numpy()) == 32 % 12
    model.save(tmp_path / "moco.keras")
    restored = keras.saving.load_model(tmp_path / "moco.keras")
    assert isinstance(restored, MoCo)
    assert json.loads(json.dumps(restored.get_config())) == json.loads(
        json.dumps(model.get_config())
    )
    for name in ("temperature", "momentum", "queue_size", "symmetric", "bn_groups", "seed"):
        assert getattr(restored, name) == getattr(model, name)
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(model(x)), atol=1e-5)
    np.testing.assert_array_equal(restored.queue.keys.numpy(), model.queue.keys.numpy())
    assert int(restored.queue.pointer.numpy()) == int(model.queue.pointer.numpy())
    for a, b in zip(restored.key_encoder.weights, model.key_encoder.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


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
