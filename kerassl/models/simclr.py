"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations")."""

from __future__ import annotations

import keras
from keras import ops

from kerassl.checks import check
from kerassl.losses.nt_xent import SIMCLR_TEMPERATURE, nt_xent
from kerassl.models.base import SSLModel, all_gather


@keras.saving.register_keras_serializable(package="kerassl")
class SimCLR(SSLModel):
    """SimCLR: two views of each image, NT-Xent over the other 2(N−1) views as negatives.

    Per the paper's Algorithm 1: for a minibatch of N images draw two augmentations,
    h = f(x̃) with the encoder, z = g(h) with the projection head, and minimise NT-Xent
    over all 2N embeddings. Under a distribution strategy the negatives are the global
    batch (all-gathered embeddings), as the paper's global BN and TPU training do.

    Args:
        encoder: `keras.Model` mapping [0, 1] images to features.
        head: projection head g.
        augmenter: view generator (`kerassl.data.augment.Augmenter`).
        temperature: float > 0, NT-Xent temperature τ (0.5 in the paper's CIFAR setting).
        similarity: "cosine" (the paper's) or "dot": NT-Xent on raw dot products of the
            un-normalised projections (the paper's Table 5 ablation).

    Example:
    ```python
    model = SimCLR(encoder, build_head("mlp", 128), make_augmenter("digits"), temperature=0.5)
    model.compile(optimizer="adam", jit_compile=True)
    model.fit(unlabeled_images, epochs=10)
    ```
    """

    def __init__(
        self,
        encoder,
        head,
        augmenter,
        temperature: float = SIMCLR_TEMPERATURE,
        similarity: str = "cosine",
        **kwargs,
    ):
        check("temperature", temperature)
        check("similarity", similarity)
        super().__init__(encoder, head, augmenter, **kwargs)
        self.temperature = temperature
        self.similarity = similarity

    def compute_ssl_loss(self, view1, view2, training=True):
        batch = ops.shape(view1)[0]
        # One encoder pass over both views: BatchNorm sees all 2N images, as in the paper.
        z = self.project(ops.concatenate([view1, view2], axis=0), training=training)
        z1, z2 = z[:batch], z[batch:]
        z1_all, offset = all_gather(z1)
        z2_all, _ = all_gather(z2)
        return nt_xent(
            z1,
            z2,
            self.temperature,
            z1_negatives=z1_all,
            z2_negatives=z2_all,
            offset=offset,
            similarity=self.similarity,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "similarity": self.similarity,
        }
