import json

import keras
import numpy as np
import pytest

from kerassl.data.augment import make_augmenter
from kerassl.models.barlow_twins import BarlowTwins, build_projector
from kerassl.models.encoders import build_encoder
from kerassl.testing.synthetic import tiny_images


def make_barlow_twins(seed=0, preset="none", dims=(32, 32, 24), **kwargs):
    keras.utils.set_random_seed(seed)
    encoder = build_encoder("cnn", (16, 16, 1), filters=(8, 16), convs_per_block=1)
    projector = build_projector(encoder.output_shape[-1], dims)
    return BarlowTwins(encoder, projector, make_augmenter(preset, seed=seed), **kwargs)


def images(n=8, seed=0):
    return tiny_images(n, 16, seed=seed)[0].astype("float32") / 255


def barlow_twins_numpy(z_a, z_b, lambd, eps=1e-5):
    """Algorithm 1 of Zbontar et al. 2021 in NumPy, with the official code's BatchNorm1d
    (biased variance, eps) as the normalisation along the batch."""
    n, d = z_a.shape
    z_a_norm = (z_a - z_a.mean(0)) / np.sqrt(z_a.var(0) + eps)
    z_b_norm = (z_b - z_b.mean(0)) / np.sqrt(z_b.var(0) + eps)
    c = z_a_norm.T @ z_b_norm / n  # D x D
    c_diff = (c - np.eye(d)) ** 2
    off_diagonal = ~np.eye(d, dtype=bool)
    c_diff[off_diagonal] *= lambd
    return c_diff.sum()


def test_fit_lowers_the_loss():
    x = images(32)
    model = make_barlow_twins(preset="digits", dims=(64, 64, 64))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(x, batch_size=16, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    assert "contrastive_accuracy" not in history.history  # no positive-pair classification


@pytest.mark.parametrize("lambda_", [0.0, 5e-3, 0.1])
def test_loss_is_the_papers_on_separately_projected_views(lambda_):
    # Each view goes through encoder + projector on its own (BatchNorm statistics per
    # view); the loss is Algorithm 1 on the two embeddings.
    model = make_barlow_twins(lambda_=lambda_)
    view1, view2 = images(8, seed=1), images(8, seed=2)[:, ::-1]
    loss, logits, labels = model.compute_ssl_loss(view1, view2)
    z1 = np.asarray(model.project(view1, training=True), np.float64)
    z2 = np.asarray(model.project(view2, training=True), np.float64)
    np.testing.assert_allclose(float(loss), barlow_twins_numpy(z1, z2, lambda_), rtol=1e-4)
    assert logits is None and labels is None


def test_train_step_reports_the_loss_of_its_views():
    x = images(8)
    model = make_barlow_twins(lambda_=0.02)
    model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=True)
    logs = model.train_on_batch(x, return_dict=True)
    assert set(logs) == {"loss"}
    z = np.asarray(model.project(x, training=True), np.float64)  # both views are x
    np.testing.assert_allclose(logs["loss"], barlow_twins_numpy(z, z, 0.02), rtol=1e-4)


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


def test_save_load_round_trip(tmp_path):
    x = images(16)
    model = make_barlow_twins(lambda_=1e-3, epsilon=1e-4)
    model.compile(optimizer="adam")
    model.fit(x, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "barlow_twins.keras")
    restored = keras.saving.load_model(tmp_path / "barlow_twins.keras")
    assert isinstance(restored, BarlowTwins)
    assert restored.lambda_ == 1e-3 and restored.epsilon == 1e-4
    assert json.loads(json.dumps(restored.get_config())) == json.loads(
        json.dumps(model.get_config())
    )
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(model(x)), atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(restored.project(x, training=False)),
        np.asarray(model.project(x, training=False)),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [({"lambda_": -1e-3}, "lambda_ must be >= 0"), ({"epsilon": -1.0}, "epsilon must be >= 0")],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_barlow_twins(**kwargs)
