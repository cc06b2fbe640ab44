"""VICReg (Bardes, Ponce, LeCun 2022, "VICReg: Variance-Invariance-Covariance Regularization
for Self-Supervised Learning")."""

from __future__ import annotations

import keras

from kerassl.checks import check
from kerassl.losses.vicreg import (
    VICREG_EPSILON,
    VICREG_GAMMA,
    VICREG_LAMBDA,
    VICREG_MU,
    VICREG_NU,
    vicreg,
)
from kerassl.models.base import SSLModel, all_gather


@keras.saving.register_keras_serializable(package="kerassl")
class VICReg(SSLModel):
    """VICReg: keep the views' embeddings close, each dimension's variance up and the
    dimensions decorrelated.

    Per Algorithm 1 of the paper: z_a, z_b = f(x_a), f(x_b) with the encoder + expander f
    (three linear layers, BatchNorm + ReLU after the first two: the Barlow Twins projector,
    `kerassl.models.barlow_twins.build_projector`), then
    ℓ = λ s(z_a, z_b) + μ [v(z_a) + v(z_b)] + ν [c(z_a) + c(z_b)] (`kerassl.losses.vicreg`).
    No negatives, no momentum encoder, no predictor. Each view goes through the network
    separately. Under a distribution strategy the loss is that of the global batch (its
    variances and covariances are along the batch): the embeddings are all-gathered, as the
    official code gathers them across GPUs.

    Args:
        encoder: `keras.Model` mapping [0, 1] images to features.
        head: the expander (`kerassl.models.barlow_twins.build_projector`).
        augmenter: view generator (`kerassl.data.augment.Augmenter`).
        invariance_weight: λ ≥ 0 of the invariance (mean squared error) term (25).
        variance_weight: μ ≥ 0 of the variance (standard-deviation hinge) term (25).
        covariance_weight: ν ≥ 0 of the covariance (off-diagonal) term (1).
        gamma: γ > 0, the standard deviation each dimension is pushed to (1).
        epsilon: ε ≥ 0 under the square root of the variance (1e-4).

    Example:
    ```python
    expander = build_projector(encoder.output_shape[-1], (1024, 1024, 1024))
    model = VICReg(encoder, expander, make_augmenter("digits"))
    model.compile(optimizer="adam", jit_compile=True)
    model.fit(unlabeled_images, epochs=10)
    ```
    """

    reports_accuracy = False  # not a classification of the positive pair

    def __init__(
        self,
        encoder,
        head,
        augmenter,
        invariance_weight: float = VICREG_LAMBDA,
        variance_weight: float = VICREG_MU,
        covariance_weight: float = VICREG_NU,
        gamma: float = VICREG_GAMMA,
        epsilon: float = VICREG_EPSILON,
        **kwargs,
    ):
        for name, value in (
            ("invariance_weight", invariance_weight),
            ("variance_weight", variance_weight),
            ("covariance_weight", covariance_weight),
            ("gamma", gamma),
            ("epsilon", epsilon),
        ):
            check(name, value)
        super().__init__(encoder, head, augmenter, **kwargs)
        self.invariance_weight = invariance_weight
        self.variance_weight = variance_weight
        self.covariance_weight = covariance_weight
        self.gamma = gamma
        self.epsilon = epsilon

    def compute_ssl_loss(self, view1, view2, training=True):
        z1, _ = all_gather(self.project(view1, training=training))  # [N, d] global batch
        z2, _ = all_gather(self.project(view2, training=training))  # [N, d]
        loss = vicreg(
            z1,
            z2,
            self.invariance_weight,
            self.variance_weight,
            self.covariance_weight,
            self.gamma,
            self.epsilon,
        )
        return loss, None, None

    def get_config(self):
        return {
            **super().get_config(),
            "invariance_weight": self.invariance_weight,
            "variance_weight": self.variance_weight,
            "covariance_weight": self.covariance_weight,
            "gamma": self.gamma,
            "epsilon": self.epsilon,
        }
