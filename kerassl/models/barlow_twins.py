"""Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction")."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from kerassl.checks import check
from kerassl.losses.barlow_twins import BT_LAMBDA, barlow_twins
from kerassl.models.base import SSLModel, all_gather
from kerassl.models.encoders import BN_MOMENTUM

# The paper's projector is 8192-8192-8192 on 2048-d ResNet-50 features; 1024 wide suits
# the 128-d small CNN on 28-32 px images at a fraction of the cost.
PROJECTOR_DIMS = (1024, 1024, 1024)


def build_projector(
    input_dim: int,
    dims: Sequence[int] = PROJECTOR_DIMS,
    sync_bn: bool = False,
    name: str = "projector",
) -> keras.Model:
    """The Barlow Twins projector: linear layers with BatchNorm + ReLU between them.

    "The projector network has three linear layers, each with 8192 output units. The first
    two layers of the projector are followed by a batch normalization layer and rectified
    linear units." (Zbontar et al. 2021, section 4). No biases, as in the official code: a
    bias before BatchNorm, or before the loss's per-dimension normalisation, cancels out.

    Args:
        input_dim: encoder feature size.
        dims: output units of each linear layer (three in the paper).
        sync_bn: synchronise BatchNorm statistics across replicas.
        name: model name.
    """
    dims = tuple(int(d) for d in dims)
    if not dims or min(dims) < 1:
        raise ValueError(f"dims must be one or more integers >= 1. Received: dims={dims}")
    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    for i, width in enumerate(dims[:-1]):
        x = layers.Dense(width, use_bias=False, name=f"linear{i}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, synchronized=sync_bn, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.Dense(dims[-1], use_bias=False, name=f"linear{len(dims) - 1}")(x)
    return keras.Model(inputs, x, name=name)


@keras.saving.register_keras_serializable(package="kerassl")
class BarlowTwins(SSLModel):
    """Barlow Twins: make the cross-correlation of two views' embeddings the identity.

    Per Algorithm 1 of the paper: z_A = f(y_A), z_B = f(y_B) with the encoder + projector
    f, each normalised along the batch; C = z_Aᵀ z_B / N; loss = Σ_i (1 − C_ii)² +
    λ Σ_{i≠j} C_ij². No negatives, no momentum encoder, no queue. Each view goes through
    the network separately, as in the official code (BatchNorm statistics per view). Under
    a distribution strategy C is the cross-correlation of the global batch: the embeddings
    are all-gathered, as the official code all-reduces C (with synchronised BatchNorm).

    Args:
        encoder: `keras.Model` mapping [0, 1] images to features.
        head: the projector (`build_projector`).
        augmenter: view generator (`kerassl.data.augment.Augmenter`).
        lambda_: float ≥ 0, λ weighting the redundancy-reduction term (5e-3 in the paper;
            1e-4 to 1e-2 all work on PathMNIST).
        epsilon: float ≥ 0 added to the batch variance before normalising.

    Example:
    ```python
    projector = build_projector(encoder.output_shape[-1], (1024, 1024, 1024))
    model = BarlowTwins(encoder, projector, make_augmenter("digits"), lambda_=5e-3)
    model.compile(optimizer="adam", jit_compile=True)
    model.fit(unlabeled_images, epochs=10)
    ```
    """

    reports_accuracy = False  # not a classification of the positive pair

    def __init__(
        self, encoder, head, augmenter, lambda_: float = BT_LAMBDA, epsilon: float = 1e-5, **kwargs
    ):
        check("lambda_", lambda_)
        check("epsilon", epsilon)
        super().__init__(encoder, head, augmenter, **kwargs)
        self.lambda_ = lambda_
        self.epsilon = epsilon

    def compute_ssl_loss(self, view1, view2, training=True):
        z1, _ = all_gather(self.project(view1, training=training))  # [N, d] global batch
        z2, _ = all_gather(self.project(view2, training=training))  # [N, d]
        loss, _ = barlow_twins(z1, z2, self.lambda_, self.epsilon)
        return loss, None, None

    def get_config(self):
        return {**super().get_config(), "lambda_": self.lambda_, "epsilon": self.epsilon}
