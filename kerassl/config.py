"""The resolved settings of a training run, as one dataclass (CLI → config → library)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kerassl import catalog
from kerassl.checks import RULES, parse_duration, parse_every, parse_weights, parse_widths
from kerassl.errors import UserError

# Config field → its rule in `kerassl.checks.RULES` (constructor argument names differ
# where the CLI needs a clearer name: --bt-lambda is Barlow Twins' lambda_).
_RULES_OF_FIELDS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "temperature": "temperature",
    "similarity": "similarity",
    "weight_decay": "weight_decay",
    "validation": "validation",
    "image_size": "image_size",
    "projection_dim": "projection_dim",
    "hidden_dim": "hidden_dim",
    "steps_per_epoch": "steps_per_epoch",
    "max_unlabeled": "max_unlabeled",
    "momentum": "momentum",
    "queue_size": "queue_size",
    "bn_groups": "bn_groups",
    "bt_lambda": "lambda_",
    "vicreg_lambda": "invariance_weight",
    "vicreg_mu": "variance_weight",
    "vicreg_nu": "covariance_weight",
    "knn_every": "knn_every",
    "baseline_epochs": "baseline_epochs",
    "distill_pool": "distill_pool",
    "consistency_steps": "consistency_steps",
}
_OPTIONAL = {"image_size", "steps_per_epoch", "max_unlabeled"}  # None: the default

# Settings that do not change what a run computes: a re-run of a run directory may give
# other values for them.
UNCOMPUTED = ("checkpoint_every", "download", "out", "run_name")
# What `kerassl train --resume RUN_DIR` may change on the way (a run that diverged goes on
# from its last good checkpoint with a lower --lr); config.json records the change.
RESUME_CHANGEABLE = ("learning_rate",)
# Config field → its CLI flag, where the two names differ.
_FLAGS = {"method": "METHOD", "learning_rate": "--lr", "jit_compile": "--xla"}


def flag(name: str) -> str:
    """The CLI flag of a config field: `batch_size` → `--batch-size`."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _reject(name: str, accepted: str, value) -> None:
    raise UserError(f"{flag(name)} must be {accepted}; got {value}")


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
    augment: str | None = None  # preset or ops joined with + (crop+blur); None: the dataset's
    encoder: str = "cnn"
    weights: str | None = None  # None or "imagenet" (keras.applications encoders); "none" → None
    head: str = "mlp"
    projection_dim: int = 128
    hidden_dim: int = 512
    temperature: float = 0.2  # SimCLR/MoCo; 0.2 beat 0.5 on Fashion-MNIST (71.3 vs 70.8 % probe)
    similarity: str = "cosine"  # SimCLR's NT-Xent: cosine, or dot (un-normalised, Table 5)
    # MoCo (He et al. 2020, v2: Chen et al. 2020) and BYOL (Grill et al. 2020)
    # Moving-average momentum: MoCo's m of the key encoder; BYOL's τ_base, raised to 1 by a
    # cosine over the run (0.996 in BYOL's 1000-epoch runs, 0.99 in its 300-epoch ones).
    momentum: float = 0.99
    queue_size: int = 4096  # negative keys K (65536 in the paper; 4096 for small datasets)
    symmetric: bool = False  # add the loss with the two views swapped (MoCo v3)
    bn_groups: int = 4  # Shuffling BN groups against BatchNorm leakage (1: plain BatchNorm)
    # Barlow Twins (Zbontar et al. 2021)
    bt_lambda: float = 5e-3  # weight λ of the off-diagonal (redundancy) term
    # Widths of the linear layers of Barlow Twins' projector, SimSiam's, VICReg's expander.
    projector_dims: str = "1024,1024,1024"
    # VICReg (Bardes et al. 2022): weights of the invariance, variance, covariance terms
    vicreg_lambda: float = 25.0
    vicreg_mu: float = 25.0
    vicreg_nu: float = 1.0
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: one pass over the unlabeled pool
    # Batch 128 at lr 2e-3 (before: 256 at 1e-3), from the 5-minute recipe search
    # (benchmarks/recipes/): a probe on 100 labels scored on a 900-label development split
    # after 80 s of pretraining on a 386 GFLOP/s CPU: Fashion-MNIST 74.0 against 71.9 %,
    # Kannada digits 87.6 against 84.9 %, scikit-learn digits 93.0 against 91.5 % (scored on 400).
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    weight_decay: float = 1e-6
    # Linear warmup over the first epoch (all of a 1-epoch run). Capping it at a tenth of
    # short runs was worse: 1-epoch probe 71.2 ± 2.4 % vs 72.3 ± 0.8 % (3 seeds).
    warmup_epochs: float = 1.0
    # Pretrain for a wall-clock budget ("5m"): the step count (and so the learning-rate
    # schedule) comes from the step time measured after compilation; replaces --epochs.
    time_budget: str | None = None
    # XLA for the whole train step: "auto" = on a GPU; on a CPU the faster of the two forms,
    # measured once per machine and setting and cached (`kerassl.xla_choice`: 0.76x on one
    # CPU, 1.24x on another); the two views are one XLA cluster regardless.
    jit_compile: bool | str = "auto"
    # Keras dtype policy of the method's networks (catalog.PRECISIONS): mixed_* compute in
    # bfloat16/float16 with float32 variables, losses and encoder features; float16 adds
    # dynamic loss scaling.
    precision: str = "float32"
    strategy: str = "auto"  # auto | default | mirrored | multi_worker
    baseline: str = "cnn"  # supervised baseline trained on the same labels; "none" to skip
    baseline_epochs: int = 200
    # Stages after the linear probe (`kerassl.semisupervised`): "finetune", "distill"
    # (which brings finetune), comma-separated; "" for none.
    then: str = ""
    distill_pool: int = 20000  # most unlabeled images the distilled student trains on
    consistency_steps: int = 1000  # most steps of the consistency (FixMatch) stage
    knn_every: int = 1  # kNN monitor period in epochs (0 disables)
    online_probe: bool = False  # linear probe trained alongside pretraining (probe_accuracy)
    seed: int = 0
    # Op determinism: two runs of one command (or a run killed and resumed) end with the
    # same weights, at some cost in speed (README, "Runs that survive a kill").
    deterministic: bool = False
    checkpoint_every: str = "5m"  # steps ("200") or a duration ("30s", "5m", "1h")
    out: str = "runs"
    run_name: str | None = None

    def validate(self) -> None:
        """Raises `UserError` for values no run could use (before any data or TensorFlow).

        Single values follow `kerassl.checks.RULES`, the rules constructors apply too;
        what spans several settings is checked here.
        """
        from kerassl.data.presets import get_preset
        from kerassl.data.splits import parse_labels
        from kerassl.methods import METHODS, get_method
        from kerassl.semisupervised import parse_stages

        get_method(self.method)
        if self.augment is not None:
            get_preset(self.augment)
        for kind, name, names in (
            ("encoder", self.encoder, catalog.ENCODERS),
            ("head", self.head, catalog.HEADS),
            ("optimizer", self.optimizer.lower(), catalog.OPTIMIZERS),
            ("baseline", self.baseline, (*catalog.CLASSIFIERS, "none")),
            ("strategy", self.strategy, catalog.STRATEGIES),
            ("precision", self.precision, catalog.PRECISIONS),
        ):
            catalog.known(kind, name, names)
        if self.weights is not None:
            catalog.known("weights", self.weights, catalog.WEIGHTS)
            if self.encoder not in catalog.PRETRAINED_ENCODERS:
                raise UserError(
                    f"--encoder {self.encoder} has no pretrained weights; use --weights none "
                    f"or one of {', '.join(catalog.PRETRAINED_ENCODERS)}"
                )
        parse_stages(self.then)
        try:
            parse_labels(self.labels)
        except UserError as error:
            raise UserError(f"--labels: {error}") from None
        for name, rule_name in _RULES_OF_FIELDS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            rule = RULES[rule_name]
            if not rule.holds(value):
                _reject(name, rule.accepted, value)
        if not 0 <= self.warmup_epochs <= self.epochs:
            _reject("warmup_epochs", f"in [0, --epochs ({self.epochs})]", self.warmup_epochs)
        takers = [name for name, spec in METHODS.items() if "similarity" in spec.arguments]
        if self.similarity != TrainConfig.similarity and self.method not in takers:
            raise UserError(
                f"--similarity applies to {', '.join(takers)} only; got --similarity "
                f"{self.similarity} with {self.method}"
            )
        if self.method == "moco" and self.batch_size % self.bn_groups:
            _reject(
                "batch_size",
                f"a multiple of --bn-groups ({self.bn_groups}) for moco",
                self.batch_size,
            )
        if self.jit_compile not in (True, False, "auto"):
            _reject("jit_compile", "auto, on or off", self.jit_compile)
        if self.time_budget is not None:
            try:
                parse_duration(self.time_budget)
            except ValueError:
                _reject("time_budget", "a duration such as 90s, 5m or 1h", self.time_budget)
        try:
            parse_every(self.checkpoint_every)
        except ValueError:
            _reject(
                "checkpoint_every",
                "a number of steps >= 1 or a duration such as 30s, 5m, 1h",
                self.checkpoint_every,
            )
        try:
            parse_widths(self.projector_dims)
        except ValueError:
            _reject(
                "projector_dims",
                "comma-separated integers >= 1 (e.g. 1024,1024,1024)",
                self.projector_dims,
            )

    @property
    def projector_widths(self) -> tuple[int, ...]:
        """`projector_dims` as integers."""
        return parse_widths(self.projector_dims)

    def differences(self, other: TrainConfig, ignore=UNCOMPUTED) -> list[str]:
        """`"--epochs 3 (the run has 2)"` for every setting of `self` that differs from
        `other`'s, apart from `ignore`."""
        mine, theirs = self.to_json(), other.to_json()
        return [
            f"{flag(name)} {mine[name]} (the run has {theirs[name]})"
            for name in mine
            if name not in ignore and mine[name] != theirs[name]
        ]

    def __post_init__(self):
        self.weights = parse_weights(self.weights)

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
    def load_settings(cls, path: str) -> dict[str, Any]:
        """The settings of a YAML (or JSON) file for `--config`: a run's config.json (its
        "settings"; the resolved and derived keys beside them are ignored) or a mapping of
        settings. The run name is never taken over: a repeated run gets its own.

        Raises:
            UserError: unreadable file, not a mapping, or an unknown setting (with the
                closest known name).
        """
        from kerassl.settings_file import read_settings

        defaults = dataclasses.asdict(cls())
        values = read_settings(path, list(defaults), "--config", defaults)
        values.pop("run_name", None)
        return values
