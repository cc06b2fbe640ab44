"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning")."""

from __future__ import annotations

import math

import keras
from keras import ops

from kerassl.checks import check
from kerassl.losses.negative_cosine import byol_loss
from kerassl.models.base import update_momentum
from kerassl.models.moco import momentum_copy
from kerassl.models.predictive import PredictiveSSLModel

# τ_base of the paper's 1000-epoch ImageNet runs (its 300-epoch runs use 0.99, as does
# `kerassl train`'s `--momentum`); BYOL's predictor is as wide as its projector's hidden layer.
BYOL_BASE_MOMENTUM = 0.996
BYOL_PREDICTOR_HIDDEN = 4096


def schedule_horizon(optimizer) -> int | None:
    """The `total_steps` of `optimizer`'s learning-rate schedule (`kerassl.optimizers.
    WarmupCosine`: the run's step count), or None for a constant rate or no such field.
    A `LossScaleOptimizer` (mixed_float16) is looked through to the optimizer it wraps."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    learning_rate = optimizer.get_config().get("learning_rate")
    if isinstance(learning_rate, dict):
        return learning_rate.get("config", {}).get("total_steps")
    return None


@keras.saving.register_keras_serializable(package="kerassl")
class BYOL(PredictiveSSLModel):
    """BYOL: an online network predicts a slowly moving target network's projection.

    Per the paper (section 3.1 and Algorithm 1): the online network (encoder f_θ, projector
    g_θ, predictor q_θ) and the target network (f_ξ, g_ξ, no predictor) embed two views;
    the loss `byol_loss` is 2 − 2·cos(q_θ(z_θ), sg(z'_ξ)) summed over both view orders
    (eq. 2). Only the online network is trained; after each step the target follows it,
    ξ ← τ ξ + (1 − τ) θ (`update_momentum`, BatchNorm statistics included), with τ raised
    from τ_base to 1 by the cosine schedule

        τ_k = 1 − (1 − τ_base)(cos(π k / K) + 1) / 2

    at step k (counted from 0 by the optimizer's iterations, so a restored optimizer
    continues the schedule) of K. The target's BatchNorm uses batch statistics in training
    mode, as the paper's target network does (`kerassl.models.moco.momentum_copy`). Each
    view goes through the networks separately. The loss is a mean over samples: under a
    distribution strategy each replica's is that of its rows.

    Args:
        encoder: online encoder f_θ (a Functional or Sequential `keras.Model`).
        head: online projector g_θ (the shared `mlp` head is the paper's).
        augmenter: view generator (`kerassl.data.augment.Augmenter`).
        base_momentum: τ_base in [0, 1) (0.996 in the paper; 0.99 for its 300 epochs).
        total_steps: K, int ≥ 1, or None: the `total_steps` of the optimizer's
            learning-rate schedule (`kerassl.optimizers.WarmupCosine`, the run's length,
            as `kerassl train` compiles it); past K, τ = 1.
        predictor_hidden_dim: int ≥ 1, hidden width of the predictor q_θ (4096 in the
            paper, like the projector's).

    Example:
    ```python
    model = BYOL(encoder, build_head("mlp", 128, 128, 512), make_augmenter("digits"),
                 base_momentum=0.99, total_steps=10 * steps_per_epoch,
                 predictor_hidden_dim=512)
    model.compile(optimizer="adam", jit_compile=True)
    model.fit(unlabeled_images, epochs=10, steps_per_epoch=steps_per_epoch)
    ```
    """

    def __init__(
        self,
        encoder,
        head,
        augmenter,
        base_momentum: float = BYOL_BASE_MOMENTUM,
        total_steps: int | None = None,
        predictor_hidden_dim: int = BYOL_PREDICTOR_HIDDEN,
        **kwargs,
    ):
        check("base_momentum", base_momentum)
        if total_steps is not None:
            check("total_steps", total_steps)
        self.base_momentum = base_momentum
        self.total_steps = total_steps
        self.target_encoder = momentum_copy(encoder)
        self.target_head = momentum_copy(head)
        super().__init__(encoder, head, augmenter, predictor_hidden_dim, **kwargs)

    def target_projection(self, views, training=True):
        """z'_ξ = g_ξ(f_ξ(x)) of the target network, [n, d]."""
        return self.target_head(self.target_encoder(views, training=training), training=training)

    def compute_ssl_loss(self, view1, view2, training=True):
        p1, _ = self.predict_projection(view1, training=training)
        p2, _ = self.predict_projection(view2, training=training)
        z1 = self.target_projection(view1, training=training)
        z2 = self.target_projection(view2, training=training)
        return byol_loss(p1, p2, z1, z2), None, None

    def schedule_steps(self) -> int:
        """K: `total_steps`, else the optimizer's learning-rate schedule's."""
        steps = self.total_steps
        if steps is None and self.optimizer is not None:
            steps = schedule_horizon(self.optimizer)
        if steps is None:
            raise ValueError(
                "BYOL's momentum schedule needs the number of training steps: pass "
                "total_steps=K, or compile with a learning-rate schedule that has "
                "total_steps (kerassl.optimizers.WarmupCosine). Received: total_steps=None"
            )
        return int(steps)

    def momentum_at(self, step):
        """τ_k = 1 − (1 − τ_base)(cos(π min(k, K) / K) + 1) / 2 of step k (from 0)."""
        steps = float(self.schedule_steps())
        progress = ops.minimum(ops.cast(step, "float32") / steps, 1.0)
        return 1.0 - (1.0 - self.base_momentum) * (ops.cos(math.pi * progress) + 1.0) / 2.0

    def after_step(self):
        # The optimizer has counted this step's update: it was step iterations − 1.
        momentum = self.momentum_at(self.optimizer.iterations - 1)
        update_momentum(self.encoder, self.target_encoder, momentum)
        update_momentum(self.head, self.target_head, momentum)

    def get_config(self):
        return {
            **super().get_config(),
            "base_momentum": self.base_momentum,
            "total_steps": self.total_steps,
        }
