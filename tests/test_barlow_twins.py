import keras
import numpy as np
import pytest

from kerassl.models.barlow_twins import BarlowTwins, build_projector
from kerassl.testing.method_contract import build_tiny, check_precision, run_method_contract
from kerassl.testing.references import np_barlow_twins
from kerassl.testing.synthetic import tiny_float_images

CONTRACT_KWARGS = {"lambda_": 0.02, "epsilon": 1e-4}


def reference_loss(model, images):
    """Algorithm 1 on the projections of the step's two views, both `images`."""
    z = np.asarray(model.project(images, training=True), np.float64)
    return np_barlow_twins(z, z, model.lambda_, model.epsilon)[0]


def test_method_contract(tmp_path):
    run_method_contract(BarlowTwins, CONTRACT_KWARGS, reference_loss, tmp_path)


def test_mixed_precision():
    check_precision(BarlowTwins, CONTRACT_KWARGS)


def make_barlow_twins(preset="none", dims=None, **kwargs):
    return build_tiny(BarlowTwins, kwargs, preset=preset, head_widths=dims)


def test_fit_lowers_the_loss():
    model = make_barlow_twins(preset="digits", dims=(64, 64, 64))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(tiny_float_images(32), batch_size=16, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    assert "contrastive_accuracy" not in history.history  # no positive-pair classification


@pytest.mark.parametrize("lambda_", [0.0, 5e-3, 0.1])
def test_loss_is_the_papers_on_separately_projected_views(lambda_):
    # Each view goes through encoder + projector on its own (BatchNorm statistics per
    # view); the loss is Algorithm 1 on the two embeddings. (Equal views, as in the method
    # contract's step, cannot tell this from one pass over both.)
    model = make_barlow_twins(lambda_=lambda_)
    view1, view2 = tiny_float_images(8, seed=1), tiny_float_images(8, seed=2)[:, ::-1]
    loss, logits, labels = model.compute_ssl_loss(view1, view2)
    z1 = np.asarray(model.project(view1, training=True), np.float64)
    z2 = np.asarray(model.project(view2, training=True), np.float64)
    expected, _ = np_barlow_twins(z1, z2, lambda_, model.epsilon)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    assert logits is None and labels is None


def test_projector_is_three_linear_layers_with_batchnorm_and_relu_between():
    projector = build_projector(10, (16, 12, 8))
    kinds = [type(layer).__name__ for layer in projector.layers[1:]]
    assert kinds == [
        "Dense",
        "BatchNormalization",
        "ReLU",
        "Dense",
        "BatchNormalization",
        "ReLU",
        "Dense",
    ]
    dense = [layer for layer in projector.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [16, 12, 8]
    assert not any(layer.use_bias for layer in dense)
    bn = [layer for layer in projector.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.momentum == 0.9 for layer in bn)
    assert projector.count_params() == 10 * 16 + 16 * 12 + 12 * 8 + 4 * (16 + 12)
    with pytest.raises(ValueError, match="dims must be"):
        build_projector(10, (16, 0, 8))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"lambda_": -1e-3}, "lambda_ must be >= 0"), ({"epsilon": -1.0}, "epsilon must be >= 0")],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_barlow_twins(**kwargs)
