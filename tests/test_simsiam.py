import keras
import numpy as np
import pytest
import tensorflow as tf

from kerassl.losses import SimSiamLoss, negative_cosine, simsiam_loss
from kerassl.models.simsiam import SimSiam, build_projector
from kerassl.testing.method_contract import build_tiny, check_precision, run_method_contract
from kerassl.testing.references import np_simsiam
from kerassl.testing.synthetic import tiny_float_images

CONTRACT_KWARGS = {"predictor_hidden_dim": 12}


def randn(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def online(model, views):
    """(p, z) of the online network in training mode, as NumPy."""
    z = model.project(views, training=True)
    return np.asarray(model.predictor(z, training=True)), np.asarray(z)


def reference_loss(model, images):
    """Algorithm 1 on the predictions and projections of the step's two views, both `images`."""
    p, z = online(model, images)
    return np_simsiam(p, p, z, z)


def test_method_contract(tmp_path):
    run_method_contract(SimSiam, CONTRACT_KWARGS, reference_loss, tmp_path)


def test_mixed_precision():
    check_precision(SimSiam, CONTRACT_KWARGS)


@pytest.mark.parametrize("n, d", [(1, 3), (4, 8), (16, 5), (33, 64)])
def test_loss_matches_algorithm_1(n, d):
    p1, p2, z1, z2 = (randn(seed + n, n, d) for seed in range(4))
    np.testing.assert_allclose(
        float(simsiam_loss(p1, p2, z1, z2)), np_simsiam(p1, p2, z1, z2), rtol=1e-5, atol=1e-6
    )
    y_true, y_pred = np.concatenate([z1, z2]), np.concatenate([p1, p2])
    np.testing.assert_allclose(
        float(SimSiamLoss()(y_true, y_pred)), np_simsiam(p1, p2, z1, z2), rtol=1e-5, atol=1e-6
    )


def test_loss_is_minus_one_for_aligned_predictions_and_one_for_opposite():
    z1, z2 = randn(0, 6, 4), randn(1, 6, 4)
    assert float(simsiam_loss(3 * z2, 0.5 * z1, z1, z2)) == pytest.approx(-1.0, abs=1e-6)
    assert float(simsiam_loss(-z2, -2 * z1, z1, z2)) == pytest.approx(1.0, abs=1e-6)


def test_no_gradient_reaches_the_projections():
    p, z = tf.constant(randn(0, 5, 3)), tf.constant(randn(1, 5, 3))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([p, z])
        loss = negative_cosine(p, z)
    assert tape.gradient(loss, z) is None
    assert float(tf.reduce_max(tf.abs(tape.gradient(loss, p)))) > 1e-3


def test_loss_is_the_papers_on_separately_projected_views():
    # Each view goes through encoder, projector and predictor on its own (BatchNorm
    # statistics per view), which equal views in the contract's step cannot show.
    model = build_tiny(SimSiam, CONTRACT_KWARGS)
    view1, view2 = tiny_float_images(8, seed=1), tiny_float_images(8, seed=2)[:, ::-1]
    loss, logits, labels = model.compute_ssl_loss(view1, view2)
    (p1, z1), (p2, z2) = online(model, view1), online(model, view2)
    np.testing.assert_allclose(float(loss), np_simsiam(p1, p2, z1, z2), rtol=1e-5, atol=1e-6)
    assert logits is None and labels is None
    assert model.metrics == [model.loss_tracker]


def test_projector_has_batchnorm_on_every_layer_the_last_without_affine():
    projector = build_projector(10, (16, 12, 8))
    kinds = [type(layer).__name__ for layer in projector.layers[1:]]
    assert kinds == ["Dense", "BatchNormalization", "ReLU"] * 2 + ["Dense", "BatchNormalization"]
    dense = [layer for layer in projector.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [16, 12, 8]
    assert not any(layer.use_bias for layer in dense)
    last = projector.layers[-1]
    assert not last.center and not last.scale and last.momentum == 0.9
    # Kernels, γ, β and moving statistics of the hidden BatchNorms, statistics of the last.
    assert projector.count_params() == 10 * 16 + 16 * 12 + 12 * 8 + 4 * (16 + 12) + 2 * 8
    z = np.asarray(projector(randn(0, 32, 10), training=True))
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)  # the output BatchNorm standardises


def test_settings_reach_the_model_through_the_registry():
    from kerassl.config import TrainConfig
    from kerassl.pretraining import build_method

    config = TrainConfig(method="simsiam", projector_dims="16,16,8", hidden_dim=4)
    config.validate()
    model = build_method(config, (16, 16, 1), preset="none", total_steps=2)
    assert isinstance(model, SimSiam) and model.predictor_hidden_dim == 4
    assert model.head.output_shape == (None, 8) and model.head.layers[-1].center is False
    assert [layer.units for layer in model.predictor.layers if hasattr(layer, "units")] == [4, 8]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="predictor_hidden_dim must be an integer >= 1"):
        build_tiny(SimSiam, {"predictor_hidden_dim": 0})
