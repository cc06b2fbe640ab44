"""WarmupCosine values, LARS against a NumPy transcription, make_optimizer."""

import math

import keras
import numpy as np
import pytest

from kerassl.errors import UserError
from kerassl.optimizers import LARS, WarmupCosine, make_optimizer


def schedule_values(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_warmup_cosine_values_at_key_steps():
    schedule = WarmupCosine(0.4, total_steps=110, warmup_steps=10, final_lr=0.1)
    values = schedule_values(schedule, [0, 5, 10, 60, 110, 500])
    # Linear warmup from 0, peak at the end of warmup, cosine midpoint, final, then flat.
    np.testing.assert_allclose(values, [0.0, 0.2, 0.4, 0.25, 0.1, 0.1], rtol=1e-6, atol=1e-7)
    quarter = 0.1 + 0.5 * 0.3 * (1 + math.cos(math.pi * 0.25))
    np.testing.assert_allclose(float(schedule(35)), quarter, rtol=1e-6)
    decay = schedule_values(schedule, range(10, 111))
    assert np.all(np.diff(decay) <= 1e-7)


def test_warmup_cosine_without_warmup_starts_at_base_lr():
    schedule = WarmupCosine(1.0, total_steps=4)
    np.testing.assert_allclose(
        schedule_values(schedule, range(5)), [1.0, 0.853553, 0.5, 0.146447, 0.0], atol=1e-6
    )


def test_warmup_cosine_config_round_trip_and_bad_arguments():
    schedule = WarmupCosine(0.3, total_steps=100, warmup_steps=7, final_lr=1e-3)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupCosine) and restored.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match=r"base_lr must be > 0. Received: base_lr=0"):
        WarmupCosine(0, total_steps=10)
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        WarmupCosine(0.1, total_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        WarmupCosine(0.1, total_steps=0)


def np_lars(w, gradients, lrs, momentum, weight_decay, eta, nesterov):
    """SimCLR's lars_optimizer.py (classic momentum), one variable, written out in NumPy."""
    w = w.astype(np.float64).copy()
    v = np.zeros_like(w)
    adapt = w.ndim > 1
    for g, lr in zip(gradients, lrs, strict=True):
        g = g.astype(np.float64)
        if adapt:
            g = g + weight_decay * w
        trust = 1.0
        if adapt:
            w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
            if w_norm > 0 and g_norm > 0:
                trust = eta * w_norm / g_norm
        scaled_lr = lr * trust
        v = momentum * v + scaled_lr * g
        w = w - (momentum * v + scaled_lr * g if nesterov else v)
    return w


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_numpy_transcription(nesterov):
    rng = np.random.default_rng(0)
    kernel0 = rng.normal(size=(3, 4)).astype(np.float32)
    bias0 = rng.normal(size=(4,)).astype(np.float32)
    steps = 3
    kernel_grads = rng.normal(size=(steps, 3, 4)).astype(np.float32)
    bias_grads = rng.normal(size=(steps, 4)).astype(np.float32)
    schedule = WarmupCosine(2.0, total_steps=steps, warmup_steps=1)
    lrs = [float(schedule(t)) for t in range(steps)]

    kernel, bias = keras.Variable(kernel0, name="kernel"), keras.Variable(bias0, name="bias")
    optimizer = LARS(schedule, momentum=0.9, weight_decay=0.1, eta=0.01, nesterov=nesterov)
    for t in range(steps):
        optimizer.apply_gradients([(kernel_grads[t], kernel), (bias_grads[t], bias)])

    expected_kernel = np_lars(kernel0, kernel_grads, lrs, 0.9, 0.1, 0.01, nesterov)
    expected_bias = np_lars(bias0, bias_grads, lrs, 0.9, 0.1, 0.01, nesterov)
    np.testing.assert_allclose(np.asarray(kernel), expected_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bias), expected_bias, rtol=1e-5, atol=1e-6)
    # The 2-D weight moved by a trust-scaled step, far less than the plain lr · g of the bias.
    assert np.abs(expected_kernel - kernel0).max() < 0.1 < np.abs(expected_bias - bias0).max()


def test_lars_zero_weight_falls_back_to_plain_momentum_sgd():
    kernel = keras.Variable(np.zeros((2, 2), np.float32))
    optimizer = LARS(0.5, momentum=0.0, weight_decay=0.1)
    optimizer.apply_gradients([(np.ones((2, 2), np.float32), kernel)])
    np.testing.assert_allclose(np.asarray(kernel), -0.5 * np.ones((2, 2)), rtol=1e-6)


def test_lars_trains_a_model_with_jit_compile():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 1)) > 0).astype(np.float32)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16),
            keras.layers.BatchNormalization(momentum=0.9),
            keras.layers.ReLU(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    schedule = WarmupCosine(5.0, total_steps=80, warmup_steps=8)
    model.compile(
        optimizer=LARS(schedule, weight_decay=1e-4),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=True,
    )
    history = model.fit(x, y, batch_size=16, epochs=20, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses
    assert history.history["accuracy"][-1] > 0.9


def test_lars_config_round_trip_and_saved_model(tmp_path):
    optimizer = LARS(WarmupCosine(1.0, 50, 5), momentum=0.8, weight_decay=1e-5, eta=0.002)
    config = keras.optimizers.serialize(optimizer)
    restored = keras.optimizers.deserialize(config)
    assert isinstance(restored, LARS)
    assert isinstance(restored._learning_rate, WarmupCosine)
    assert restored.get_config() == optimizer.get_config()
    assert (restored.momentum, restored.lars_weight_decay, restored.eta) == (0.8, 1e-5, 0.002)

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, LARS) and int(loaded.optimizer.iterations) == 1
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))


def test_lars_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"eta must be > 0. Received: eta=0"):
        LARS(eta=0)
    with pytest.raises(ValueError, match="momentum must be in"):
        LARS(momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        LARS(weight_decay=-1)


def test_make_optimizer_names():
    adam = make_optimizer("adam", 1e-3)
    assert type(adam) is keras.optimizers.Adam
    adamw = make_optimizer("Adam", 1e-3, weight_decay=1e-4)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 1e-4
    lars = make_optimizer("lars", WarmupCosine(0.3, 10), weight_decay=1e-6, momentum=0.8)
    assert isinstance(lars, LARS) and lars.lars_weight_decay == 1e-6 and lars.momentum == 0.8
    sgd = make_optimizer("sgd", 0.1, weight_decay=5e-4)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9
    with pytest.raises(UserError, match="unknown optimizer 'rmsprop'; choose one of adam, lars"):
        make_optimizer("rmsprop", 1e-3)
    with pytest.raises(UserError, match="weight decay must be >= 0"):
        make_optimizer("adam", 1e-3, weight_decay=-1)


def test_make_optimizer_does_not_decay_biases():
    bias = keras.Variable(np.ones(3, np.float32), name="bias")
    kernel = keras.Variable(np.ones((3, 3), np.float32), name="kernel")
    optimizer = make_optimizer("sgd", 0.1, weight_decay=0.5, momentum=0.0)
    optimizer.apply_gradients([(np.zeros(3, np.float32), bias), (np.zeros((3, 3)), kernel)])
    np.testing.assert_allclose(np.asarray(bias), np.ones(3))
    np.testing.assert_allclose(np.asarray(kernel), np.full((3, 3), 1 - 0.1 * 0.5), rtol=1e-6)
