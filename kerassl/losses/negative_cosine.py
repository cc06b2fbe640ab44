"""The predictive losses of BYOL and SimSiam: a view's prediction regresses the other view's
projection, compared by cosine, with a stop-gradient on the projection.

References: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS 2020, eq. (2) and Algorithm 1; Chen, He, "Exploring Simple Siamese
Representation Learning", CVPR 2021, eq. (1)-(2) and Algorithm 1.

Both are means over the samples of the batch. Under a distribution strategy each replica
computes the mean over its own rows: with equal per-replica batches, the mean of those
(what the trackers and the summed, 1/replicas-scaled gradients give) is the loss of the
global batch, so nothing is all-gathered.
"""

from __future__ import annotations

import keras
from keras import ops

from kerassl.losses.nt_xent import l2_normalize


def cosine_similarity(p, z):
    """[N] cosine similarity of each row of `p` with the same row of `z` (float32)."""
    return ops.sum(l2_normalize(p) * l2_normalize(z), axis=-1)


def negative_cosine(p, z):
    """SimSiam's D(p, z) = −mean_b cos(p_b, stopgrad(z_b)) (eq. 1 with Algorithm 1's
    `z.detach()`), for [N, d] predictions `p` and projections `z`."""
    return -ops.mean(cosine_similarity(p, ops.stop_gradient(z)))


def simsiam_loss(p1, p2, z1, z2):
    """SimSiam loss L = D(p1, stopgrad(z2))/2 + D(p2, stopgrad(z1))/2 (eq. 2).

    Args:
        p1, p2: [N, d] predictions h(f(x₁)), h(f(x₂)) of the two views.
        z1, z2: [N, d] projections f(x₁), f(x₂) of the same views (no gradient flows
            into them).

    Returns:
        The scalar loss, in [−1, 1] (−1: every prediction points along the other view's
        projection).
    """
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def byol_loss(p1, p2, z1, z2):
    """BYOL loss: the symmetrised normalised regression of eq. (2).

    For the online prediction q of one view and the target projection z' of the other,

        L = ‖q̄ − z̄'‖² = 2 − 2·⟨q, z'⟩ / (‖q‖ ‖z'‖),

    and the loss is L(p1, z2) + L(p2, z1) (the paper's L + L̃, "feeding v' to the online
    network and v to the target network"), averaged over the batch, with a stop-gradient
    on the target projections.

    Args:
        p1, p2: [N, d] online predictions q_θ(z_θ) of the two views.
        z1, z2: [N, d] target projections z'_ξ of the same views.

    Returns:
        The scalar loss, in [0, 8].
    """
    cos_12 = cosine_similarity(p1, ops.stop_gradient(z2))  # [N]
    cos_21 = cosine_similarity(p2, ops.stop_gradient(z1))  # [N]
    return ops.mean((2.0 - 2.0 * cos_12) + (2.0 - 2.0 * cos_21))


def _split_pairs(y_true, y_pred):
    n = ops.shape(y_pred)[0] // 2
    return y_pred[:n], y_pred[n:], y_true[:n], y_true[n:]


@keras.saving.register_keras_serializable(package="kerassl")
class BYOLLoss(keras.losses.Loss):
    """`keras.losses.Loss` wrapper of `byol_loss` (Grill et al. 2020, eq. 2).

    Called as `loss(concat([z1, z2]), concat([p1, p2]))`: `y_pred` holds the predictions of
    the first then the second views, `y_true` the target projections of the same views.
    """

    def __init__(self, name: str = "byol", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return byol_loss(*_split_pairs(y_true, y_pred))


@keras.saving.register_keras_serializable(package="kerassl")
class SimSiamLoss(keras.losses.Loss):
    """`keras.losses.Loss` wrapper of `simsiam_loss` (Chen & He 2021, eq. 2).

    Called as `loss(concat([z1, z2]), concat([p1, p2]))`, like `BYOLLoss`.
    """

    def __init__(self, name: str = "simsiam", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return simsiam_loss(*_split_pairs(y_true, y_pred))
