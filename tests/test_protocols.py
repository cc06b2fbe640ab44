"""The evaluation protocols: separable features → ~100 %, random ones → ~chance, and no
protocol's predictions or choices depend on the test labels."""

import keras
import numpy as np
import pytest

from kerassl.data.registry import ImageData
from kerassl.data.splits import PerClass
from kerassl.evaluation.cells import draw_split, feature_cache, run_cell, score
from kerassl.evaluation.finetune import FineTuner
from kerassl.evaluation.options import PROTOCOLS, ProtocolOptions
from kerassl.testing.fake_run import build_fake_models

K = 4
FAST = ProtocolOptions(
    max_epochs=30,
    patience=5,
    fixed_epochs=5,
    mlp_hidden=32,
    batch_size=16,
    consistency_ratio=2,
    consistency_steps=100,
)


def _clusters(n_per_class: int, separable: bool, seed: int, side: int = 4):
    """uint8 [n, side, side, 1] "images" whose pixels are the features: class c lights the
    c-th block of pixels (separable) or labels are drawn independently of the pixels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(K), n_per_class)
    pixels = rng.integers(0, 60, (len(labels), side * side))
    if separable:
        block = side * side // K
        for c in range(K):
            pixels[labels == c, c * block : (c + 1) * block] += 180
    else:
        labels = rng.permutation(labels)
    return pixels.reshape(-1, side, side, 1).astype(np.uint8), labels


def _data(separable: bool, n_train=40, n_test=60) -> ImageData:
    x_train, y_train = _clusters(n_train, separable, seed=1)
    x_test, y_test = _clusters(n_test // K, separable, seed=2)
    return ImageData(
        name="clusters",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=[f"c{i}" for i in range(K)],
        preset="none",
    )


def _flatten_encoder(side: int = 4) -> keras.Model:
    inputs = keras.Input((side, side, 1))
    return keras.Model(inputs, keras.layers.Flatten()(inputs))


@pytest.mark.parametrize("protocol", ["linear", "mlp", "knn", "1nn"])
def test_feature_protocols_separable_vs_random(protocol):
    encoder = _flatten_encoder()
    for separable, low, high in ((True, 0.95, 1.0), (False, 0.0, 0.5)):
        data = _data(separable)
        split = draw_split(data, 40, seed=0, validation=0.25)
        row = run_cell(protocol, encoder, data, split, preset="none", seed=0, options=FAST)[0]
        assert low <= row["top1"] <= high, (protocol, separable, row["top1"])
        assert row["num_labeled"] == 40 and row["num_validation"] == 12
        assert sum(map(sum, row["confusion"])) == len(data.y_test)
        assert ("top2" in row) == (protocol != "1nn")  # one vote ranks no second class


def test_no_protocol_sees_the_test_labels():
    """Poisoned test labels change the scores' comparison, never the test predictions nor
    any choice (C, epoch, k)."""
    encoder, _ = build_fake_models(image_size=8, channels=1, num_classes=K, seed=0)
    data = _data(True, n_train=12, n_test=16)
    data = ImageData(
        name="clusters8",
        x_train=np.repeat(np.repeat(data.x_train, 2, axis=1), 2, axis=2),
        y_train=data.y_train,
        x_test=np.repeat(np.repeat(data.x_test, 2, axis=1), 2, axis=2),
        y_test=data.y_test,
        class_names=data.class_names,
        preset="none",
    )
    rng = np.random.default_rng(7)
    poisoned = ImageData(**{**vars(data), "y_test": rng.permutation(data.y_test[::-1])})
    split = draw_split(data, 24, seed=3, validation=0.25)
    for protocol in PROTOCOLS:
        runs = [
            run_cell(protocol, encoder, d, split, preset="none", seed=0, options=FAST)
            for d in (data, poisoned)
        ]
        (clean_row, clean), (poisoned_row, dirty) = runs
        np.testing.assert_allclose(clean.scores, dirty.scores, atol=1e-6, err_msg=protocol)
        assert clean_row["selected"] == poisoned_row["selected"], protocol
        assert clean_row["schedule"] == poisoned_row["schedule"], protocol


def test_finetune_fixed_schedule_at_one_label_per_class_and_copy():
    encoder, _ = build_fake_models(image_size=8, channels=1, num_classes=K, seed=1)
    before = [w.copy() for w in encoder.get_weights()]
    data = _data(True, n_train=8, n_test=8)
    data = ImageData(
        **{
            **vars(data),
            "x_train": np.repeat(np.repeat(data.x_train, 2, axis=1), 2, axis=2),
            "x_test": np.repeat(np.repeat(data.x_test, 2, axis=1), 2, axis=2),
        }
    )
    split = draw_split(data, PerClass(1), seed=0, validation=0.2)
    assert len(split.validation) == 0
    row, outcome = run_cell(
        "finetune", encoder, data, split, preset="fashion", seed=0, options=FAST
    )
    assert row["schedule"].startswith("fixed 5 epochs (no validation labels")
    assert row["selected"]["epochs_run"] == 5
    assert row["labels"] == "1/class"
    for old, new in zip(before, encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # the evaluated encoder is not modified
    assert outcome.classifier.predict(data.x_test[:2] / 255.0, verbose=0).shape == (2, K)


def test_finetuner_encoder_learns_at_its_fraction_of_the_rate():
    """Adam's first update moves each weight with a gradient by its learning rate: the
    encoder's by `encoder_lr_scale` × the head's."""
    moved = {}
    for scale in (1.0, 0.01):
        encoder, _ = build_fake_models(image_size=8, channels=1, num_classes=K, seed=2)
        start = [w.copy() for w in encoder.get_weights()]
        model = FineTuner(encoder, keras.layers.Dense(K, activation="softmax"), scale)
        model.compile(
            optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.0),
            loss="sparse_categorical_crossentropy",
        )
        x = np.random.default_rng(0).random((8, 8, 8, 1)).astype("float32")
        model.fit(x, np.arange(8) % K, batch_size=8, epochs=1, verbose=0)
        moved[scale] = max(
            float(np.abs(a - b).max()) for a, b in zip(start, encoder.get_weights(), strict=True)
        )
    assert moved[1.0] == pytest.approx(1e-2, rel=0.05)
    assert moved[0.01] == pytest.approx(1e-4, rel=0.05)


def test_score_topk_and_confusion():
    scores = np.array([[0.1, 0.6, 0.3], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]])
    result = score(scores, np.array([1, 2, 2, 1]), num_classes=3)
    assert result["top1"] == 0.5 and result["top2"] == 0.75 and "top3" not in result
    assert result["confusion"] == [[0, 0, 0], [1, 1, 0], [1, 0, 1]]
    assert result["per_class"] == [None, 0.5, 0.5]


def test_feature_cache_embeds_each_image_once():
    calls = []

    class Counting(keras.Model):
        def __init__(self):
            super().__init__()
            self.flat = keras.layers.Flatten()

        def call(self, x):
            return self.flat(x)

        def predict_on_batch(self, x):
            calls.append(len(x))
            return super().predict_on_batch(x)

    model = Counting()
    model.build((None, 4, 4, 1))
    data = _data(True)
    cache = feature_cache(model, data)
    np.testing.assert_allclose(cache.train([3, 1]), data.x_train[[3, 1]].reshape(2, -1) / 255.0)
    cache.train([1, 3, 5])
    assert calls == [2, 1]
