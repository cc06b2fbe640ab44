import keras
import numpy as np
import pytest
import tensorflow as tf

from kerassl.losses import BYOLLoss, byol_loss, simsiam_loss
from kerassl.models.byol import BYOL
from kerassl.optimizers import WarmupCosine
from kerassl.testing.method_contract import build_tiny, check_precision, run_method_contract
from kerassl.testing.references import np_byol, np_byol_momentum
from kerassl.testing.synthetic import tiny_float_images

# K = 6 steps: the contract's 2 + 2 steps around a checkpoint run at different τ_k, so its
# resume check fails unless the restored optimizer's iterations continue the schedule.
CONTRACT_KWARGS = {"base_momentum": 0.9, "total_steps": 6, "predictor_hidden_dim": 12}


def randn(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def predictions_and_targets(model, views):
    """(online prediction, target projection) of `views` in training mode, as NumPy."""
    p = model.predictor(model.project(views, training=True), training=True)
    return np.asarray(p), np.asarray(model.target_projection(views, training=True))


def reference_loss(model, images):
    """Eq. (2), symmetrised, for the step's two views, both `images`."""
    p, z = predictions_and_targets(model, images)
    return np_byol(p, p, z, z)


def test_method_contract(tmp_path):
    run_method_contract(BYOL, CONTRACT_KWARGS, reference_loss, tmp_path)


def test_mixed_precision():
    check_precision(BYOL, CONTRACT_KWARGS)


@pytest.mark.parametrize("n, d", [(1, 3), (4, 8), (16, 5), (33, 64)])
def test_loss_matches_equation_2(n, d):
    p1, p2, z1, z2 = (randn(seed + n, n, d) for seed in range(4))
    expected = np_byol(p1, p2, z1, z2)
    np.testing.assert_allclose(float(byol_loss(p1, p2, z1, z2)), expected, rtol=1e-5)
    y_true, y_pred = np.concatenate([z1, z2]), np.concatenate([p1, p2])
    np.testing.assert_allclose(float(BYOLLoss()(y_true, y_pred)), expected, rtol=1e-5)
    # 2 − 2 cos, twice: 4 + 4 x SimSiam's −cos / 2 + −cos / 2.
    np.testing.assert_allclose(expected, 4 + 4 * float(simsiam_loss(p1, p2, z1, z2)), rtol=1e-5)


def test_loss_is_zero_for_aligned_predictions_eight_for_opposite_and_stops_the_target():
    z1, z2 = tf.constant(randn(0, 6, 4)), tf.constant(randn(1, 6, 4))
    assert float(byol_loss(2 * z2, 0.3 * z1, z1, z2)) == pytest.approx(0.0, abs=1e-5)
    assert float(byol_loss(-z2, -z1, z1, z2)) == pytest.approx(8.0, abs=1e-5)
    p1, p2 = tf.constant(randn(2, 6, 4)), tf.constant(randn(3, 6, 4))
    with tf.GradientTape() as tape:
        tape.watch([p1, p2, z1, z2])
        loss = byol_loss(p1, p2, z1, z2)
    gradients = tape.gradient(loss, [p1, p2, z1, z2])
    assert gradients[2] is None and gradients[3] is None
    assert all(float(tf.reduce_max(tf.abs(g))) > 1e-3 for g in gradients[:2])


def test_loss_is_the_papers_on_separately_projected_views():
    model = build_tiny(BYOL, CONTRACT_KWARGS)
    view1, view2 = tiny_float_images(8, seed=1), tiny_float_images(8, seed=2)[:, ::-1]
    loss, logits, labels = model.compute_ssl_loss(view1, view2)
    p1, z1 = predictions_and_targets(model, view1)
    p2, z2 = predictions_and_targets(model, view2)
    np.testing.assert_allclose(float(loss), np_byol(p1, p2, z1, z2), rtol=1e-5)
    assert logits is None and labels is None


def test_target_is_the_moving_average_with_the_cosine_schedule():
    # τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2 at step k = 0 … K − 1, then τ = 1: the target
    # stops following the online network once the K steps are done.
    x = tiny_float_images(8)
    model = build_tiny(BYOL, {"base_momentum": 0.8, "total_steps": 3, "predictor_hidden_dim": 8})
    rng = np.random.default_rng(1)
    target = model.target_encoder.weights + model.target_head.weights
    for weight in target:  # make ξ differ from θ
        weight.assign(weight.numpy() + rng.normal(0, 0.1, weight.shape).astype("float32"))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
    for step in range(4):
        before = [w.numpy() for w in target]
        model.train_on_batch(x)
        online = [w.numpy() for w in model.encoder.weights + model.head.weights]
        tau = np_byol_momentum(step, 3, 0.8)
        for weight, old, new in zip(target, before, online, strict=True):
            np.testing.assert_allclose(weight.numpy(), tau * old + (1 - tau) * new, atol=1e-6)
    assert np_byol_momentum(0, 3, 0.8) == pytest.approx(0.8) and tau == 1.0
    target_ids = {id(w) for w in target}
    assert not target_ids & {id(v) for v in model.trainable_variables}
    predictor_ids = {id(w) for w in model.predictor.trainable_weights}
    assert predictor_ids <= {id(v) for v in model.trainable_variables}


def test_schedule_length_defaults_to_the_learning_rate_schedules():
    model = build_tiny(BYOL, {"base_momentum": 0.9, "predictor_hidden_dim": 8})
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    with pytest.raises(ValueError, match="needs the number of training steps"):
        model.schedule_steps()
    model.compile(optimizer=keras.optimizers.Adam(WarmupCosine(1e-3, total_steps=40)))
    assert model.schedule_steps() == 40
    assert float(model.momentum_at(20)) == pytest.approx(np_byol_momentum(20, 40, 0.9))


def test_settings_reach_the_model_through_the_registry():
    from kerassl.config import TrainConfig
    from kerassl.pretraining import build_method

    config = TrainConfig(method="byol", momentum=0.95, projection_dim=8, hidden_dim=16)
    config.validate()
    model = build_method(config, (16, 16, 1), preset="none", total_steps=5)
    assert isinstance(model, BYOL)
    assert (model.base_momentum, model.predictor_hidden_dim, model.total_steps) == (0.95, 16, None)
    assert model.schedule_steps() == 5  # the run's steps, through the learning-rate schedule
    assert model.head.output_shape == model.predictor.output_shape == (None, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"base_momentum": 1.0}, "base_momentum must be in"),
        ({"total_steps": 0}, "total_steps must be an integer >= 1"),
        ({"predictor_hidden_dim": 0}, "predictor_hidden_dim must be an integer >= 1"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_tiny(BYOL, kwargs)
