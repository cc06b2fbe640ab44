"""The optional online probe of the SSL base: trained in the same step on stop-gradient
features, so it reports label separability without changing what the encoder learns."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerassl.config import TrainConfig
from kerassl.optimizers import make_optimizer
from kerassl.pretraining import build_method
from kerassl.testing.method_contract import IMAGE_SHAPE, build_tiny
from kerassl.testing.synthetic import tiny_images

METHOD_OPTIONS = {"simclr": {}, "moco": {"queue_size": 32, "bn_groups": 2}, "barlow_twins": {}}


def build(method: str, probe: bool, seed: int = 0):
    """The tiny method, compiled with `kerassl train`'s default optimizer (AdamW)."""
    options = {**METHOD_OPTIONS[method], "probe_classes": 4 if probe else 0}
    model = build_tiny(method, options, preset="digits", seed=seed)
    defaults = TrainConfig()
    optimizer = make_optimizer(
        defaults.optimizer, defaults.learning_rate, weight_decay=defaults.weight_decay
    )
    model.compile(optimizer=optimizer)
    return model


def probe_data(n: int = 32, batch_size: int = 16) -> tf.data.Dataset:
    """`(images, (labeled_images, labels))` batches, as `pretraining.pretrain` makes them."""
    x, y = tiny_images(n, classes=4, dtype="float32")
    unlabeled = tf.data.Dataset.from_tensor_slices(x).batch(batch_size, drop_remainder=True)
    labeled = tf.data.Dataset.from_tensor_slices((x[:8], y[:8])).batch(8).repeat()
    return tf.data.Dataset.zip(unlabeled, labeled)


def test_build_method_adds_the_probe_when_configured():
    for probe in (True, False):
        config = TrainConfig(hidden_dim=32, projection_dim=16, online_probe=probe)
        model = build_method(config, IMAGE_SHAPE, "digits", total_steps=10, num_classes=4)
        assert model.probe_classes == (4 if probe else 0)
        assert (model.probe is not None) == probe


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_probe_never_changes_what_the_encoder_learns(method):
    data = probe_data()
    with_probe, without = build(method, True), build(method, False)
    for model in (with_probe, without):
        model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    trained = [w for w in with_probe.encoder.weights]
    for a, b in zip(trained, without.encoder.weights, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=a.path)
    assert with_probe.probe is not None and without.probe is None


def test_probe_learns_and_reports_its_metrics():
    model = build("simclr", True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))  # a constant rate for this test
    kernel = np.asarray(model.probe.kernel).copy()
    history = model.fit(probe_data().repeat(), epochs=20, steps_per_epoch=2, verbose=0)
    logs = history.history
    assert {"loss", "contrastive_accuracy", "probe_loss", "probe_accuracy"} <= set(logs)
    assert logs["probe_loss"][-1] < 0.75 * logs["probe_loss"][0], logs["probe_loss"]
    assert logs["probe_accuracy"][-1] >= 0.5, logs["probe_accuracy"]  # 4 classes: chance 0.25
    assert not np.allclose(np.asarray(model.probe.kernel), kernel)


def test_probe_is_ignored_without_labeled_batches_and_survives_save_load(tmp_path):
    model = build("simclr", True)
    images = tiny_images(16, dtype="float32")[0]
    logs = model.fit(images, batch_size=8, epochs=1, verbose=0).history  # images only
    assert logs["probe_loss"] == [0.0]  # nothing to train the probe on: untouched tracker
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert restored.probe_classes == 4
    np.testing.assert_allclose(
        np.asarray(restored.probe.kernel), np.asarray(model.probe.kernel), atol=0
    )
