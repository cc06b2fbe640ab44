"""Supervised baselines: architectures, augmentation, training protocol, flip decision."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from kerassl import supervised
from kerassl.data.splits import Split, label_split
from kerassl.models import classifiers
from kerassl.models.classifiers import build_classifier, resolve_weights
from kerassl.stopping import best_epoch
from kerassl.supervised import (
    evaluate_classifier,
    fit_supervised,
    label_augmenter,
    supervised_baseline,
)


def _images(n: int, size: int = 16, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)


def _bright_dark(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes a CNN separates in a few steps: dark vs bright noise images."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 80, (n, 12, 12, 1)) + 170 * y[:, None, None, None]
    return x.astype(np.uint8), y.astype(np.int64)


def test_study_a_cnn_architecture():
    model = build_classifier("cnn", (28, 28, 1), num_classes=10)
    layers = model.get_layer("cnn_trunk").layers
    convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    pools = [layer for layer in layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert [c.filters for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [n.momentum for n in norms] == [0.9, 0.9, 0.9]
    assert [d.rate for d in drops] == [0.2, 0.2, 0.2] and len(pools) == 3
    assert model.output_shape == (None, 10)
    assert model.get_layer("predictions").activation.__name__ == "softmax"


@pytest.mark.parametrize("name", ["cnn", "cnn_deep", "mlp"])
def test_classifiers_output_probabilities(name):
    model = build_classifier(name, (16, 16, 1), num_classes=7)
    probabilities = model.predict(_images(4) / 255.0, verbose=0)
    assert probabilities.shape == (4, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms and all(layer.momentum == 0.9 for layer in norms)


def test_cnn_deep_has_dense_classifier_and_config_roundtrip(tmp_path):
    model = build_classifier("cnn_deep", (16, 16, 1), 3, dense_units=(64,), dense_dropout=0.3)
    assert model.get_layer("dense0").units == 64
    assert model.get_layer("dense0_dropout").rate == 0.3
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    x = _images(3) / 255.0
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0))


def test_build_classifier_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name must be one of"):
        build_classifier("vgg", (16, 16, 1), 10)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        build_classifier("cnn", (16, 16, 1), 1)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\). Received: dropout=1.5"):
        build_classifier("mlp", (16, 16, 1), 10, dropout=1.5)


def test_label_augmenter_random_in_training_identity_at_inference():
    x = _images(6, seed=1).astype(np.float32) / 255.0
    augmenter = label_augmenter(seed=3)
    np.testing.assert_array_equal(np.asarray(augmenter(x, training=False)), x)
    first = np.asarray(augmenter(x, training=True))
    second = np.asarray(augmenter(x, training=True))
    assert first.shape == x.shape and first.min() >= 0.0 and first.max() <= 1.0
    assert not np.allclose(first, x) and not np.allclose(first, second)
    assert [type(layer).__name__ for layer in label_augmenter(flip=True).layers] == [
        "RandomFlip",
        "RandomRotation",
        "RandomTranslation",
        "RandomZoom",
    ]
    with pytest.raises(ValueError, match="rotation must be in"):
        label_augmenter(rotation=0.7)


def test_train_dataset_keeps_pairs_and_scales():
    x = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1) * 50
    y = np.arange(5)
    dataset = supervised.train_dataset(x, y, batch_size=2, seed=0)
    epochs = [list(dataset) for _ in range(6)]
    assert all([b[0].shape[0] for b in batches] == [2, 2] for batches in epochs)
    dropped = set()
    for batches in epochs:
        images = np.concatenate([b[0].numpy() for b in batches]).ravel()
        labels = np.concatenate([b[1].numpy() for b in batches])
        np.testing.assert_allclose(images, labels * 50 / 255.0, rtol=1e-6)
        assert len(set(labels.tolist())) == 4
        dropped |= set(range(5)) - set(labels.tolist())
    assert len(dropped) > 1  # reshuffled: a different remainder is left out
    small = list(supervised.train_dataset(x[:3], y[:3], batch_size=8))
    assert [b[0].shape[0] for b in small] == [3]


def test_fit_supervised_learns_and_restores_best_validation_weights():
    x, y = _bright_dark(48)
    y_train = y.copy()
    y_train[40:] = -1  # unlabeled: must never be used
    split = Split(labeled=np.arange(0, 32), validation=np.arange(32, 40))
    model = build_classifier("cnn", x.shape[1:], 2, filters=(8, 16), dropout=0.0)
    history = fit_supervised(
        model, x, y_train, split, epochs=12, batch_size=8, learning_rate=3e-3, patience=4
    )
    val_losses = history.history["val_loss"]
    assert "val_accuracy" in history.history and len(val_losses) <= 12
    # The stopping rule's epoch (kerassl.stopping) is the one whose weights are left.
    kept = best_epoch(history.history, validation=True)
    final = model.evaluate(x[32:40] / 255.0, y[32:40], verbose=0, return_dict=True)
    assert final["loss"] == pytest.approx(val_losses[kept - 1], rel=1e-4, abs=1e-5)
    assert evaluate_classifier(model, x[40:], y[40:])["top1"] == 1.0


def test_fit_supervised_without_validation_monitors_training_loss():
    x, y = _bright_dark(16)
    model = build_classifier("mlp", x.shape[1:], 2, hidden_units=(16,))
    history = fit_supervised(model, x, y, Split(labeled=np.arange(16)), epochs=2, augment=False)
    assert "val_loss" not in history.history and len(history.history["loss"]) == 2


def test_fit_supervised_rejects_unlabeled_indices():
    x, y = _bright_dark(8)
    y[3] = -1
    model = build_classifier("mlp", x.shape[1:], 2, hidden_units=(8,))
    with pytest.raises(ValueError, match="labeled examples"):
        fit_supervised(model, x, y, Split(labeled=np.arange(8)), epochs=1)


def test_resolve_weights_uses_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    assert classifiers._keras_homes()[0] == str(tmp_path / "keras_home")
    monkeypatch.setattr(classifiers, "_keras_homes", lambda: [str(tmp_path)])
    assert resolve_weights("inceptionv3", "auto") is None
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5").touch()
    assert resolve_weights("inceptionv3", "auto") == "imagenet"
    assert resolve_weights("resnet50", "auto") is None
    assert resolve_weights("resnet50", None) is None
    with pytest.raises(ValueError, match="weights must be"):
        resolve_weights("resnet50", "places365")


def test_supervised_baseline_on_digits_beats_chance():
    from kerassl.data.registry import load_dataset

    data = load_dataset("digits")
    split = label_split(data.y_train, 100, seed=0, validation=0.2)
    metrics, classifier = supervised_baseline(
        data, split, flip=False, model="cnn", epochs=30, seed=0
    )
    assert set(metrics) == {"model", "top1", "top5", "epochs_run", "num_labeled"}
    assert metrics["num_labeled"] == 100 and 1 <= metrics["epochs_run"] <= 30
    assert metrics["top1"] > 0.4  # chance is 0.1
    assert metrics["top5"] >= metrics["top1"]
    probabilities = classifier.predict(data.x_test[:4] / 255.0, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_supervised_baseline_flips_as_the_caller_says(monkeypatch):
    """The flip comes from the caller's resolved augmentation, never from `data.preset`."""
    x, y = _bright_dark(12)
    data = SimpleNamespace(
        x_train=x, y_train=y, x_test=x[:4], y_test=y[:4], num_classes=2, preset="digits"
    )
    seen = {}

    def fit_spy(model, x_train, y_train, split, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(epoch=[0, 1])

    monkeypatch.setattr(supervised, "fit_supervised", fit_spy)
    split = Split(labeled=np.arange(8), validation=np.arange(8, 12))
    metrics, _ = supervised_baseline(data, split, flip=True, model="mlp", hidden_units=(4,))
    assert seen["flip"] is True  # a "digits" preset does not veto the caller's flip
    assert metrics["num_labeled"] == 12
    with pytest.raises(TypeError, match="flip"):
        supervised_baseline(data, split, model="mlp")


def test_no_epoch_is_kept_before_min_steps_nor_past_the_step_cap(monkeypatch):
    """At 32 labels in batches of 8 an epoch is 4 steps: 100 steps are 25 epochs, capped
    so that the last epoch can still be kept; `max_steps` cuts the epochs."""
    made = []

    class Recording(supervised.BestEpoch):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(supervised, "BestEpoch", Recording)
    x, y = _bright_dark(40)
    model = build_classifier("mlp", x.shape[1:], 2, hidden_units=(8,))
    validation = (x[32:], y[32:])
    history = supervised.train_classifier(model, x[:32], y[:32], validation, epochs=6, batch_size=8)
    assert made[-1].start_from_epoch == 5 and len(history.epoch) == 6
    history = supervised.train_classifier(
        model, x[:32], y[:32], validation, epochs=50, batch_size=8, min_steps=8, max_steps=20
    )
    assert made[-1].start_from_epoch == 2 and len(history.epoch) == 5  # ceil(20 / 4)
