"""The registry of self-supervised methods: the one place that lists their names.

Each entry names the method's class and says which `TrainConfig` settings become which
constructor arguments, so that the CLI, the config, the run plan and the tuner learn the
methods from here. This module imports no TensorFlow: the CLIs validate a method name
before TensorFlow loads. Adding a method costs one module under `kerassl/models/`, one
entry here and one short test file calling `kerassl.testing.method_contract`; the method
is then tunable too (`kerassl.tune METHOD`), its search space derived from `arguments`
(`kerassl.tuning.spaces.ssl_space`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from kerassl.errors import UserError


@dataclass(frozen=True)
class MethodSpec:
    """How `kerassl train METHOD` builds a method.

    Attributes:
        name: the CLI name (`kerassl train NAME`).
        target: `"module:Class"` of the `SSLModel` subclass.
        arguments: `TrainConfig` field → constructor argument, for the method's own
            hyperparameters (the shared encoder/head/augmenter arguments are not listed).
        projector: `"module:function"` building the method's own projector from
            `(input_dim, widths, sync_bn=...)` in place of the `--head` options; None
            when the method uses the shared projection head.
        summary: one line for `--help`.
    """

    name: str
    target: str
    arguments: Mapping[str, str] = field(default_factory=dict)
    projector: str | None = None
    summary: str = ""

    def load(self) -> type:
        """Imports and returns the method's class (imports TensorFlow)."""
        return _load(self.target)

    def load_projector(self):
        """Imports and returns the projector builder (None without one)."""
        return _load(self.projector) if self.projector else None


def _load(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "simclr",
            "kerassl.models.simclr:SimCLR",
            {"temperature": "temperature", "similarity": "similarity"},
            summary="SimCLR: NT-Xent over the other views of the batch",
        ),
        MethodSpec(
            "moco",
            "kerassl.models.moco:MoCo",
            {
                "temperature": "temperature",
                "momentum": "momentum",
                "queue_size": "queue_size",
                "symmetric": "symmetric",
                "bn_groups": "bn_groups",
                "seed": "seed",
            },
            summary="MoCo v2: momentum key encoder and a queue of negatives",
        ),
        MethodSpec(
            "barlow_twins",
            "kerassl.models.barlow_twins:BarlowTwins",
            {"bt_lambda": "lambda_"},
            projector="kerassl.models.barlow_twins:build_projector",
            summary="Barlow Twins: cross-correlation of the views towards the identity",
        ),
        MethodSpec(
            "byol",
            "kerassl.models.byol:BYOL",
            # --momentum is τ_base, raised to 1 over the run; the predictor is as wide as the
            # head's hidden layer. K is the learning-rate schedule's step count.
            {"momentum": "base_momentum", "hidden_dim": "predictor_hidden_dim"},
            summary="BYOL: predict a moving-average target network's projection",
        ),
        MethodSpec(
            "simsiam",
            "kerassl.models.simsiam:SimSiam",
            {"hidden_dim": "predictor_hidden_dim"},
            projector="kerassl.models.simsiam:build_projector",
            summary="SimSiam: predict the other view's projection, with a stop-gradient",
        ),
        MethodSpec(
            "vicreg",
            "kerassl.models.vicreg:VICReg",
            {
                "vicreg_lambda": "invariance_weight",
                "vicreg_mu": "variance_weight",
                "vicreg_nu": "covariance_weight",
            },
            projector="kerassl.models.barlow_twins:build_projector",
            summary="VICReg: invariance, variance and covariance terms on the embeddings",
        ),
    )
}


def get_method(name: str) -> MethodSpec:
    """The spec of a method by name; `UserError` naming the known ones otherwise."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
