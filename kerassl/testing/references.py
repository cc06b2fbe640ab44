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


def np_byol(p1, p2, z1, z2):
    """BYOL eq. (2), one sample at a time: ‖q̄ − z̄'‖² with q̄ = q/‖q‖, for the prediction
    of each view against the target projection of the other (L + L̃), averaged over the
    batch. p1, p2: online predictions of views 1 and 2; z1, z2: target projections."""

    def normalised_squared_error(q, z):
        q_bar = q / np.linalg.norm(q)
        z_bar = z / np.linalg.norm(z)
        return np.sum((q_bar - z_bar) ** 2)

    p1, p2, z1, z2 = (np.asarray(a, np.float64) for a in (p1, p2, z1, z2))
    losses = [
        normalised_squared_error(p1[i], z2[i]) + normalised_squared_error(p2[i], z1[i])
        for i in range(len(p1))
    ]
    return np.mean(losses)


def np_simsiam(p1, p2, z1, z2):
    """Algorithm 1 of SimSiam: L = D(p1, z2)/2 + D(p2, z1)/2 with
    D(p, z) = −(normalize(p) · normalize(z)).sum(dim=1).mean()."""

    def D(p, z):  # noqa: N802  (the paper's name)
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        return -(p * z).sum(axis=1).mean()

    p1, p2, z1, z2 = (np.asarray(a, np.float64) for a in (p1, p2, z1, z2))
    return D(p1, z2) / 2 + D(p2, z1) / 2


def np_vicreg(z_a, z_b, lambd=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
    """Algorithm 1 of VICReg (γ = 1 there, a parameter here): invariance `mse_loss`,
    variance `mean(relu(γ − sqrt(var(dim=0) + eps)))` per view with torch's unbiased
    variance, covariance `off_diagonal(cov).pow(2).sum() / D` per view, cov over N − 1."""
    z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    n, d = z_a.shape
    sim_loss = np.mean((z_a - z_b) ** 2)
    std_z_a = np.sqrt(z_a.var(axis=0, ddof=1) + eps)
    std_z_b = np.sqrt(z_b.var(axis=0, ddof=1) + eps)
    std_loss = np.mean(np.maximum(0.0, gamma - std_z_a)) + np.mean(np.maximum(0.0, gamma - std_z_b))
    z_a = z_a - z_a.mean(axis=0)
    z_b = z_b - z_b.mean(axis=0)
    cov_z_a = z_a.T @ z_a / (n - 1)
    cov_z_b = z_b.T @ z_b / (n - 1)
    cov_loss = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                cov_loss += cov_z_a[i, j] ** 2 / d + cov_z_b[i, j] ** 2 / d
    return lambd * sim_loss + mu * std_loss + nu * cov_loss


def np_byol_momentum(step, total_steps, base):
    """BYOL section 3.2: τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 at step k of K."""
    return 1 - (1 - base) * (np.cos(np.pi * min(step, total_steps) / total_steps) + 1) / 2
