import keras
import numpy as np
import pytest

from kerassl.data.augment import make_augmenter
from kerassl.models.encoders import build_encoder
from kerassl.models.heads import build_head
from kerassl.models.simclr import SimCLR
from kerassl.testing.synthetic import tiny_images


def make_simclr(seed=0, temperature=0.5, preset="digits"):
    keras.utils.set_random_seed(seed)
    encoder = build_encoder("cnn", (16, 16, 1), filters=(8, 16), convs_per_block=1)
    head = build_head("mlp", encoder.output_shape[-1], output_dim=16, hidden_dim=32)
    return SimCLR(encoder, head, make_augmenter(preset, seed=seed), temperature=temperature)


def test_fit_lowers_the_contrastive_loss():
    x, _ = tiny_images(32, 16)
    model = make_simclr()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    history = model.fit(x.astype("float32") / 255, batch_size=16, epochs=12, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    assert 0.0 <= history.history["contrastive_accuracy"][-1] <= 1.0


def test_train_step_reports_the_nt_xent_of_its_views():
    # With an identity augmenter the two views are equal, so the loss must be the NT-Xent
    # of identical embeddings, recomputed here from the model's own projections.
    from kerassl.losses.nt_xent import nt_xent

    x, _ = tiny_images(8, 16)
    images = x.astype("float32") / 255
    model = make_simclr(preset="none")
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = model.train_on_batch(images, return_dict=True)
    z = model.project(np.concatenate([images, images]), training=True)
    expected, _, _ = nt_xent(z[:8], z[8:], 0.5)
    np.testing.assert_allclose(logs["loss"], float(expected), rtol=1e-4)


def test_save_load_round_trip(tmp_path):
    x, _ = tiny_images(16, 16)
    images = x.astype("float32") / 255
    model = make_simclr(temperature=0.2)
    model.compile(optimizer="adam")
    model.fit(images, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "simclr.keras")
    restored = keras.saving.load_model(tmp_path / "simclr.keras")
    assert isinstance(restored, SimCLR) and restored.temperature == 0.2
    np.testing.assert_allclose(np.asarray(restored(images)), np.asarray(model(images)), atol=1e-5)
    model.encoder.save(tmp_path / "encoder.keras")
    encoder = keras.saving.load_model(tmp_path / "encoder.keras")
    np.testing.assert_allclose(
        np.asarray(encoder(images)), np.asarray(model.encoder(images)), atol=1e-5
    )


def test_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        make_simclr(temperature=0)
