import keras
import numpy as np
import pytest

from kerassl.losses import nt_xent
from kerassl.models.simclr import SimCLR
from kerassl.testing.method_contract import (
    STEP_BATCH,
    build_tiny,
    check_config_round_trip,
    check_precision,
    check_train_step,
    run_method_contract,
)
from kerassl.testing.references import np_nt_xent_per_anchor
from kerassl.testing.synthetic import tiny_float_images

CONTRACT_KWARGS = {"temperature": 0.3}


def reference_loss(model, images):
    """NT-Xent (SimCLR eq. 1) of the projections of the step's 2N views, `images` twice."""
    n = len(images)
    z = np.asarray(model.project(np.concatenate([images, images]), training=True), np.float64)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)  # an anchor is not its own candidate
    positives = np.r_[np.arange(n) + n, np.arange(n)]
    return {
        "loss": np_nt_xent_per_anchor(z[:n], z[n:], model.temperature).mean(),
        "contrastive_accuracy": np.mean(np.argmax(similarity, axis=1) == positives),
    }


def test_method_contract(tmp_path):
    run_method_contract(SimCLR, CONTRACT_KWARGS, reference_loss, tmp_path)


def test_mixed_precision():
    check_precision(SimCLR, CONTRACT_KWARGS)


def test_dot_similarity_round_trips_and_trains_on_the_dot_loss():
    # NT-Xent's dot form is checked against its NumPy transcription in tests/test_losses.py;
    # here the model's step must compute it on the un-normalised projections.
    kwargs = {"temperature": 0.3, "similarity": "dot"}
    model = build_tiny(SimCLR, kwargs)
    check_config_round_trip(model, kwargs)

    def dot_loss(model, images):
        z = model.project(np.concatenate([images, images]), training=True)
        return float(nt_xent(z[: len(images)], z[len(images) :], 0.3, similarity="dot")[0])

    images = tiny_float_images(STEP_BATCH)
    cosine = build_tiny(SimCLR, {"temperature": 0.3}).compute_ssl_loss(images, images)[0]
    assert abs(dot_loss(model, images) - float(cosine)) > 1e-2  # the two forms differ here
    check_train_step(model, dot_loss, images)


def test_settings_reach_the_model_through_the_registry():
    from kerassl.config import TrainConfig
    from kerassl.data.presets import get_preset
    from kerassl.pretraining import build_method

    config = TrainConfig(similarity="dot", temperature=0.4, projection_dim=8, hidden_dim=16)
    config.validate()
    model = build_method(config, (16, 16, 1), preset="blur+crop", total_steps=2)
    assert isinstance(model, SimCLR) and (model.similarity, model.temperature) == ("dot", 0.4)
    assert model.augmenter.preset == "blur+crop"
    assert model.augmenter.options == get_preset("crop+blur").with_jitter()


def test_fit_lowers_the_contrastive_loss():
    model = build_tiny(SimCLR, {"temperature": 0.5}, preset="digits")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    history = model.fit(tiny_float_images(32), batch_size=16, epochs=12, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    assert 0.0 <= history.history["contrastive_accuracy"][-1] <= 1.0


def test_rejects_bad_temperature_and_similarity():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_tiny(SimCLR, {"temperature": 0})
    with pytest.raises(ValueError, match="similarity must be one of cosine, dot"):
        build_tiny(SimCLR, {"similarity": "l2"})
