"""Scores of predictions: top-k accuracy (the one scoring rule of the probe, the kNN and the
supervised baselines), the confusion matrix and per-class accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kerassl.checks import check, integer_at_least


def topk_accuracy(
    scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Fraction of examples whose label is among their k best-scored classes.

    Classes are ranked by decreasing score with a stable sort, so a tie goes to the
    smaller class index (top-1 is `argmax`). Top-k is reported only when k is smaller
    than the number of classes (with k >= K classes it is 1 by construction); top-1
    always is.

    Args:
        scores: [N, K] class scores (probabilities, logits or votes).
        labels: [N] integer labels; a label outside [0, K) is never a hit.
        ks: the k to report.

    Returns:
        `{"top1": …, "top5": …}`: one `f"top{k}"` entry per reported k, fractions in
        [0, 1] (0.0 for no examples).

    Example:
        >>> topk_accuracy(np.array([[0.1, 0.7, 0.2]]), np.array([2]), ks=(1, 2))
        {'top1': 0.0, 'top2': 1.0}
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(np.int64).ravel()
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(
            "scores must be [N, K] and labels [N]. Received: "
            f"scores.shape={scores.shape}, labels.shape={labels.shape}"
        )
    for k in ks:
        check("k", k, integer_at_least(1))
    reported = [k for k in ks if k == 1 or k < scores.shape[1]]
    if not len(labels) or not reported:
        return dict.fromkeys((f"top{k}" for k in reported), 0.0)
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, : max(reported)]  # [N, k_max]
    hits = ranked == labels[:, None]  # [N, k_max]: at most one hit per row
    return {f"top{k}": float(np.mean(hits[:, :k].any(axis=1))) for k in reported}


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
        labels: [N] true classes in [0, K).
        predictions: [N] predicted classes in [0, K) (e.g. `argmax` of the scores).
        num_classes: K.

    Returns:
        int64 [K, K]: entry (i, j) counts the examples of class i predicted as j; rows sum
        to the class sizes, the trace is the number of correct predictions.

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
        array([[1, 0],
               [1, 1]])
    """
    check("num_classes", num_classes, integer_at_least(1))
    labels = np.asarray(labels).ravel()
    predictions = np.asarray(predictions).ravel()
    if len(labels) != len(predictions):
        raise ValueError(
            "labels and predictions must have the same length. Received: "
            f"labels.shape={labels.shape}, predictions.shape={predictions.shape}"
        )
    for name, values in (("labels", labels), ("predictions", predictions)):
        if len(values) and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must be in [0, {num_classes}). Received: values in "
                f"[{values.min()}, {values.max()}]"
            )
    pairs = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)  # [N]
    counts = np.bincount(pairs, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class: the fraction of its examples predicted as itself.

    Args:
        confusion: [K, K] counts, rows = true class (as from `confusion_matrix`).

    Returns:
        float64 [K]: diagonal / row sum; NaN for a class with no examples.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be [K, K]. Received: shape={confusion.shape}")
    support = confusion.sum(axis=1).astype(np.float64)  # [K] examples per true class
    correct = np.diag(confusion).astype(np.float64)  # [K]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, correct / support, np.nan)
