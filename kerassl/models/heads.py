"""Projection heads: small networks between the encoder and the SSL loss."""

from __future__ import annotations

import keras
from keras import layers

from kerassl.catalog import HEADS, known
from kerassl.models.encoders import BN_MOMENTUM


def build_head(
    kind: str,
    input_dim: int,
    output_dim: int = 128,
    hidden_dim: int = 512,
    batch_norm: bool = True,
    sync_bn: bool = False,
    name: str = "head",
) -> keras.Model:
    """Builds a projection head g(h) mapping encoder features to the loss space.

    - `linear`: z = W h.
    - `mlp`: "a MLP with one hidden layer to obtain z = g(h) = W(2) σ(W(1) h)" (SimCLR,
      Chen et al. 2020), with BatchNorm after the hidden layer as in SimCLRv2 and MoCo v2.
    - `deep_mlp`: the 3-layer head of SimCLRv2 (Chen et al. 2020b): two hidden layers.

    Args:
        kind: `"linear"`, `"mlp"` or `"deep_mlp"`.
        input_dim: encoder feature size.
        output_dim: size of z (128 in SimCLR and MoCo).
        hidden_dim: size of the hidden layers.
        batch_norm: BatchNorm after each hidden layer.
        sync_bn: synchronise BatchNorm statistics across replicas.
    """
    known("head", kind, HEADS)
    for arg, value in (("output_dim", output_dim), ("hidden_dim", hidden_dim)):
        if value < 1:
            raise ValueError(f"{arg} must be >= 1. Received: {arg}={value}")
    hidden_layers = {"linear": 0, "mlp": 1, "deep_mlp": 2}[kind]
    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    for i in range(hidden_layers):
        x = layers.Dense(hidden_dim, use_bias=not batch_norm, name=f"hidden{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(
                momentum=BN_MOMENTUM, synchronized=sync_bn, name=f"bn{i}"
            )(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.Dense(output_dim, name="projection")(x)
    return keras.Model(inputs, x, name=name)


def build_predictor(
    input_dim: int, hidden_dim: int, sync_bn: bool = False, name: str = "predictor"
) -> keras.Model:
    """The predictor of BYOL and SimSiam: an MLP from the projection space to itself.

    BYOL: "the predictor q_θ uses the same architecture as g_θ", a linear layer, BatchNorm,
    ReLU and a linear layer to the projection size (Grill et al. 2020, section 3.3).
    SimSiam: "The prediction MLP (h) has BN applied to its hidden fc layers. Its output fc
    does not have BN or ReLU. This MLP has 2 layers", a bottleneck whose hidden layer is a
    quarter of its output (512 for 2048; Chen & He 2021, section 4). This is the `mlp` head
    with its output as wide as its input.

    Args:
        input_dim: size of the projections (and of the predictions).
        hidden_dim: size of the hidden layer.
        sync_bn: synchronise BatchNorm statistics across replicas.
        name: model name.
    """
    return build_head("mlp", input_dim, input_dim, hidden_dim, sync_bn=sync_bn, name=name)
