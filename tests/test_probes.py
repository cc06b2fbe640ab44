"""Linear probe, feature extraction, weighted kNN and the kNN monitor."""

import csv

import keras
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kerassl.errors import UserError
from kerassl.evaluation import (
    KNNMonitor,
    choose_c,
    extract_features,
    knn_accuracy,
    knn_predict,
    knn_scores,
    linear_probe,
    topk_accuracy,
)


def clusters(num_classes, per_class, dim=6, spread=0.3, seed=0, offset=10.0):
    """Gaussian blobs around well separated, non-zero-mean centres."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 3, (num_classes, dim)) + offset
    labels = np.repeat(np.arange(num_classes), per_class)
    features = centres[labels] + rng.normal(0, spread, (len(labels), dim))
    return features.astype(np.float32), labels


# ---------------------------------------------------------------- linear probe


def test_probe_separates_separable_features_and_reports_top5():
    x_train, y_train = clusters(8, 4)
    x_test, y_test = clusters(8, 10, seed=1)
    result, dense = linear_probe(x_train, y_train, x_test, y_test, num_classes=8)
    assert result.top1 == 1.0 and result.top5 == 1.0
    assert (result.num_train, result.num_test, result.cv_folds, result.cv_repeats) == (32, 80, 4, 5)
    assert result.c in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0) and result.cv_accuracy >= 0.9
    assert dense.units == 8 and dense.get_config()["activation"] == "softmax"


def test_probe_is_near_chance_on_random_labels():
    x_train, _ = clusters(4, 10)
    x_test, _ = clusters(4, 50, seed=1)
    rng = np.random.default_rng(0)
    result, _ = linear_probe(
        x_train, rng.integers(0, 4, 40), x_test, rng.integers(0, 4, 200), num_classes=4
    )
    assert result.top5 is None and result.top1 < 0.45


@pytest.mark.parametrize(
    "num_classes, present", [(5, [0, 1, 2, 3, 4]), (6, [0, 2, 5]), (3, [0, 2])]
)
def test_folded_dense_reproduces_predict_proba(num_classes, present):
    # Multinomial, absent classes (probability 0) and the binary (sigmoid) case.
    x_train, y_train = clusters(len(present), 6, dim=5, spread=3.0, offset=4.0)
    y_train = np.asarray(present)[y_train]
    x_test, _ = clusters(len(present), 5, dim=5, spread=3.0, seed=2, offset=4.0)
    result, dense = linear_probe(x_train, y_train, x_test, np.zeros(len(x_test)), num_classes)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=result.c, max_iter=1000))
    reference.fit(x_train.astype(np.float64), y_train)  # the probe fits in float64
    expected = np.zeros((len(x_test), num_classes))
    expected[:, reference.classes_] = reference.predict_proba(x_test.astype(np.float64))
    assert 0.05 < expected.max(axis=1).min()  # not saturated: the comparison means something
    np.testing.assert_allclose(np.asarray(dense(x_test)), expected, atol=1e-5)


@pytest.mark.parametrize("per_class, folds, repeats", [(10, 5, 5), (50, 5, 3), (4, 4, 5)])
def test_choose_c_is_the_best_mean_over_repeated_folds(per_class, folds, repeats):
    # Each C scored on >= 500 held-out predictions (<= 5 repeats); score = mean accuracy
    # over every fold of every repeat, recomputed here fold by fold with plain scikit-learn.
    x, y = clusters(4, per_class, spread=6.0)
    grid = (1e-3, 1e-1, 10.0)
    c, score, k, r = choose_c(x, y, seed=3, c_grid=grid)
    assert (k, r) == (folds, repeats)
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=3)
    means = []
    for candidate in grid:
        accuracies = []
        for train, held_out in splitter.split(x, y):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=candidate, max_iter=1000))
            accuracies.append(model.fit(x[train], y[train]).score(x[held_out], y[held_out]))
        assert len(accuracies) == folds * repeats
        means.append(np.mean(accuracies))
    assert 0.3 < max(means) < 1.0  # overlapping classes: C matters and the scores differ
    assert score == pytest.approx(max(means))
    assert c == grid[int(np.argmax(means))]  # first maximum: ties go to the smaller C


def test_chosen_c_never_depends_on_the_test_split():
    x_train, y_train = clusters(4, 6, spread=4.0)
    x_test, y_test = clusters(4, 20, spread=4.0, seed=1)
    result, dense = linear_probe(x_train, y_train, x_test, y_test, num_classes=4)
    scrambled = np.random.default_rng(0).permutation(y_test)
    other_test = x_test[::-1] * 3.0 + 1.0
    result2, dense2 = linear_probe(x_train, y_train, other_test, scrambled, num_classes=4)
    assert (result2.c, result2.cv_accuracy) == (result.c, result.cv_accuracy)
    for a, b in zip(dense.get_weights(), dense2.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert result2.top1 != result.top1  # the scores did change: the test split was used, once


def test_probe_falls_back_to_default_c_with_a_single_example_class():
    x_train, y_train = clusters(3, 4)
    keep = np.r_[0, 4:12]  # class 0 keeps one example
    x_test, y_test = clusters(3, 5, seed=1)
    result, _ = linear_probe(x_train[keep], y_train[keep], x_test, y_test, 3, default_c=0.5)
    assert (result.c, result.cv_accuracy, result.cv_folds, result.cv_repeats) == (0.5, None, 0, 0)
    assert result.top1 == 1.0


def test_probe_rejects_unusable_labels():
    x, y = clusters(2, 3)
    with pytest.raises(UserError, match=r"training labels must be in \[0, 2\); got -1"):
        linear_probe(x, np.r_[y[:-1], -1], x, y, num_classes=2)
    with pytest.raises(UserError, match="at least 2 classes"):
        linear_probe(x, np.zeros_like(y), x, y, num_classes=2)
    with pytest.raises(UserError, match=r"test labels must be in \[0, 2\); got 2"):
        linear_probe(x, y, x, y + 1, num_classes=2)


# ---------------------------------------------------------------- top-k accuracy


def test_topk_accuracy_counts_ranks():
    probabilities = np.array(
        [
            [0.50, 0.20, 0.10, 0.05, 0.05, 0.04, 0.06],  # label 0: top-1 hit
            [0.50, 0.20, 0.10, 0.09, 0.05, 0.04, 0.02],  # label 3: rank 4, top-5 hit
            [0.50, 0.20, 0.10, 0.09, 0.08, 0.02, 0.01],  # label 6: rank 7, miss
            [0.10, 0.60, 0.10, 0.05, 0.05, 0.05, 0.05],  # label 1: top-1 hit
        ]
    )
    assert topk_accuracy(probabilities, np.array([0, 3, 6, 1])) == {"top1": 0.5, "top5": 0.75}
    # Top-5 of 5 classes is 1 by construction: not reported.
    assert topk_accuracy(probabilities[:, :5], np.array([0, 3, 1, 1])) == {"top1": 0.5}
    assert topk_accuracy(probabilities[:0], np.zeros(0)) == {"top1": 0.0, "top5": 0.0}
    with pytest.raises(ValueError, match="k must be an integer >= 1. Received: k=0"):
        topk_accuracy(probabilities, np.zeros(4), ks=(0,))


def test_topk_accuracy_breaks_ties_to_the_smaller_class():
    scores = np.zeros((7, 7))  # every class tied
    labels = np.arange(7)
    assert topk_accuracy(scores, labels) == {"top1": 1 / 7, "top5": 5 / 7}
    # The linear probe's former rule: argmax for top-1, a stable argsort for top-5.
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, (200, 8)).astype(float)  # many ties
    labels = rng.integers(0, 8, 200)
    best5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert topk_accuracy(scores, labels) == {
        "top1": np.mean(np.argmax(scores, axis=1) == labels),
        "top5": np.mean(np.any(best5 == labels[:, None], axis=1)),
    }


# ---------------------------------------------------------------- features


def tiny_encoder(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(4)], name="encoder"
    )


def test_extract_features_scales_uint8_and_batches():
    encoder = tiny_encoder()
    x = np.random.default_rng(0).integers(0, 256, (7, 6, 6, 1), dtype=np.uint8)
    features = extract_features(encoder, x, batch_size=3)
    assert features.dtype == np.float32 and features.shape == (7, 4)
    expected = np.asarray(encoder(x.astype(np.float32) / 255.0))
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    assert extract_features(encoder, x[:0]).shape == (0, 4)


# ---------------------------------------------------------------- kNN


def np_weighted_knn(bank, bank_labels, queries, k, tau):
    """Brute force: for each query sort the bank by cosine similarity and sum exp(s/τ)."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    predictions = []
    for q in queries:
        q = q / np.linalg.norm(q)
        similarity = bank @ q
        order = np.argsort(-similarity)[:k]
        scores = {}
        for i in order:
            scores[bank_labels[i]] = scores.get(bank_labels[i], 0.0) + np.exp(similarity[i] / tau)
        predictions.append(max(sorted(scores), key=lambda c: scores[c]))
    return np.array(predictions)


