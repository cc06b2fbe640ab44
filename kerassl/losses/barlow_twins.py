"""Barlow Twins redundancy-reduction loss.

Reference: Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021, eq. (1)-(2) and Algorithm 1.
"""

from __future__ import annotations

import keras
from keras import ops

from kerassl.checks import check

# λ of the paper (≈ 1/d for its d = 8192 projector): the default here and of `BarlowTwins`.
BT_LAMBDA = 5e-3


def _check(lambda_=0.0, epsilon=0.0) -> None:
    """Keras-style `ValueError`s for Python values out of range (tensors pass)."""
    for name, value in (("lambda_", lambda_), ("epsilon", epsilon)):
        if isinstance(value, (int, float)):
            check(name, value)


def batch_moments(z):
    """Per-dimension mean and biased variance over the batch axis, in float32: ([d], [d])."""
    z = ops.cast(z, "float32")
    mean = ops.mean(z, axis=0)
    return mean, ops.mean(ops.square(z - mean), axis=0)


def cross_correlation_from_moments(
    z1, z2, mean1, variance1, mean2, variance2, batch_size, epsilon=1e-5
):
    """Contribution of these rows to the cross-correlation of a larger (global) batch.

    Each dimension is normalised with the given moments, zₙ = (z − μ) / √(σ² + ε) (what
    the official code's `BatchNorm1d(affine=False)` does), and the result is
    z1ₙᵀ z2ₙ / batch_size. Summing it over the replicas of a global batch, with μ, σ² the
    global moments and `batch_size` the global batch size, gives the cross-correlation of
    the global batch (the official code's `all_reduce(c)` after synchronised BatchNorm).

    Args:
        z1, z2: [n, d] embeddings of the two views (this replica's rows).
        mean1, variance1, mean2, variance2: [d] moments of the global z1 and z2.
        batch_size: global number of rows N (int or scalar tensor).
        epsilon: ε added to the variance.

    Returns:
        [d, d] float32 partial cross-correlation.
    """
    _check(epsilon=epsilon)
    z1n = (ops.cast(z1, "float32") - mean1) / ops.sqrt(variance1 + epsilon)  # [n, d]
    z2n = (ops.cast(z2, "float32") - mean2) / ops.sqrt(variance2 + epsilon)  # [n, d]
    return ops.matmul(ops.transpose(z1n), z2n) / ops.cast(batch_size, "float32")  # [d, d]


def cross_correlation(z1, z2, epsilon=1e-5, batch_size=None):
    """Cross-correlation matrix C of Barlow Twins, eq. (2), computed along the batch.

        C_ij = Σ_b z1ₙ[b, i] z2ₙ[b, j] / N,  zₙ = (z − mean_b z) / √(var_b z + ε)

    with the biased batch variance, as in the official implementation (Algorithm 1 writes
    `z.std(0)`; the code uses `BatchNorm1d(affine=False)`, eps 1e-5), so that identical
    inputs give C_ii = var/(var + ε) ≈ 1. Nothing about the batch is baked in: any N works.

    Args:
        z1, z2: [N, d] embeddings of the two views.
        epsilon: ε ≥ 0 added to the variance.
        batch_size: divisor N; defaults to the number of rows of `z1`.

    Returns:
        [d, d] float32 matrix C.
    """
    mean1, variance1 = batch_moments(z1)
    mean2, variance2 = batch_moments(z2)
    if batch_size is None:
        batch_size = ops.shape(z1)[0]
    return cross_correlation_from_moments(
        z1, z2, mean1, variance1, mean2, variance2, batch_size, epsilon
    )


def barlow_twins_from_correlation(c, lambda_=BT_LAMBDA):
    """L_BT = Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²  (eq. 1) for a [d, d] matrix C."""
    _check(lambda_=lambda_)
    d = ops.shape(c)[0]
    diagonal = ops.diagonal(c)  # [d]
    on_diagonal = ops.sum(ops.square(1.0 - diagonal))
    off_diagonal = ops.sum(ops.square(c * (1.0 - ops.eye(d, dtype=c.dtype))))
    return on_diagonal + lambda_ * off_diagonal


def barlow_twins(z1, z2, lambda_=BT_LAMBDA, epsilon=1e-5):
    """Barlow Twins loss of two batches of embeddings of the same images.

    Eq. (1):

        L_BT = Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²,

    the invariance term pushing the diagonal of the cross-correlation C (eq. 2, see
    `cross_correlation`) to 1 and the redundancy-reduction term pushing the off-diagonal
    to 0. λ = 5e-3 (≈ 1/d for the paper's d = 8192 projector).

    Under a distribution strategy, the correlations must be those of the global batch: the
    caller all-gathers z1 and z2 across replicas (`kerassl.models.base.all_gather`) and
    calls this function on the global [G, d] tensors (every replica then computes the same
    global loss). Alternatively, all-reduce `batch_moments` and the partial sums of
    `cross_correlation_from_moments` and call `barlow_twins_from_correlation`.

    Args:
        z1, z2: [N, d] embeddings of the two views (any N ≥ 2).
        lambda_: λ ≥ 0, weight of the redundancy-reduction term.
        epsilon: ε ≥ 0 added to the batch variance.

    Returns:
        `(loss, c)`: the scalar loss and the [d, d] cross-correlation matrix.
    """
    _check(lambda_, epsilon)
    c = cross_correlation(z1, z2, epsilon)
    return barlow_twins_from_correlation(c, lambda_), c


@keras.saving.register_keras_serializable(package="kerassl")
class BarlowTwinsLoss(keras.losses.Loss):
    """`keras.losses.Loss` wrapper of `barlow_twins` (Zbontar et al. 2021, eq. 1).

    Called as `loss(z2, z1)` with the two views' [N, d] embeddings.

    Args:
        lambda_: λ ≥ 0, weight of the off-diagonal term.
        epsilon: ε ≥ 0 added to the batch variance.
        name: loss name.
    """

    def __init__(
        self,
        lambda_: float = BT_LAMBDA,
        epsilon: float = 1e-5,
        name: str = "barlow_twins",
        **kwargs,
    ):
        _check(lambda_, epsilon)
        super().__init__(name=name, **kwargs)
        self.lambda_ = lambda_
        self.epsilon = epsilon

    def call(self, y_true, y_pred):
        return barlow_twins(y_pred, y_true, self.lambda_, self.epsilon)[0]

    def get_config(self):
        return {**super().get_config(), "lambda_": self.lambda_, "epsilon": self.epsilon}
