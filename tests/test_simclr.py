import keras
import numpy as np
import pytest

from kerassl.models.simclr import SimCLR
from kerassl.testing.method_contract import build_tiny, run_method_contract
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


def test_fit_lowers_the_contrastive_loss():
    model = build_tiny(SimCLR, {"temperature": 0.5}, preset="digits")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    history = model.fit(tiny_float_images(32), batch_size=16, epochs=12, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    assert 0.0 <= history.history["contrastive_accuracy"][-1] <= 1.0


def test_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_tiny(SimCLR, {"temperature": 0})