@pytest.mark.parametrize("k, tau", [(1, 0.07), (5, 0.07), (20, 0.5), (200, 1.0)])
def test_knn_matches_brute_force(k, tau):
    rng = np.random.default_rng(k)
    bank, bank_labels = rng.normal(size=(60, 5)), rng.integers(0, 4, 60)
    queries, query_labels = rng.normal(size=(30, 5)), rng.integers(0, 4, 30)
    expected = np_weighted_knn(bank, bank_labels, queries, k, tau)
    predicted = knn_predict(bank, bank_labels, queries, k=k, temperature=tau, chunk_size=7)
    np.testing.assert_array_equal(predicted, expected)
    assert knn_accuracy(bank, bank_labels, queries, query_labels, k, tau) == pytest.approx(
        np.mean(expected == query_labels)
    )


def test_knn_scores_rank_the_classes_of_the_votes():
    bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    scores = knn_scores(bank, [0, 0, 1, 2], np.array([[1.0, 0.05]]), k=3, temperature=1.0)
    assert scores.shape == (1, 3) and scores[0, 2] == 0.0  # class 2 is not among the top 3
    assert scores[0, 0] > scores[0, 1] > 0.0


def test_one_nn_returns_the_label_of_the_nearest_direction():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    queries = np.array([[5.0, 0.1], [0.2, 3.0], [-0.5, -0.1]])  # scale is irrelevant
    assert knn_accuracy(bank, [2, 0, 1], queries, [2, 0, 1], k=1) == 1.0
    with pytest.raises(ValueError, match=r"k must be an integer >= 1. Received: k=0"):
        knn_accuracy(bank, [2, 0, 1], queries, [2, 0, 1], k=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        knn_accuracy(bank, [2, 0, 1], queries, [2, 0, 1], temperature=0)


class TinySSL(keras.Model):
    """A model with an `encoder`, trained on a dummy objective."""

    def __init__(self):
        super().__init__()
        self.encoder = tiny_encoder()
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.encoder(x))


