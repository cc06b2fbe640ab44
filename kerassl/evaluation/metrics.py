"""Top-k accuracy, the one scoring rule of the probe, the kNN and the supervised baselines."""

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
