"""The resolved settings of a training run, as one dataclass (CLI → config → library)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from kerassl.errors import UserError


@dataclass
class TrainConfig:
    """Every setting of `kerassl train`; `config.json` in a run dir is this, resolved."""

    method: str = "simclr"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    download: bool = True
    image_size: int | None = None  # None: the dataset's native/default size
    max_unlabeled: int | None = None  # cap the unlabeled pool (quick experiments)
    labels: str = "100"  # total labels stratified over classes, or a fraction ("0.1")
    validation: float = 0.2  # fraction of the labeled examples held out for model selection
    augment: str | None = None  # preset; None: the dataset's default
    encoder: str = "cnn"
    weights: str | None = None  # None or "imagenet" (keras.applications encoders)
    head: str = "mlp"
    projection_dim: int = 128
    hidden_dim: int = 512
    temperature: float = 0.2  # SimCLR/MoCo; 0.2 beat 0.5 on Fashion-MNIST (71.3 vs 70.8 % probe)
    # MoCo (He et al. 2020, v2: Chen et al. 2020)
    momentum: float = 0.99  # moving-average momentum m of the key encoder
    queue_size: int = 4096  # negative keys K (65536 in the paper; 4096 for small datasets)
    symmetric: bool = False  # add the loss with the two views swapped (MoCo v3)
    bn_groups: int = 4  # Shuffling BN groups against BatchNorm leakage (1: plain BatchNorm)
    # Barlow Twins (Zbontar et al. 2021)
    bt_lambda: float = 5e-3  # weight λ of the off-diagonal (redundancy) term
    projector_dims: str = "1024,1024,1024"  # widths of the projector's linear layers
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: one pass over the unlabeled pool
    batch_size: int = 256
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    # Linear warmup over the first epoch (all of a 1-epoch run). Capping it at a tenth of
    # short runs was worse: 1-epoch probe 71.2 ± 2.4 % vs 72.3 ± 0.8 % (3 seeds).
    warmup_epochs: float = 1.0
    # XLA for the whole train step: "auto" = only on a GPU (on CPU the plain graph step was
    # 1.35x faster, benchmarks/throughput.py); the two views are one XLA cluster regardless.
    jit_compile: bool | str = "auto"
    strategy: str = "auto"  # auto | default | mirrored | multi_worker
    baseline: str = "cnn"  # supervised baseline trained on the same labels; "none" to skip
    baseline_epochs: int = 200
    knn_every: int = 1  # kNN monitor period in epochs (0 disables)
    online_probe: bool = False  # linear probe trained alongside pretraining (probe_accuracy)
    seed: int = 0
    out: str = "runs"
    run_name: str | None = None

    def validate(self) -> None:
        """Raises `UserError` for values no run could use."""
        checks = [
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 2, "batch_size", "an integer >= 2"),
            (self.learning_rate > 0, "learning_rate", "> 0"),
            (self.temperature > 0, "temperature", "> 0"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (0 <= self.validation < 1, "validation", "in [0, 1)"),
            (self.image_size is None or self.image_size >= 8, "image_size", ">= 8"),
            (self.projection_dim >= 1, "projection_dim", ">= 1"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch", ">= 1"),
            (
                0 <= self.warmup_epochs <= self.epochs,
                "warmup_epochs",
                f"in [0, --epochs ({self.epochs})]",
            ),
            (self.max_unlabeled is None or self.max_unlabeled >= 2, "max_unlabeled", ">= 2"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.queue_size >= 1, "queue_size", "an integer >= 1"),
            (self.bn_groups >= 1, "bn_groups", "an integer >= 1"),
            (
                self.method != "moco" or self.batch_size % self.bn_groups == 0,
                "batch_size",
                f"a multiple of --bn-groups ({self.bn_groups}) for moco",
            ),
            (self.bt_lambda >= 0, "bt_lambda", ">= 0"),
            (self.jit_compile in (True, False, "auto"), "jit_compile", "auto, on or off"),
            (
                all(w.strip().isdigit() and int(w) >= 1 for w in self.projector_dims.split(",")),
                "projector_dims",
                "comma-separated integers >= 1 (e.g. 1024,1024,1024)",
            ),
        ]
        for ok, name, accepted in checks:
            if not ok:
                raise UserError(
                    f"--{name.replace('_', '-')} must be {accepted}; got {getattr(self, name)}"
                )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(**values)

    @classmethod
    def load(cls, path: str) -> TrainConfig:
        try:
            with open(path) as file:
                return cls.from_json(json.load(file))
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"cannot read config {path}: {error}") from None