def test_knn_monitor_logs_into_history_csv(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 6, 6, 1), dtype=np.uint8)
    y = np.arange(16) % 2
    model = TinySSL()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    monitor = KNNMonitor(x[:8], y[:8], x[8:], y[8:], k=3, every=2)
    csv_path = tmp_path / "history.csv"
    model.fit(
        x.astype("float32") / 255,
        rng.normal(size=(16, 1)),
        epochs=3,
        batch_size=8,
        verbose=0,
        callbacks=[monitor, keras.callbacks.CSVLogger(str(csv_path))],
    )
    with open(csv_path) as file:
        rows = list(csv.DictReader(file))
    # First epoch (so the column exists), then every 2nd epoch: epochs 0 and 1, not 2.
    logged = [row["knn_accuracy"] for row in rows]
    assert logged[2] == "NA" and all(0.0 <= float(v) <= 1.0 for v in logged[:2])
    # The value is the kNN accuracy of the encoder's features, not a placeholder.
    monitor.on_epoch_end(1, logs := {})
    expected = knn_accuracy(
        extract_features(model.encoder, x[:8]),
        y[:8],
        extract_features(model.encoder, x[8:]),
        y[8:],
        k=3,
    )
    assert logs["knn_accuracy"] == expected
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        KNNMonitor(x, y, x, y, every=0)
