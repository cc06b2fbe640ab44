"""NumPy transcriptions of the papers' losses, one anchor or one matrix entry at a time.

The reference every loss test and every method's step test compares with (float64, no
vectorisation tricks, so that a reader can check them against the papers line by line).
"""

from __future__ import annotations

import numpy as np


def np_nt_xent_per_anchor(z1, z2, tau, similarity="cosine"):
    """SimCLR eq. (1), one anchor at a time: ℓ(i, j) over the 2N views, anchors [z1; z2].
    sim(u, v) is the cosine similarity, or with `similarity="dot"` uᵀv without ℓ2
    normalisation (the paper's Table 5 "dot product")."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    if similarity == "cosine":
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    two_n = len(z)
    n = two_n // 2
    losses = []
    for i in range(two_n):
        j = (i + n) % two_n  # the other view of image i
        numerator = np.exp(z[i] @ z[j] / tau)
        denominator = sum(np.exp(z[i] @ z[k] / tau) for k in range(two_n) if k != i)
        losses.append(-np.log(numerator / denominator))
    return np.array(losses)


def np_info_nce(q, k, queue, tau):
    """MoCo eq. (1), one query at a time."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    losses = []
    for qi, ki in zip(q, k, strict=True):
        positive = np.exp(qi @ ki / tau)
        negatives = sum(np.exp(qi @ kj / tau) for kj in queue)
        losses.append(-np.log(positive / (positive + negatives)))
    return np.mean(losses)


def np_barlow_twins(z_a, z_b, lambd, eps):
    """Algorithm 1 of Barlow Twins, with the official code's BatchNorm1d normalisation
    (biased variance + eps); returns (loss, c)."""
    n, d = z_a.shape
    z_a_norm = (z_a - z_a.mean(0)) / np.sqrt(z_a.var(0) + eps)
    z_b_norm = (z_b - z_b.mean(0)) / np.sqrt(z_b.var(0) + eps)
    c = z_a_norm.T @ z_b_norm / n
    loss = 0.0
    for i in range(d):
        for j in range(d):
            loss += (1 - c[i, j]) ** 2 if i == j else lambd * c[i, j] ** 2
    return loss, c
