"""Confusion matrix, per-class accuracy and the embedding diagnostics, against brute-force
NumPy transcriptions (one pair at a time)."""

import itertools
import math

import keras
import numpy as np
import pytest

from kerassl.data.augment import make_augmenter
from kerassl.evaluation.diagnostics import (
    alignment,
    class_similarity,
    embedding_diagnostics,
    tsne_png,
    uniformity,
)
from kerassl.evaluation.features import extract_features
from kerassl.evaluation.metrics import confusion_matrix, per_class_accuracy
from kerassl.testing.png import read_png
from kerassl.testing.synthetic import tiny_images


def _unit(z):
    z = np.asarray(z, np.float64)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def np_class_similarity(features, labels):
    """Mean cosine over ordered pairs i ≠ j, same class / different class."""
    f = _unit(features)
    same, different = [], []
    for i in range(len(f)):
        for j in range(len(f)):
            if i != j:
                (same if labels[i] == labels[j] else different).append(f[i] @ f[j])
    return (np.mean(same) if same else np.nan), (np.mean(different) if different else np.nan)


def np_align_loss(x, y, alpha):
    """Wang & Isola's align_loss: (x - y).norm(p=2, dim=1).pow(alpha).mean()."""
    x, y = _unit(x), _unit(y)
    return np.mean([np.sqrt(np.sum((x[i] - y[i]) ** 2)) ** alpha for i in range(len(x))])


def np_uniform_loss(x, t):
    """Wang & Isola's uniform_loss: pdist(x).pow(2).mul(-t).exp().mean().log()."""
    x = _unit(x)
    pairs = itertools.combinations(range(len(x)), 2)
    return np.log(np.mean([np.exp(-t * np.sum((x[i] - x[j]) ** 2)) for i, j in pairs]))


# --------------------------------------------------------------- confusion, per class


def test_confusion_matrix_counts_pairs_and_per_class_accuracy_is_recall():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    labels[labels == 2] = 1  # class 2 has no examples
    confusion = confusion_matrix(labels, predictions, num_classes=4)
    expected = np.zeros((4, 4), np.int64)
    for true, predicted in zip(labels, predictions, strict=True):
        expected[true, predicted] += 1
    assert confusion.dtype == np.int64
    np.testing.assert_array_equal(confusion, expected)

    recall = per_class_accuracy(confusion)
    for k in (0, 1, 3):
        assert recall[k] == pytest.approx(np.mean(predictions[labels == k] == k))
    assert math.isnan(recall[2])


def test_confusion_matrix_rejects_bad_inputs():
    with pytest.raises(ValueError, match="predictions must be in"):
        confusion_matrix(np.array([0, 1]), np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 2)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(np.array([0]), np.array([0]), 0)
    np.testing.assert_array_equal(confusion_matrix(np.array([]), np.array([]), 2), 0)


# --------------------------------------------------------------- class similarity


@pytest.mark.parametrize("n, d, classes", [(9, 3, 2), (17, 5, 4), (6, 2, 6)])
def test_class_similarity_matches_pairwise_reference(n, d, classes):
    rng = np.random.default_rng(n)
    features = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, (n, 1))  # norms differ
    labels = np.r_[np.arange(classes), rng.integers(0, classes, n - classes)]
    result = class_similarity(features, labels)
    if n == classes:  # every class a singleton: no same-class pair
        assert math.isnan(result["intra"]) and math.isnan(result["gap"])
        _, inter = np_class_similarity(features, labels)
    else:
        intra, inter = np_class_similarity(features, labels)
        assert result["intra"] == pytest.approx(intra, abs=1e-12)
        assert result["gap"] == pytest.approx(intra - inter, abs=1e-12)
    assert result["inter"] == pytest.approx(inter, abs=1e-12)


def test_class_similarity_of_separated_clusters():
    rng = np.random.default_rng(1)
    centres = np.eye(3) * 10
    labels = np.repeat(np.arange(3), 5)
    features = centres[labels] + rng.normal(0, 0.1, (15, 3))
    result = class_similarity(features, labels)
    assert result["intra"] > 0.99 and abs(result["inter"]) < 0.05 and result["gap"] > 0.9
    one_class = class_similarity(features, np.zeros(15))
    assert math.isnan(one_class["inter"])
    with pytest.raises(ValueError, match=">= 0"):
        class_similarity(features, labels - 1)


