"""VICReg: variance-invariance-covariance regularisation.

Reference: Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022, eq. (1)-(6) and Algorithm 1.
"""

from __future__ import annotations

import keras
from keras import ops

from kerassl.checks import check

# λ (invariance), μ (variance), ν (covariance) of the paper: the defaults here, of `VICReg`
# and of `--vicreg-lambda/--vicreg-mu/--vicreg-nu`.
VICREG_LAMBDA = 25.0
VICREG_MU = 25.0
VICREG_NU = 1.0
VICREG_GAMMA = 1.0  # target standard deviation γ of every dimension
VICREG_EPSILON = 1e-4  # ε under the square root of the variance


def _check(**values) -> None:
    """Keras-style `ValueError`s for Python values out of range (tensors pass)."""
    for name, value in values.items():
        if isinstance(value, (int, float)):
            check(name, value)


def invariance(z1, z2):
    """s(Z, Z'): the mean squared difference of the two views' [N, d] embeddings, over
    rows and dimensions (Algorithm 1's `F.mse_loss`; eq. 5 sums the dimensions instead,
    a factor d that λ = 25 was not tuned with)."""
    return ops.mean(ops.square(ops.cast(z1, "float32") - ops.cast(z2, "float32")))


def variance(z, gamma=VICREG_GAMMA, epsilon=VICREG_EPSILON):
    """v(Z) = (1/d) Σ_j max(0, γ − √(Var(z^j) + ε)) (eq. 1-2): a hinge on the standard
    deviation of each dimension along the batch, with the unbiased variance (Algorithm 1's
    `z.var(dim=0)`) of the [N, d] embeddings, N ≥ 2."""
    z = ops.cast(z, "float32")
    n = ops.cast(ops.shape(z)[0], "float32")
    centred = z - ops.mean(z, axis=0)  # [N, d]
    unbiased = ops.sum(ops.square(centred), axis=0) / (n - 1.0)  # [d]
    return ops.mean(ops.relu(gamma - ops.sqrt(unbiased + epsilon)))


def covariance(z):
    """c(Z) = (1/d) Σ_{i≠j} C(Z)_ij² (eq. 3-4), C(Z) = Σ_b (z_b − z̄)(z_b − z̄)ᵀ / (N − 1)
    the [d, d] covariance of the [N, d] embeddings along the batch."""
    z = ops.cast(z, "float32")
    n = ops.cast(ops.shape(z)[0], "float32")
    d = ops.shape(z)[1]
    centred = z - ops.mean(z, axis=0)  # [N, d]
    cov = ops.matmul(ops.transpose(centred), centred) / (n - 1.0)  # [d, d]
    off_diagonal = cov * (1.0 - ops.eye(d, dtype=cov.dtype))
    return ops.sum(ops.square(off_diagonal)) / ops.cast(d, "float32")


def vicreg(
    z1,
    z2,
    invariance_weight=VICREG_LAMBDA,
    variance_weight=VICREG_MU,
    covariance_weight=VICREG_NU,
    gamma=VICREG_GAMMA,
    epsilon=VICREG_EPSILON,
):
    """VICReg loss of two batches of embeddings of the same images (eq. 6):

        ℓ = λ s(Z, Z') + μ [v(Z) + v(Z')] + ν [c(Z) + c(Z')],

    `invariance` pulling the views together, `variance` keeping every dimension's standard
    deviation at γ or above (no collapse), `covariance` decorrelating the dimensions. As in
    the paper's Algorithm 1 the two variance terms are added (the official code averages
    them, which halves μ).

    Under a distribution strategy the variance and covariance are those of the global
    batch: the caller all-gathers z1 and z2 (`kerassl.models.base.all_gather`), as the
    official code gathers them across GPUs, and calls this on the global [G, d] tensors.

    Args:
        z1, z2: [N, d] embeddings (expander outputs) of the two views, N ≥ 2.
        invariance_weight: λ ≥ 0 (25 in the paper).
        variance_weight: μ ≥ 0 (25).
        covariance_weight: ν ≥ 0 (1).
        gamma: γ > 0, the target standard deviation (1).
        epsilon: ε ≥ 0 added to the variance (1e-4).

    Returns:
        The scalar loss.
    """
    _check(
        invariance_weight=invariance_weight,
        variance_weight=variance_weight,
        covariance_weight=covariance_weight,
        gamma=gamma,
        epsilon=epsilon,
    )
    return (
        invariance_weight * invariance(z1, z2)
        + variance_weight * (variance(z1, gamma, epsilon) + variance(z2, gamma, epsilon))
        + covariance_weight * (covariance(z1) + covariance(z2))
    )


@keras.saving.register_keras_serializable(package="kerassl")
class VICRegLoss(keras.losses.Loss):
    """`keras.losses.Loss` wrapper of `vicreg` (Bardes et al. 2022, eq. 6).

    Called as `loss(z2, z1)` with the two views' [N, d] embeddings.

    Args:
        invariance_weight: λ ≥ 0.
        variance_weight: μ ≥ 0.
        covariance_weight: ν ≥ 0.
        gamma: γ > 0, the target standard deviation.
        epsilon: ε ≥ 0 added to the variance.
        name: loss name.
    """

    def __init__(
        self,
        invariance_weight: float = VICREG_LAMBDA,
        variance_weight: float = VICREG_MU,
        covariance_weight: float = VICREG_NU,
        gamma: float = VICREG_GAMMA,
        epsilon: float = VICREG_EPSILON,
        name: str = "vicreg",
        **kwargs,
    ):
        self.invariance_weight = invariance_weight
        self.variance_weight = variance_weight
        self.covariance_weight = covariance_weight
        self.gamma = gamma
        self.epsilon = epsilon
        _check(**self._arguments())
        super().__init__(name=name, **kwargs)

    def _arguments(self) -> dict:
        return {
            "invariance_weight": self.invariance_weight,
            "variance_weight": self.variance_weight,
            "covariance_weight": self.covariance_weight,
            "gamma": self.gamma,
            "epsilon": self.epsilon,
        }

    def call(self, y_true, y_pred):
        return vicreg(y_pred, y_true, **self._arguments())

    def get_config(self):
        return {**super().get_config(), **self._arguments()}
