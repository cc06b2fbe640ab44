"""A hyperparameter search definition (`tuning/*.yaml`, or `kerassl.tune` options).

Imports neither Keras nor KerasTuner: the CLI validates a definition before TensorFlow
loads, so a bad definition is reported at once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerassl.checks import parse_weights
from kerassl.errors import UserError
from kerassl.methods import METHODS
from kerassl.tuning.spaces import DEFAULT_SPACES, Param, parse_space, unknown_names

TUNERS = ("random", "bayesian", "hyperband")
# Supervised baselines with a HyperModel, then every SSL method of the registry.
SUPERVISED_MODELS = ("cnn", "mlp", "resnet50", "inceptionv3")
MODELS = SUPERVISED_MODELS + tuple(METHODS)
# Settings that change what a trial means: resuming with other values is refused.
_IDENTITY = (
    "model",
    "dataset",
    "image_size",
    "labels",
    "validation",
    "tuner",
    "epochs",
    "seed",
    "weights",
    "space",
    "ssl",
)


@dataclass
class SearchConfig:
    """One hyperparameter search (a `tuning/*.yaml` file, or CLI options).

    Attributes:
        model: `cnn`, `mlp`, `resnet50`, `inceptionv3` or an SSL method of
            `kerassl.methods.METHODS` (`simclr`, `moco`, `byol` …).
        dataset: dataset name for `kerassl.data.registry.load_dataset`.
        data_dir: local data folder (IDX files, TFDS data_dir).
        image_size: square size images are resized to (None: native).
        labels: label budget, a total count ("100") or a per-class fraction ("0.1").
        validation: fraction of the labeled examples held out as the objective's split.
        tuner: `random`, `bayesian` or `hyperband`.
        max_trials: trials to run in total (a cap for Hyperband, which plans its own).
        epochs: maximum epochs per trial (SSL methods: pretraining epochs per trial).
        patience: early-stopping patience in epochs (supervised models).
        seed: seed of the split, the tuner and every trial.
        weights: `auto`, `imagenet` or `none` (ResNet-50/InceptionV3 bases).
        space: overrides of the model's search space (name → range, list or value).
        ssl: fixed `TrainConfig` settings of an SSL method's trials (encoder,
            steps_per_epoch …).
        out: output folder (default `tuning_runs/<model>-<dataset>`).
    """

    model: str = "cnn"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    image_size: int | None = None
    labels: str = "100"
    validation: float = 0.2
    tuner: str = "random"
    max_trials: int = 10
    epochs: int = 100
    patience: int = 40
    seed: int = 0
    weights: str = "auto"
    space: dict[str, Any] = field(default_factory=dict)
    ssl: dict[str, Any] = field(default_factory=dict)
    out: str | None = None

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], source: str = "search definition"
    ) -> SearchConfig:
        """Builds a config from a mapping; unknown keys are a `UserError`."""
        if not isinstance(values, Mapping):
            raise UserError(f"{source} must be a mapping of settings, got {type(values).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise UserError(unknown_names("key", unknown, names, f" in {source}"))
        values = dict(values)
        if values.get("labels") is not None:
            values["labels"] = str(values["labels"])
        if "weights" in values:
            values["weights"] = parse_weights(values["weights"]) or "none"
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str) -> SearchConfig:
        """Reads a YAML search definition (see `tuning/*.yaml`)."""
        import yaml

        try:
            with open(path) as file:
                values = yaml.safe_load(file)
        except OSError as error:
            raise UserError(f"cannot read search definition {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            detail = str(error).replace("\n", " ")
            raise UserError(f"{path} is not valid YAML: {detail}") from None
        return cls.from_dict(values or {}, source=path)

    def output_dir(self) -> Path:
        """`out`, or `tuning_runs/<model>-<dataset>/` (dataset name made path-safe)."""
        if self.out:
            return Path(self.out)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.dataset)
        return Path("tuning_runs") / f"{self.model}-{safe}"

    def validate(self) -> None:
        """Raises a one-line `UserError` for anything no search could run with."""
        from kerassl.data.splits import parse_labels

        if self.model not in MODELS:
            raise UserError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.tuner not in TUNERS:
            raise UserError(f"unknown tuner {self.tuner!r}; choose one of {', '.join(TUNERS)}")
        checks = [
            (_positive_int(self.max_trials), "max_trials", "an integer >= 1"),
            (_positive_int(self.epochs), "epochs", "an integer >= 1"),
            (_positive_int(self.patience), "patience", "an integer >= 1"),
            (isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed", "an integer"),
            (
                isinstance(self.validation, (int, float)) and 0 < self.validation < 1,
                "validation",
                "a fraction in (0, 1) (the objective needs validation examples)",
            ),
            (self.image_size is None or _positive_int(self.image_size), "image_size", ">= 1"),
            (self.weights in ("auto", "imagenet", "none"), "weights", "auto, imagenet or none"),
            (isinstance(self.space, Mapping), "space", "a mapping of hyperparameter specs"),
            (isinstance(self.ssl, Mapping), "ssl", "a mapping of TrainConfig settings"),
        ]
        for ok, name, accepted in checks:
            if not ok:
                raise UserError(f"{name} must be {accepted}; got {getattr(self, name)!r}")
        parse_labels(self.labels)
        if self.ssl and self.model not in METHODS:
            raise UserError(
                f"ssl settings apply to the SSL methods ({', '.join(METHODS)}) only, "
                f"not {self.model!r}"
            )
        try:
            parse_space(DEFAULT_SPACES[self.model], self.space)
        except ValueError as error:
            raise UserError(f"bad search space for {self.model}: {error}") from None
        if self.model in METHODS:
            ssl_base_config(self)  # validates the ssl settings

    def identity(self) -> dict[str, Any]:
        """The settings a resumed search must share with the one it continues."""
        return json.loads(json.dumps({name: getattr(self, name) for name in _IDENTITY}))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _largest(name: str, param: Param) -> int:
    """The largest value an integer hyperparameter takes; `UserError` for other values."""
    values = (param.max,) if param.kind in ("int", "float") else param.values
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"bad search space: {name} must be integers; got {list(values)}")
    return int(max(values))


def ssl_base_config(config: SearchConfig):
    """The `TrainConfig` every trial of an SSL method's search starts from (validated)."""
    from kerassl.config import TrainConfig

    space = parse_space(DEFAULT_SPACES[config.model], config.space)
    values = {
        "method": config.model,
        "dataset": config.dataset,
        "data_dir": config.data_dir,
        "image_size": config.image_size,
        "labels": config.labels,
        "validation": config.validation,
        "epochs": config.epochs,
        "seed": config.seed,
        "baseline": "none",
        "knn_every": 0,
        # The largest batch of the space: one the unlabeled pool cannot fill is an error
        # before the first trial (the base plan is resolved with it), not in some trial.
        "batch_size": _largest("batch_size", space["batch_size"]),
        **config.ssl,
    }
    if "method" in config.ssl:
        raise UserError(f"ssl cannot set method: it is the search's model ({config.model})")
    tuned = sorted(set(config.ssl) & set(DEFAULT_SPACES[config.model]))
    if tuned:
        raise UserError(
            f"ssl setting(s) {', '.join(tuned)} are tuned; fix them in space instead "
            f"(e.g. space: {{{tuned[0]}: ...}})"
        )
    base = TrainConfig.from_json(values)
    base.validate()
    return base
