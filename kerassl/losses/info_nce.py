"""InfoNCE over a positive key and a queue of negative keys, as in MoCo.

References: He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020, eq. (1) and Algorithm 1; Chen, Fan, Girshick, He,
"Improved Baselines with Momentum Contrastive Learning" (MoCo v2), 2020.
"""

from __future__ import annotations

import keras
from keras import ops

from kerassl.losses.nt_xent import check_temperature, l2_normalize

# τ of MoCo v2 (0.07 in v1): the default of `info_nce`, `InfoNCE` and `MoCo`.
MOCO_TEMPERATURE = 0.2


def info_nce(query, key, queue, temperature=MOCO_TEMPERATURE):
    """InfoNCE of MoCo: classify each query's key among the key and K queued negatives.

    Eq. (1) of MoCo, with q and k L2-normalised:

        L_q = −log( exp(q·k₊/τ) / (exp(q·k₊/τ) + Σ_{i=1}^{K} exp(q·kᵢ/τ)) ),

    i.e. Algorithm 1: `logits = cat([l_pos, l_neg]) / τ`, `labels = 0`, cross-entropy,
    averaged over the N queries. The keys come from the momentum encoder and receive no
    gradient (`stop_gradient` on `key` and `queue`).

    Args:
        query: [N, d] queries q (online encoder + head); normalised here.
        key: [N, d] positive keys k₊ (momentum encoder); normalised here.
        queue: [K, d] negative keys, one per row, assumed already L2-normalised (they are
            normalised keys of earlier batches).
        temperature: τ > 0 (0.07 in MoCo v1, 0.2 in MoCo v2).

    Returns:
        `(loss, logits, labels)`: the scalar mean loss, [N, 1 + K] logits whose column 0
        is the positive, and [N] int32 zeros.
    """
    check_temperature(temperature)
    q = l2_normalize(query)
    k = ops.stop_gradient(l2_normalize(key))
    negatives = ops.stop_gradient(ops.cast(queue, "float32"))
    positive = ops.sum(q * k, axis=-1, keepdims=True)  # [N, 1] q·k₊
    negative = ops.matmul(q, ops.transpose(negatives))  # [N, K] q·kᵢ
    logits = ops.concatenate([positive, negative], axis=1) / temperature  # [N, 1+K]
    labels = ops.zeros((ops.shape(q)[0],), dtype="int32")
    loss = -ops.mean(ops.log_softmax(logits, axis=-1)[:, 0])
    return loss, logits, labels


@keras.saving.register_keras_serializable(package="kerassl")
class InfoNCE(keras.losses.Loss):
    """`keras.losses.Loss` wrapper of `info_nce` (MoCo, He et al. 2020, eq. 1).

    Called as `loss(concat([keys, queue]), queries)`: `y_pred` holds the N queries and
    `y_true` the N positive keys followed by the K queued negatives ([N + K, d]).

    Args:
        temperature: τ > 0.
        name: loss name.
    """

    def __init__(self, temperature: float = MOCO_TEMPERATURE, name: str = "info_nce", **kwargs):
        check_temperature(temperature)
        super().__init__(name=name, **kwargs)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        n = ops.shape(y_pred)[0]
        return info_nce(y_pred, y_true[:n], y_true[n:], self.temperature)[0]

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
