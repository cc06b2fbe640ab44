import numpy as np
import pytest
import tensorflow as tf

from kerassl.losses import VICRegLoss, vicreg
from kerassl.losses.vicreg import covariance, invariance, variance
from kerassl.models.vicreg import VICReg
from kerassl.testing.method_contract import build_tiny, check_precision, run_method_contract
from kerassl.testing.references import np_vicreg
from kerassl.testing.synthetic import tiny_float_images

# γ = 2 keeps the variance hinge active on the tiny expander's outputs; weights a tenth of
# the paper's keep the distributed check's SGD steps (lr 0.1) small.
CONTRACT_KWARGS = {
    "invariance_weight": 2.0,
    "variance_weight": 1.5,
    "covariance_weight": 0.2,
    "gamma": 2.0,
    "epsilon": 1e-3,
}
WEIGHTS = ("invariance_weight", "variance_weight", "covariance_weight", "gamma", "epsilon")


def randn(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def arguments(model):
    return [getattr(model, name) for name in WEIGHTS]


def reference_loss(model, images):
    """Algorithm 1 on the expander outputs of the step's two views, both `images`."""
    z = np.asarray(model.project(images, training=True), np.float64)
    assert np_vicreg(z, z, 0, 1, 0, model.gamma, model.epsilon) > 0.1  # the hinge is active
    return np_vicreg(z, z, *arguments(model))


def test_method_contract(tmp_path):
    run_method_contract(VICReg, CONTRACT_KWARGS, reference_loss, tmp_path)


def test_mixed_precision():
    check_precision(VICReg, CONTRACT_KWARGS)


@pytest.mark.parametrize(
    "n, d, weights",
    [
        (2, 3, (25.0, 25.0, 1.0, 1.0, 1e-4)),
        (8, 5, (1.0, 0.0, 0.0, 1.0, 1e-4)),
        (8, 5, (0.0, 1.0, 0.0, 1.5, 1e-2)),
        (8, 5, (0.0, 0.0, 1.0, 1.0, 1e-4)),
        (33, 16, (25.0, 25.0, 1.0, 1.0, 1e-4)),
    ],
)
def test_loss_matches_algorithm_1(n, d, weights):
    # Scaled columns: some dimensions' std below γ (hinge active), some above.
    scales = np.linspace(0.2, 2.0, d).astype(np.float32)
    z1, z2 = randn(n, n, d) * scales, randn(n + 1, n, d) * scales + 0.5 * randn(n + 2, n, d)
    expected = np_vicreg(z1, z2, *weights)
    np.testing.assert_allclose(float(vicreg(z1, z2, *weights)), expected, rtol=1e-5, atol=1e-6)
    loss = VICRegLoss(*weights)
    np.testing.assert_allclose(float(loss(z2, z1)), expected, rtol=1e-5, atol=1e-6)
    assert VICRegLoss.from_config(loss.get_config()).get_config() == loss.get_config()


def test_terms_vanish_for_identical_decorrelated_views_with_enough_spread():
    # Orthogonal centred columns with standard deviation 2 ≥ γ: no term is positive.
    a = randn(0, 16, 4)
    q, _ = np.linalg.qr(a - a.mean(0))  # orthonormal columns, centred like those of a
    z = (2.0 * np.sqrt(16 - 1) * q).astype(np.float32)
    assert float(invariance(z, z)) == 0.0
    assert float(variance(z)) == pytest.approx(0.0, abs=1e-6)
    assert float(covariance(z)) == pytest.approx(0.0, abs=1e-6)
    assert float(vicreg(z, z)) == pytest.approx(0.0, abs=1e-5)
    collapsed = np.ones_like(z)  # every image the same embedding: only the hinge remains
    assert float(vicreg(collapsed, collapsed)) == pytest.approx(
        25.0 * 2 * (1 - np.sqrt(1e-4)), rel=1e-5
    )


def test_loss_is_invariant_to_a_shared_translation():
    z1, z2, shift = randn(0, 8, 6), randn(1, 8, 6), 3 * randn(2, 1, 6)
    np.testing.assert_allclose(
        float(vicreg(z1 + shift, z2 + shift)), float(vicreg(z1, z2)), rtol=1e-4
    )


def test_gradients_finite_with_a_constant_dimension():
    z1 = tf.Variable(np.c_[randn(0, 8, 3), np.ones((8, 1), np.float32)])
    z2 = tf.constant(randn(1, 8, 4))
    with tf.GradientTape() as tape:
        loss = vicreg(z1, z2)
    assert np.isfinite(tape.gradient(loss, z1).numpy()).all()


def test_loss_is_the_papers_on_separately_projected_views():
    model = build_tiny(VICReg, CONTRACT_KWARGS)
    view1, view2 = tiny_float_images(8, seed=1), tiny_float_images(8, seed=2)[:, ::-1]
    loss, logits, labels = model.compute_ssl_loss(view1, view2)
    z1 = np.asarray(model.project(view1, training=True), np.float64)
    z2 = np.asarray(model.project(view2, training=True), np.float64)
    np.testing.assert_allclose(float(loss), np_vicreg(z1, z2, *arguments(model)), rtol=1e-4)
    assert logits is None and labels is None


def test_settings_reach_the_model_through_the_registry():
    from kerassl.config import TrainConfig
    from kerassl.pretraining import build_method

    config = TrainConfig(
        method="vicreg", vicreg_lambda=5.0, vicreg_mu=6.0, vicreg_nu=0.5, projector_dims="16,8"
    )
    config.validate()
    model = build_method(config, (16, 16, 1), preset="none", total_steps=2)
    assert isinstance(model, VICReg) and arguments(model) == [5.0, 6.0, 0.5, 1.0, 1e-4]
    assert model.head.output_shape == (None, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"invariance_weight": -1.0}, "invariance_weight must be >= 0"),
        ({"variance_weight": -1.0}, "variance_weight must be >= 0"),
        ({"covariance_weight": -1.0}, "covariance_weight must be >= 0"),
        ({"gamma": 0.0}, "gamma must be > 0"),
        ({"epsilon": -1e-4}, "epsilon must be >= 0"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_tiny(VICReg, kwargs)
    with pytest.raises(ValueError, match=message):
        VICRegLoss(**kwargs)


def test_cli_rejects_a_negative_weight_in_one_line(tmp_path, capsys):
    from kerassl.train import main

    code = main(["vicreg", "--vicreg-mu", "-1", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "kerassl: error: --vicreg-mu must be >= 0; got -1.0", err
