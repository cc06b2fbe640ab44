"""Diagnostics of an embedding: class similarity, alignment, uniformity and a t-SNE map.

All measures are taken on L2-normalised features (cosine geometry, as the kNN sees it),
in float64 with NumPy, without TensorFlow except for embedding the images.

References:
    Wang, Isola, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere", ICML 2020 (§4.1: `align_loss`, `uniform_loss`).
    van der Maaten, Hinton, "Visualizing Data using t-SNE", JMLR 2008.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import logsumexp

from kerassl.checks import POSITIVE, check, integer_at_least

if TYPE_CHECKING:
    import keras

    from kerassl.data.augment import Augmenter

WANG_ISOLA_ALPHA = 2.0  # the paper's alignment exponent
WANG_ISOLA_T = 2.0  # the paper's uniformity temperature


def _normalize(features: np.ndarray) -> np.ndarray:
    """[N, D] float64 rows scaled to unit norm (a zero row stays zero)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D]. Received: shape={features.shape}")
    norms = np.linalg.norm(features, axis=1, keepdims=True)  # [N, 1]
    return features / np.maximum(norms, 1e-12)


def class_similarity(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean cosine similarity of same-class and of different-class pairs.

    "intra" averages cos(fᵢ, fⱼ) uniformly over all pairs of distinct examples i ≠ j of the
    same class (so a large class weighs more than a small one), "inter" over all pairs of
    different classes; "gap" = intra − inter (larger: classes better separated). The sums
    come from per-class sums of the unit vectors, Σ_{i≠j ∈ c} fᵢ·fⱼ = ‖Σ_{i∈c} fᵢ‖² −
    Σ_{i∈c} ‖fᵢ‖², so memory is O(K·D) and no N×N matrix is formed.

    Args:
        features: [N, D] features (normalised here).
        labels: [N] integer classes >= 0.

    Returns:
        `{"intra": …, "inter": …, "gap": …}` floats; "intra" is NaN when no class has two
        examples, "inter" when there is one class only (and "gap" then too).
    """
    unit = _normalize(features)  # [N, D]
    labels = np.asarray(labels).astype(np.int64).ravel()
    if len(labels) != len(unit):
        raise ValueError(
            f"features and labels must have the same length. Received: {len(unit)} features, "
            f"{len(labels)} labels"
        )
    if len(labels) and labels.min() < 0:
        raise ValueError(f"labels must be >= 0. Received: min label {labels.min()}")
    classes, index = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), unit.shape[1]))  # [K, D] Σ of each class' unit vectors
    np.add.at(sums, index, unit)
    squared = np.sum(unit * unit, axis=1)  # [N] 1, or 0 for a zero feature
    sizes = np.bincount(index, minlength=len(classes)).astype(np.float64)  # [K]

    n = float(len(labels))
    intra_sum = np.sum(sums * sums) - squared.sum()  # Σ over ordered same-class pairs i≠j
    all_sum = float(np.sum(sums.sum(axis=0) ** 2)) - squared.sum()  # Σ over all pairs i≠j
    intra_pairs = float(np.sum(sizes * (sizes - 1)))
    inter_pairs = n * (n - 1) - intra_pairs
    intra = intra_sum / intra_pairs if intra_pairs else math.nan
    inter = (all_sum - intra_sum) / inter_pairs if inter_pairs else math.nan
    return {"intra": float(intra), "inter": float(inter), "gap": float(intra - inter)}


def alignment(z1: np.ndarray, z2: np.ndarray, alpha: float = WANG_ISOLA_ALPHA) -> float:
    """Alignment of positive pairs (Wang & Isola 2020): E ‖f(x) − f(y)‖₂^α.

    The paper's `align_loss(x, y, alpha) = (x - y).norm(p=2, dim=1).pow(alpha).mean()` on
    L2-normalised features; row i of `z1` and row i of `z2` are a positive pair (two views
    of one image). 0 for identical views, at most 2^α; lower is better.

    Args:
        z1: [N, D] features of the first views (normalised here).
        z2: [N, D] features of the second views.
        alpha: exponent α > 0 (the paper's default 2).
    """
    check("alpha", alpha, POSITIVE)
    z1, z2 = _normalize(z1), _normalize(z2)
    if z1.shape != z2.shape or not len(z1):
        raise ValueError(
            f"z1 and z2 must both be [N, D] with N >= 1. Received: {z1.shape}, {z2.shape}"
        )
    distances = np.linalg.norm(z1 - z2, axis=1)  # [N]
    return float(np.mean(distances**alpha))


def uniformity(z: np.ndarray, t: float = WANG_ISOLA_T, chunk_size: int = 1024) -> float:
    """Uniformity (Wang & Isola 2020): log E exp(−t ‖f(x) − f(y)‖₂²) over distinct pairs.

    The paper's `uniform_loss(x, t) = torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()`
    on L2-normalised features: the mean runs over the N(N−1)/2 unordered pairs i < j.
    Computed as a log-sum-exp minus log(pairs), a block of `chunk_size` rows at a time.
    0 when all points coincide, −4t at best for two antipodal points; lower is more uniform.

    Args:
        z: [N, D] features, N >= 2 (normalised here).
        t: temperature t > 0 (the paper's default 2).
        chunk_size: rows per block (memory: chunk_size × N floats).
    """
    check("t", t, POSITIVE)
    check("chunk_size", chunk_size, integer_at_least(1))
    unit = _normalize(z)  # [N, D]
    n = len(unit)
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 points. Received: {n}")
    squared = np.sum(unit * unit, axis=1)  # [N]
    blocks = []
    for start in range(0, n - 1, chunk_size):
        rows = unit[start : start + chunk_size]  # [b, D]
        # [b, N] squared distances ‖zᵢ‖² + ‖zⱼ‖² − 2 zᵢ·zⱼ, clipped at 0 against rounding.
        distances = squared[start : start + len(rows), None] + squared[None, :] - 2 * rows @ unit.T
        i = np.arange(start, start + len(rows))[:, None]
        upper = np.arange(n)[None, :] > i  # [b, N] the pairs i < j
        if upper.any():
            blocks.append(logsumexp(-t * np.maximum(distances[upper], 0.0)))
    pairs = n * (n - 1) / 2
    return float(logsumexp(blocks) - math.log(pairs))


def _subsample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded uniform subsample of at most `size` of n items."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def embedding_diagnostics(
    encoder: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    augmenter: Augmenter | None = None,
    max_images: int = 2000,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float | int]:
    """The diagnostics of an encoder's features on (a subsample of) a labeled split.

    Embeds a seeded uniform subsample of at most `max_images` images with
    `extract_features` (the encoder's output: the representation a probe sees) and
    measures `class_similarity` and `uniformity` (t = 2) on it. With an `augmenter`, also
    the `alignment` (α = 2) of two augmented views of each of these images; each view is
    one call of `augmenter(batch, training=True)` on [0, 1] float batches, which advances
    the augmenter's random stream.

    Args:
        encoder: model mapping [0, 1] float images to [D] features.
        x: uint8 images [N, H, W, C], N >= 2 (the test split).
        y: [N] integer labels >= 0.
        augmenter: e.g. `make_augmenter(preset, seed)`; None skips alignment.
        max_images: subsample size (>= 2).
        seed: seed of the subsample.
        batch_size: images per forward pass.

    Returns:
        JSON-ready `{"num_images": n, "intra": …, "inter": …, "gap": …, "uniformity": …}`
        plus `"alignment"` when an augmenter is given.

    Example:
        >>> embedding_diagnostics(encoder, data.x_test, data.y_test,
        ...                       augmenter=make_augmenter("digits", seed=0))
        {'num_images': 2000, 'intra': 0.61, 'inter': 0.12, 'gap': 0.49, ...}
    """
    from kerassl.evaluation.features import extract_features

    check("max_images", max_images, integer_at_least(2))
    check("batch_size", batch_size, integer_at_least(1))
    x = np.asarray(x)
    y = np.asarray(y).astype(np.int64).ravel()
    if x.ndim != 4 or len(x) != len(y) or len(x) < 2:
        raise ValueError(
            "x must be [N, H, W, C] images and y [N] labels with N >= 2. Received: "
            f"x.shape={x.shape}, y.shape={y.shape}"
        )
    chosen = _subsample(len(x), max_images, seed)
    x, y = x[chosen], y[chosen]
    features = extract_features(encoder, x, batch_size)  # [n, D]
    result: dict[str, float | int] = {"num_images": len(x)}
    result.update(class_similarity(features, y))
    result["uniformity"] = uniformity(features)
    if augmenter is not None:
        scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
        views = ([], [])
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].astype(np.float32) * scale  # [b, H, W, C]
            for view in views:
                augmented = np.asarray(augmenter(batch, training=True), np.float32)
                view.append(extract_features(encoder, augmented, batch_size))
        result["alignment"] = alignment(np.concatenate(views[0]), np.concatenate(views[1]))
    return result


def tsne_png(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    max_points: int = 2000,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """A t-SNE map of the features as a PNG, one colour per class.

    scikit-learn's `TSNE` (PCA initialisation, perplexity min(30, (n − 1)/3), seeded) on
    the L2-normalised features of a seeded uniform subsample of at most `max_points`
    examples, drawn by `figures.embedding_png`.

    Args:
        features: [N, D] features, N >= 2, D >= 2.
        labels: [N] classes in [0, len(class_names)).
        class_names: the name of each class.
        path: the PNG to write.
        max_points: subsample size (>= 2).
        seed: seed of the subsample and of t-SNE.
        title: defaults to "t-SNE of the features (n points)".

    Returns:
        `path` as a `Path`.
    """
    from sklearn.manifold import TSNE

    from kerassl.evaluation.figures import embedding_png

    check("max_points", max_points, integer_at_least(2))
    unit = _normalize(features)  # [N, D]
    labels = np.asarray(labels).astype(np.int64).ravel()
    if len(unit) != len(labels) or len(unit) < 2 or unit.shape[1] < 2:
        raise ValueError(
            "features must be [N, D] with N >= 2, D >= 2 and labels [N]. Received: "
            f"features.shape={unit.shape}, labels.shape={labels.shape}"
        )
    chosen = _subsample(len(unit), max_points, seed)
    unit, labels = unit[chosen], labels[chosen]
    n = len(unit)
    tsne = TSNE(n_components=2, init="pca", perplexity=min(30.0, (n - 1) / 3), random_state=seed)
    points = tsne.fit_transform(unit)  # [n, 2]
    return embedding_png(
        points, labels, class_names, path, title=title or f"t-SNE of the features ({n} points)"
    )
