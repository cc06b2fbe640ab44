"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning")."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from kerassl.losses.negative_cosine import simsiam_loss
from kerassl.models import barlow_twins
from kerassl.models.encoders import BN_MOMENTUM
from kerassl.models.predictive import PredictiveSSLModel

# The paper's predictor bottleneck: 512 hidden units for its 2048-d projections.
SIMSIAM_PREDICTOR_HIDDEN = 512


def build_projector(
    input_dim: int,
    dims: Sequence[int] = barlow_twins.PROJECTOR_DIMS,
    sync_bn: bool = False,
    name: str = "projector",
) -> keras.Model:
    """The SimSiam projector: linear layers with BatchNorm on every one, ReLU between.

    "The projection MLP (in f) has BN applied to each fully-connected (fc) layer, including
    its output fc. Its output fc has no ReLU. The hidden fc is 2048-d. This MLP has 3
    layers." (Chen & He 2021, section 4). The official code's output BatchNorm has no
    affine parameters (`BatchNorm1d(dim, affine=False)`) and no layer keeps a bias. This is
    the Barlow Twins projector (`kerassl.models.barlow_twins.build_projector`) followed by
    that BatchNorm.

    Args:
        input_dim: encoder feature size.
        dims: output units of each linear layer (2048, 2048, 2048 in the paper).
        sync_bn: synchronise BatchNorm statistics across replicas.
        name: model name.
    """
    linear = barlow_twins.build_projector(input_dim, dims, sync_bn=sync_bn, name=name)
    outputs = layers.BatchNormalization(
        momentum=BN_MOMENTUM,
        center=False,
        scale=False,
        synchronized=sync_bn,
        name=f"bn{len(tuple(dims)) - 1}",
    )(linear.output)
    return keras.Model(linear.input, outputs, name=name)


@keras.saving.register_keras_serializable(package="kerassl")
class SimSiam(PredictiveSSLModel):
    """SimSiam: predict one view's projection from the other's, with a stop-gradient.

    Per Algorithm 1 of the paper: z₁, z₂ = f(x₁), f(x₂) with the encoder + projector f,
    p₁, p₂ = h(z₁), h(z₂) with the predictor h, and L = D(p₁, z₂)/2 + D(p₂, z₁)/2 with D the
    negative cosine similarity and z detached (`kerassl.losses.negative_cosine`). No
    negatives, no momentum encoder: the stop-gradient is what prevents the collapse. Each
    view goes through the network separately, as in the official code (BatchNorm
    statistics per view). The loss is a mean over samples: under a distribution strategy
    each replica's is that of its rows (synchronised BatchNorm makes the statistics global).

    Args:
        encoder: `keras.Model` mapping [0, 1] images to features.
        head: the projector f's MLP (`build_projector`).
        augmenter: view generator (`kerassl.data.augment.Augmenter`).
        predictor_hidden_dim: int ≥ 1, the predictor's bottleneck width (512 in the paper,
            a quarter of its 2048-d projections).

    Example:
    ```python
    projector = build_projector(encoder.output_shape[-1], (1024, 1024, 1024))
    model = SimSiam(encoder, projector, make_augmenter("digits"), predictor_hidden_dim=256)
    model.compile(optimizer="adam", jit_compile=True)
    model.fit(unlabeled_images, epochs=10)
    ```
    """

    def __init__(
        self,
        encoder,
        head,
        augmenter,
        predictor_hidden_dim: int = SIMSIAM_PREDICTOR_HIDDEN,
        **kwargs,
    ):
        super().__init__(encoder, head, augmenter, predictor_hidden_dim, **kwargs)

    def compute_ssl_loss(self, view1, view2, training=True):
        p1, z1 = self.predict_projection(view1, training=training)
        p2, z2 = self.predict_projection(view2, training=training)
        return simsiam_loss(p1, p2, z1, z2), None, None
