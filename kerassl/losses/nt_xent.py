"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Reference: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020, eq. (1).
"""

from __future__ import annotations

import keras
from keras import ops

from kerassl.checks import check

# τ of the paper's CIFAR-10 runs: the default of `nt_xent`, `NTXent` and `SimCLR`.
SIMCLR_TEMPERATURE = 0.5
# Minus the logit of the masked self-similarities (they must never win the softmax), and
# the epsilon under the square root of the L2 normalisation (as `tf.math.l2_normalize`).
_LARGE_NUM = 1e9
_EPSILON = 1e-12


def l2_normalize(x, epsilon: float = _EPSILON):
    """x / max(‖x‖₂, √ε) along the last axis, in float32."""
    x = ops.cast(x, "float32")
    squared_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, epsilon))


def check_temperature(temperature) -> None:
    """Keras-style `ValueError` for a Python temperature that is not > 0 (tensors pass)."""
    if isinstance(temperature, (int, float)):
        check("temperature", temperature)


def _similarity_space(x, similarity: str):
    """float32 rows whose dot products are the similarity: unit vectors for cosine."""
    return l2_normalize(x) if similarity == "cosine" else ops.cast(x, "float32")


def nt_xent(
    z1,
    z2,
    temperature=SIMCLR_TEMPERATURE,
    z1_negatives=None,
    z2_negatives=None,
    offset=0,
    similarity: str = "cosine",
):
    """NT-Xent loss of SimCLR over 2N views, with cosine (or dot-product) similarity.

    For a positive pair (i, j) among the 2N embeddings of a batch of N images (eq. 1):

        ℓ(i, j) = −log( exp(sim(zᵢ, zⱼ)/τ) / Σ_{k=1}^{2N} 1[k≠i] exp(sim(zᵢ, z_k)/τ) ),
        sim(u, v) = uᵀv / (‖u‖ ‖v‖),

    and the loss is the mean of ℓ over all 2N anchors (both (i, j) and (j, i)). Every anchor
    is contrasted with its other view and the 2N − 2 views of the other images.

    `similarity="dot"` replaces sim by the raw dot product uᵀv of the un-normalised
    embeddings (the paper's Table 5 compares it with cosine: "dot product" without ℓ2
    normalisation). Its logits are unbounded; the log-softmax subtracts each row's maximum
    and the self-similarities are replaced by −1e9, so large logits stay finite.

    Global negatives (distribution strategies): pass the all-gathered global batch as
    `z1_negatives`, `z2_negatives` ([G, d], replicas concatenated in order) and the row of
    this replica's first example in it as `offset`. The local anchors z1, z2 (global rows
    `offset … offset+N−1`) are then contrasted with all 2G global embeddings: the result is
    the single-device loss of the global batch restricted to these 2N anchors, so the mean
    of the per-replica losses is exactly the global loss. `z1`, `z2` must be the same
    values as those rows; gradients reach them both directly and through the gathered
    tensors.

    Args:
        z1: [N, d] embeddings of the first views.
        z2: [N, d] embeddings of the second views; row i is the positive of z1[i].
        temperature: τ > 0 (0.5 in SimCLR's CIFAR-10 runs, 0.1 at large batch).
        z1_negatives: optional [G, d] global first views (including this replica's).
        z2_negatives: optional [G, d] global second views.
        offset: int or scalar int tensor, row of z1[0] in the global batch.
        similarity: one of `kerassl.catalog.SIMILARITIES`: "cosine" (eq. 1) or "dot".

    Returns:
        `(loss, logits, labels)`: the scalar mean loss, the [2N, 2G] logits (similarities /
        τ, self-similarities set to −1e9) of the anchors `concat([z1, z2])` against
        `concat([z1_negatives, z2_negatives])`, and the [2N] int32 column of each anchor's
        positive; `SparseCategoricalAccuracy(labels, logits)` is the contrastive top-1
        accuracy.

    Example:
    ```python
    loss, logits, labels = nt_xent(head(encoder(view1)), head(encoder(view2)), 0.5)
    ```
    """
    check_temperature(temperature)
    check("similarity", similarity)
    if (z1_negatives is None) != (z2_negatives is None):
        raise ValueError(
            "z1_negatives and z2_negatives must be given together. Received: "
            f"z1_negatives={'None' if z1_negatives is None else 'a tensor'}, "
            f"z2_negatives={'None' if z2_negatives is None else 'a tensor'}"
        )
    z1 = _similarity_space(z1, similarity)
    z2 = _similarity_space(z2, similarity)
    if z1_negatives is None:
        z1_all, z2_all, offset = z1, z2, 0
    else:
        z1_all = _similarity_space(z1_negatives, similarity)
        z2_all = _similarity_space(z2_negatives, similarity)
    n = ops.shape(z1)[0]
    g = ops.shape(z1_all)[0]
    anchors = ops.concatenate([z1, z2], axis=0)  # [2N, d]
    contrast = ops.concatenate([z1_all, z2_all], axis=0)  # [2G, d]
    logits = ops.matmul(anchors, ops.transpose(contrast)) / temperature  # [2N, 2G]
    rows = ops.arange(n, dtype="int32") + ops.cast(offset, "int32")  # global rows of anchors
    self_columns = ops.concatenate([rows, rows + g], axis=0)  # [2N] each anchor itself
    labels = ops.concatenate([rows + g, rows], axis=0)  # [2N] each anchor's other view
    # Replaced, not shifted: a dot-product self-similarity can be as large as any shift.
    is_self = ops.equal(ops.arange(2 * g, dtype="int32")[None, :], self_columns[:, None])
    logits = ops.where(is_self, -_LARGE_NUM, logits)
    log_probs = ops.log_softmax(logits, axis=-1)  # shifts each row by its maximum
    per_anchor = -ops.sum(ops.one_hot(labels, 2 * g, dtype="float32") * log_probs, axis=-1)
    return ops.mean(per_anchor), logits, labels


@keras.saving.register_keras_serializable(package="kerassl")
class NTXent(keras.losses.Loss):
    """`keras.losses.Loss` wrapper of `nt_xent` (SimCLR, Chen et al. 2020, eq. 1).

    Called as `loss(z2, z1)`: `y_true` holds the second views, `y_pred` the first views,
    both [N, d]; row i of each is a positive pair.

    Args:
        temperature: τ > 0.
        similarity: "cosine" (the paper's eq. 1) or "dot" (un-normalised, its Table 5).
        name: loss name.
    """

    def __init__(
        self,
        temperature: float = SIMCLR_TEMPERATURE,
        similarity: str = "cosine",
        name: str = "nt_xent",
        **kwargs,
    ):
        check_temperature(temperature)
        check("similarity", similarity)
        super().__init__(name=name, **kwargs)
        self.temperature = temperature
        self.similarity = similarity

    def call(self, y_true, y_pred):
        return nt_xent(y_pred, y_true, self.temperature, similarity=self.similarity)[0]

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "similarity": self.similarity,
        }