# --------------------------------------------------------------- alignment, uniformity


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.5])
def test_alignment_matches_reference(alpha):
    rng = np.random.default_rng(2)
    z1, z2 = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    assert alignment(z1, z2, alpha) == pytest.approx(np_align_loss(z1, z2, alpha), rel=1e-12)
    assert alignment(z1, 3 * z1, alpha) == pytest.approx(0.0, abs=1e-12)  # same direction
    assert alignment(z1, -z1, alpha) == pytest.approx(2.0**alpha)  # antipodal views
    with pytest.raises(ValueError, match="alpha must be > 0"):
        alignment(z1, z2, alpha=0)
    with pytest.raises(ValueError, match="z1 and z2"):
        alignment(z1, z2[:3])


@pytest.mark.parametrize("t, chunk_size", [(2.0, 1024), (0.5, 3), (7.0, 1)])
def test_uniformity_matches_reference(t, chunk_size):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(11, 5))
    expected = np_uniform_loss(z, t)
    assert uniformity(z, t, chunk_size=chunk_size) == pytest.approx(expected, rel=1e-10)


def test_uniformity_extremes():
    same = np.tile([[0.3, -1.0, 2.0]], (6, 1))
    assert uniformity(same) == pytest.approx(0.0, abs=1e-12)  # log E exp(−t·0)
    antipodal = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(antipodal, t=2.0) == pytest.approx(-8.0)  # −t·‖2‖²
    # Large t: exp(−t·d²) underflows in float64, the log-sum-exp does not.
    assert uniformity(antipodal, t=1e3) == pytest.approx(-4e3)
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(same[:1])
    with pytest.raises(ValueError, match="t must be > 0"):
        uniformity(same, t=-1.0)


# --------------------------------------------------------------- encoder, t-SNE


def _tiny_encoder(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((16, 16, 1)), keras.layers.Flatten(), keras.layers.Dense(8)]
    )


def test_embedding_diagnostics_on_a_tiny_encoder():
    x, y = tiny_images(n=16, size=16, channels=1, classes=4)
    encoder = _tiny_encoder()
    result = embedding_diagnostics(
        encoder, x, y, augmenter=make_augmenter("digits", seed=0), batch_size=6
    )
    assert set(result) == {"num_images", "intra", "inter", "gap", "uniformity", "alignment"}
    assert result["num_images"] == 16
    assert all(
        math.isfinite(v) and isinstance(v, float) for k, v in result.items() if k != "num_images"
    )
    # On the whole split, the values are those of the encoder's own features.
    features = extract_features(encoder, x)
    assert result["uniformity"] == pytest.approx(uniformity(features), rel=1e-5)
    assert result["gap"] == pytest.approx(class_similarity(features, y)["gap"], rel=1e-5, abs=1e-6)
    assert 0 < result["alignment"] <= 4  # augmented views differ, on the unit sphere

    subsample = embedding_diagnostics(encoder, x, y, max_images=8, seed=1)
    assert subsample["num_images"] == 8 and "alignment" not in subsample
    again = embedding_diagnostics(encoder, x, y, max_images=8, seed=1)
    assert again == subsample


def test_tsne_png_of_twelve_points(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.arange(12) % 3
    features = np.eye(5)[labels] * 5 + rng.normal(0, 0.3, (12, 5))
    path = tsne_png(features, labels, ["zero", "one", "two"], tmp_path / "tsne.png", seed=0)
    assert path == tmp_path / "tsne.png"
    height, width, _ = read_png(path).shape
    assert height > 100 and width > 100
    assert [p.name for p in tmp_path.iterdir()] == ["tsne.png"]  # no temporary left
    subsampled = tsne_png(features, labels, ["a", "b", "c"], tmp_path / "few.png", max_points=5)
    read_png(subsampled)
    with pytest.raises(ValueError, match="labels must be in"):
        tsne_png(features, labels + 1, ["a", "b", "c"], tmp_path / "bad.png")
