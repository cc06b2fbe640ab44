"""What BYOL and SimSiam share: an online network whose predictor regresses the projection of
the other view (no negatives)."""

from __future__ import annotations

import keras
from keras import layers

from kerassl.checks import check
from kerassl.models.base import SSLModel
from kerassl.models.heads import build_predictor


def synchronized_batch_norm(*models: keras.Model) -> bool:
    """Whether any BatchNormalization inside `models` (nested ones too) synchronises its
    statistics across replicas, as `kerassl.pretraining` builds networks under several."""
    stack = list(models)
    while stack:
        layer = stack.pop()
        if isinstance(layer, layers.BatchNormalization) and layer.synchronized:
            return True
        stack.extend(getattr(layer, "layers", []))
    return False


class PredictiveSSLModel(SSLModel):
    """Base of BYOL and SimSiam: encoder f → projection head g → predictor q.

    The predictor (`kerassl.models.heads.build_predictor`) maps the head's output space to
    itself through one hidden layer of `predictor_hidden_dim` units; it is built here, from
    that argument, and its BatchNorm is synchronised across replicas when the encoder's or
    head's is. Subclasses implement `compute_ssl_loss` with `predict_projection`.

    Args:
        encoder: `keras.Model` mapping [0, 1] images to features.
        head: projection head g.
        augmenter: view generator (`kerassl.data.augment.Augmenter`).
        predictor_hidden_dim: int ≥ 1, width of the predictor's hidden layer.
    """

    reports_accuracy = False  # not a classification of the positive pair

    def __init__(self, encoder, head, augmenter, predictor_hidden_dim: int, **kwargs):
        check("predictor_hidden_dim", predictor_hidden_dim)
        self.predictor_hidden_dim = int(predictor_hidden_dim)
        self.predictor = build_predictor(
            head.output_shape[-1],
            self.predictor_hidden_dim,
            sync_bn=synchronized_batch_norm(encoder, head),
        )
        super().__init__(encoder, head, augmenter, **kwargs)

    def predict_projection(self, views, training=True):
        """`(p, z)`: the online prediction q(g(f(x))) and projection g(f(x)), [n, d] each."""
        z = self.project(views, training=training)
        return self.predictor(z, training=training), z

    def get_config(self):
        return {**super().get_config(), "predictor_hidden_dim": self.predictor_hidden_dim}
