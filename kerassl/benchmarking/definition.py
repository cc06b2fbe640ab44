"""A benchmark definition: the YAML file and the command-line flags → a checked `Definition`.

A definition (see `benchmarks/studies/*.yaml`) is a mapping of these keys:

```yaml
title: "Study A: MNIST, 100 labels"
dataset: fashion_mnist        # any `kerassl.data.registry` name (--dataset wins)
labels: [100, 10/class, 0.1]  # label budgets (or "100,10/class,0.1")
seeds: 0-2                    # split seeds: a list or a range; they vary the split only
protocols: [linear, knn]      # `kerassl.evaluation.options.PROTOCOLS`
pretrain: {epochs: 2, batch_size: 128}   # TrainConfig settings shared by every SSL row
methods:                      # table rows: a list of names, or name → TrainConfig overrides
  simclr: {}
  simclr-dot: {method: simclr, similarity: dot}
  simclrv2: {source: weights/simclrv2.keras}   # a saved encoder (a local run directory,
                              # .keras file or KerasHub preset directory), evaluated as it
                              # is; "skipped: weights not found" when the path is missing
  supervised:                 # the baselines below
baselines:                    # (default: study A's CNN, untuned and KerasTuner-tuned)
  cnn: {model: cnn}
  cnn-tuned: {model: cnn, tuned: true}
baseline_epochs: 100
tuning: {max_trials: 3, epochs: 30, patience: 10, tuner: random}
protocol_options: {knn_k: 20}  # `ProtocolOptions`
metrics: [top1, top5]          # the tables' columns: each budget × each metric
augment_pairs:                 # rows METHOD-OP1+OP2 for every pair of ops (and METHOD-OP
  method: simclr               # alone), tabled as a matrix (SimCLR's Figure 5)
  ops: [crop, color, blur, rotate]
  protocol: 1nn
full: {...}                    # the same keys at the study's scale, merged in by --full
```

Every key is checked here, without TensorFlow: an unknown key or setting is a one-line
`UserError` with the closest known name, and each row's settings become a validated
`TrainConfig`. `Definition.record` is what a benchmark directory keeps; what a re-run may
change against it is `kerassl.benchmarking.rerun`'s.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerassl.config import TrainConfig
from kerassl.data.splits import LabelBudget
from kerassl.errors import UserError
from kerassl.evaluation.options import (
    ProtocolOptions,
    budget_name,
    parse_budgets,
    parse_protocols,
    parse_seeds,
)
from kerassl.methods import METHODS
from kerassl.tuning.config import SUPERVISED_MODELS, TUNERS
from kerassl.tuning.spaces import unknown_names

SUPERVISED = "supervised"  # the method name that stands for the baselines
KEYS = (
    "title",
    "dataset",
    "data_dir",
    "image_size",
    "validation",
    "labels",
    "seeds",
    "protocols",
    "pretrain",
    "methods",
    "baselines",
    "baseline_epochs",
    "tuning",
    "protocol_options",
    "metrics",
    "augment_pairs",
    "full",
)
DEFAULTS: dict[str, Any] = {
    "dataset": "fashion_mnist",
    "labels": "100",
    "seeds": "0-2",
    "protocols": "linear,knn",
    "methods": "simclr,supervised",
    "validation": 0.2,
    "baseline_epochs": 100,
}
DEFAULT_BASELINES = {"cnn": {"model": "cnn"}, "cnn-tuned": {"model": "cnn", "tuned": True}}
METRICS = ("top1", "top2", "top3", "top4", "top5")
# TrainConfig settings the benchmark sets itself: no row or `pretrain` section may.
OWNED = (
    "dataset",
    "data_dir",
    "image_size",
    "download",
    "labels",
    "validation",
    "baseline",
    "baseline_epochs",
    "out",
    "run_name",
)
# Pretraining budgets: `--epochs` / `--time-budget` replace every row's.
BUDGET_KEYS = ("epochs", "time_budget")
_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig))
_ROW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_BASELINE_MODELS = ("cnn", "cnn_deep", "mlp", "resnet50", "inceptionv3")
_BASELINE_KEYS = ("model", "tuned", "weights")
_TUNING_KEYS = ("max_trials", "epochs", "patience", "tuner")
_PAIRS_KEYS = ("method", "ops", "protocol", "settings")


@dataclass(frozen=True)
class MethodRow:
    """A self-supervised table row: a method with its own settings, or a saved encoder.

    Attributes:
        name: the row's name (tables, run directory `runs/<name>`, cell files).
        settings: `TrainConfig` overrides of the row (with `method`), over `pretrain`.
        source: a saved encoder evaluated without pretraining (a local run directory,
            encoder `.keras` file or KerasHub preset directory), or None.
    """

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def method(self) -> str:
        return str(self.settings.get("method", self.name)) if self.source is None else "encoder"


@dataclass(frozen=True)
class BaselineRow:
    """A supervised baseline row: a classifier trained on each split's labels only.

    Attributes:
        name: the row's name (cell files).
        model: a `kerassl.models.classifiers` name.
        tuned: KerasTuner-searched once per label budget (seed 0's split, its labeled and
            validation examples only); the best hyperparameters train every seed.
        weights: "imagenet" for a transfer base that needs ImageNet weights, else None.
    """

    name: str
    model: str = "cnn"
    tuned: bool = False
    weights: str | None = None

    @property
    def title(self) -> str:
        pretrained = " (ImageNet)" if self.weights else ""
        return f"supervised {self.model}{pretrained}{' (tuned)' if self.tuned else ''}"


@dataclass(frozen=True)
class Tuning:
    """The tuned baselines' KerasTuner search (`kerassl.tuning.search.run_search`).

    Attributes:
        max_trials: trials per label budget.
        epochs: maximum epochs of a trial (None: the definition's `baseline_epochs`).
        patience: early-stopping patience of trials and of the tuned baseline.
        tuner: random, bayesian or hyperband.
    """

    max_trials: int = 5
    epochs: int | None = None
    patience: int = 20
    tuner: str = "random"


@dataclass(frozen=True)
class AugmentPairs:
    """An augmentation-pair matrix: one method row per pair of augmentation ops
    (`kerassl.data.presets.OPS` joined with "+") and per op alone, tabled as a matrix.

    Attributes:
        method: the SSL method of the rows.
        ops: the ops, in the matrix's order.
        protocol: the protocol the matrix shows (at the first label budget).
    """

    method: str
    ops: tuple[str, ...]
    protocol: str

    def row_name(self, first: str, second: str | None = None) -> str:
        """`simclr-crop+blur` (a pair) or `simclr-crop` (an op alone)."""
        ops = first if second is None or second == first else f"{first}+{second}"
        return f"{self.method}-{ops}"

    def pairs(self) -> list[tuple[str, str]]:
        """(first, second) of each row: the diagonal and the upper triangle."""
        return [(a, b) for i, a in enumerate(self.ops) for b in self.ops[i:]]


@dataclass(frozen=True)
class Definition:
    """A checked benchmark definition (see the module docstring for its keys)."""

    title: str
    dataset: str
    data_dir: str | None
    image_size: int | None
    validation: float
    labels: tuple[LabelBudget, ...]
    seeds: tuple[int, ...]
    protocols: tuple[str, ...]
    methods: tuple[MethodRow, ...]
    baselines: tuple[BaselineRow, ...]
    pretrain: Mapping[str, Any]
    baseline_epochs: int
    tuning: Tuning
    protocol_options: ProtocolOptions
    metrics: tuple[str, ...]
    augment_pairs: AugmentPairs | None = None

    def train_config(self, row: MethodRow, runs: str | Path) -> TrainConfig:
        """The `kerassl train` settings of an SSL row: its run is `<runs>/<row name>`, the
        baseline is the benchmark's (none in the run); the run's own probe uses the first
        label budget."""
        values = {
            **self.pretrain,
            **row.settings,
            "method": row.method,
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "image_size": self.image_size,
            "validation": self.validation,
            "labels": budget_name(self.labels[0]),
            "baseline": "none",
            "out": str(runs),
            "run_name": row.name,
        }
        return TrainConfig(**values)

    @property
    def pretrained_rows(self) -> tuple[MethodRow, ...]:
        return tuple(row for row in self.methods if row.source is None)

    def tuning_epochs(self) -> int:
        return self.tuning.epochs or self.baseline_epochs

    def record(self) -> dict[str, Any]:
        """What `benchmark.json` keeps: the settings every cell depends on, and the rows,
        budgets, seeds and protocols asked for."""
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "image_size": self.image_size,
            "validation": self.validation,
            "pretrain": dict(self.pretrain),
            "baseline_epochs": self.baseline_epochs,
            "tuning": dataclasses.asdict(self.tuning),
            "protocol_options": self.protocol_options.to_json(),
            "methods": {
                row.name: {**row.settings, **({"source": row.source} if row.source else {})}
                for row in self.methods
            },
            "baselines": {
                row.name: {"model": row.model, "tuned": row.tuned, "weights": row.weights}
                for row in self.baselines
            },
            "labels": [budget_name(budget) for budget in self.labels],
            "seeds": list(self.seeds),
            "protocols": list(self.protocols),
        }


# ------------------------------------------------------------------------ reading


def read_file(path: str) -> dict[str, Any]:
    """The mapping a definition file holds (YAML, or JSON, which is YAML too)."""
    import yaml

    try:
        with open(path) as file:
            values = yaml.safe_load(file)
    except OSError as error:
        raise UserError(f"cannot read benchmark definition {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())
        raise UserError(f"{path} is not valid YAML: {detail}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a mapping of benchmark settings")
    return values


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """`overlay` over `base`, mappings merged key by key (a row's settings too)."""
    merged = dict(base)
    for key, value in overlay.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = merge(old, value)
        else:
            merged[key] = value
    return merged


def resolve(
    values: Mapping[str, Any],
    *,
    full: bool = False,
    overrides: Mapping[str, Any] | None = None,
    source: str = "the command line",
) -> Definition:
    """The definition of a file's `values` (with its `full:` section merged when `full`)
    and the command line's `overrides` (top-level keys; `pretrain` settings merged;
    `epochs` or `time_budget` replacing every row's pretraining budget; `methods` as
    comma-separated names picking the file's rows, or plain methods).

    Raises:
        UserError: one line naming the bad key or value.
    """
    _check_keys(values, KEYS, source)
    values = dict(values)
    extra = values.pop("full", None)
    if full:
        if not extra:
            raise UserError(f"--full: {source} has no full: section")
        if not isinstance(extra, Mapping):
            raise UserError(f"full: in {source} must be a mapping of benchmark settings")
        _check_keys(extra, [k for k in KEYS if k != "full"], f"full: of {source}")
        values = merge(values, extra)
    overrides = dict(overrides or {})
    budget = {k: overrides.pop(k) for k in BUDGET_KEYS if overrides.get(k) is not None}
    if len(budget) > 1:
        raise UserError("--epochs and --time-budget exclude each other: give one")
    methods = overrides.get("methods")
    if isinstance(methods, str) and isinstance(values.get("methods"), Mapping):
        # --methods picks rows of the definition by name (or adds plain methods).
        rows = values["methods"]
        overrides["methods"] = {n.strip(): rows.get(n.strip()) for n in methods.split(",")}
        values["methods"] = {}
    values = merge(values, {k: v for k, v in overrides.items() if v is not None})
    if budget:
        values = _replace_budget(values, budget)
    return parse(values, source)


def _replace_budget(values: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """Every row pretrains for `budget` (epochs or a time budget) and nothing else."""
    values = dict(values)
    pretrain = {k: v for k, v in _mapping(values, "pretrain", "").items() if k not in BUDGET_KEYS}
    values["pretrain"] = {**pretrain, **budget}
    methods = values.get("methods")
    if isinstance(methods, Mapping):
        values["methods"] = {
            name: (
                {k: v for k, v in row.items() if k not in BUDGET_KEYS}
                if isinstance(row, Mapping)
                else row
            )
            for name, row in methods.items()
        }
    return values


def parse(values: Mapping[str, Any], source: str = "the command line") -> Definition:
    """A `Definition` from a mapping of the module docstring's keys (defaults filled in)."""
    _check_keys(values, [k for k in KEYS if k != "full"], source)
    values = {**DEFAULTS, **{k: v for k, v in values.items() if v is not None}}
    where = f" in {source}"
    pretrain = _settings(_mapping(values, "pretrain", where), "pretrain", where, method=False)
    if "epochs" in pretrain and "time_budget" in pretrain:
        raise UserError(f"pretrain: give epochs or time_budget, not both{where}")
    methods, supervised = _method_rows(values["methods"], where)
    pairs = None
    if values.get("augment_pairs") is not None:
        pairs, generated = _augment_pairs(values["augment_pairs"], where)
        taken = {row.name for row in methods} & {row.name for row in generated}
        if taken:
            raise UserError(f"methods{where} already has the augment_pairs row {taken.pop()}")
        methods += generated
    baselines: tuple[BaselineRow, ...] = ()
    if supervised:
        baselines = _baseline_rows(values.get("baselines", DEFAULT_BASELINES), where)
    elif "baselines" in values:
        raise UserError(f"baselines are given{where} but methods lack {SUPERVISED!r}")
    definition = Definition(
        title=str(values.get("title", "")),
        dataset=_text(values["dataset"], "dataset", where),
        data_dir=values.get("data_dir"),
        image_size=values.get("image_size"),
        validation=values["validation"],
        labels=parse_budgets(_joined(values["labels"])),
        seeds=parse_seeds(_joined(values["seeds"])),
        protocols=parse_protocols(_joined(values["protocols"])),
        methods=methods,
        baselines=baselines,
        pretrain=pretrain,
        baseline_epochs=values["baseline_epochs"],
        tuning=_tuning(_mapping(values, "tuning", where), where),
        protocol_options=_protocol_options(_mapping(values, "protocol_options", where), where),
        metrics=_metrics(values.get("metrics", ("top1",)), where),
        augment_pairs=pairs,
    )
    if pairs is not None and pairs.protocol not in definition.protocols:
        raise UserError(
            f"augment_pairs.protocol {pairs.protocol!r}{where} must be one of the protocols "
            f"({', '.join(definition.protocols)})"
        )
    _validate(definition, where)
    return definition


def _validate(definition: Definition, where: str) -> None:
    if not methods_or_baselines(definition):
        raise UserError(f"methods{where} name no row")
    base = TrainConfig(
        dataset=definition.dataset,
        image_size=definition.image_size,
        validation=definition.validation,
        baseline_epochs=definition.baseline_epochs,
        labels=budget_name(definition.labels[0]),
    )
    try:
        base.validate()  # the benchmark-wide values, by the rules `kerassl train` applies
    except UserError as error:
        raise UserError(f"{error}{where}") from None
    for row in definition.pretrained_rows:
        try:
            definition.train_config(row, "runs").validate()
        except UserError as error:
            raise UserError(f"methods.{row.name}: {error}{where}") from None


def methods_or_baselines(definition: Definition) -> int:
    return len(definition.methods) + len(definition.baselines)


def _check_keys(values: Mapping[str, Any], known, source: str) -> None:
    unknown = [key for key in values if key not in known]
    if unknown:
        raise UserError(unknown_names("key", unknown, known, f" in {source}"))


def _mapping(values: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = values.get(key) or {}
    if not isinstance(value, Mapping):
        raise UserError(f"{key}{where} must be a mapping, got {value!r}")
    return dict(value)


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{key}{where} must be a name, got {value!r}")
    return value.strip()


def _joined(value: Any) -> str:
    """A YAML list (`[100, 10/class]`) or scalar as the comma-separated text of a flag."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def _settings(values: Mapping[str, Any], what: str, where: str, method: bool) -> dict[str, Any]:
    """TrainConfig settings of a row or of `pretrain`, their names checked (did you
    mean …?), the benchmark's own refused; YAML's 1e-3-as-a-string read as a number."""
    allowed = [name for name in _SETTINGS if name not in OWNED and (method or name != "method")]
    for key in values:
        if key in OWNED:
            raise UserError(f"{what}: {key} is set by the benchmark, not per row{where}")
        if key not in allowed:
            raise UserError(unknown_names("setting", [key], allowed, f" in {what}{where}"))
    settings = dict(values)
    defaults = dataclasses.asdict(TrainConfig())
    for name, value in settings.items():
        if isinstance(defaults.get(name), float) and isinstance(value, str):
            try:
                settings[name] = float(value)
            except ValueError:
                pass  # TrainConfig.validate names the setting and what it accepts
    return settings


def _method_rows(value: Any, where: str) -> tuple[tuple[MethodRow, ...], bool]:
    """The SSL rows and whether `supervised` (the baselines) is among the methods."""
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",")]
    if isinstance(value, (list, tuple)):
        value = {str(name): None for name in value}
    if not isinstance(value, Mapping) or not value:
        raise UserError(f"methods{where} must be a list of names or a mapping of rows")
    rows, supervised = [], False
    for name, settings in value.items():
        name = str(name)
        if name == SUPERVISED:
            if settings:
                raise UserError(f"methods.{SUPERVISED}{where} takes no settings; use baselines")
            supervised = True
            continue
        if not _ROW_NAME.match(name):
            raise UserError(
                f"method row name {name!r}{where} must be letters, digits and . _ + - "
                "(it names files)"
            )
        settings = dict(settings or {})
        if not isinstance(settings, dict):
            raise UserError(f"methods.{name}{where} must be a mapping of settings")
        source = settings.pop("source", None)
        if source is not None:
            if settings:
                raise UserError(
                    f"methods.{name}{where}: a source row takes no settings besides source"
                )
            rows.append(MethodRow(name, {}, str(source)))
            continue
        settings = _settings(settings, f"methods.{name}", where, method=True)
        method = settings.setdefault("method", name)
        if method not in METHODS:
            known = ", ".join([*METHODS, SUPERVISED])
            raise UserError(
                f"unknown method {method!r}{where}; choose one of {known} (or give a row "
                "its method: setting)"
            )
        rows.append(MethodRow(name, settings))
    return tuple(rows), supervised


def _baseline_rows(value: Any, where: str) -> tuple[BaselineRow, ...]:
    if not isinstance(value, Mapping) or not value:
        raise UserError(f"baselines{where} must be a mapping of name → {{model, tuned}}")
    rows = []
    for name, settings in value.items():
        name, settings = str(name), dict(settings or {})
        if not _ROW_NAME.match(name):
            raise UserError(f"baseline name {name!r}{where} must be letters, digits and . _ + -")
        _check_keys(settings, _BASELINE_KEYS, f"baselines.{name}{where}")
        model = settings.get("model", name)
        tuned = settings.get("tuned", False)
        weights = settings.get("weights")
        weights = None if weights in (None, "none") else weights
        if model not in _BASELINE_MODELS:
            raise UserError(
                f"unknown baseline model {model!r} in baselines.{name}{where}; choose one of "
                f"{', '.join(_BASELINE_MODELS)}"
            )
        if not isinstance(tuned, bool):
            raise UserError(f"baselines.{name}.tuned{where} must be true or false")
        if tuned and model not in SUPERVISED_MODELS:
            raise UserError(
                f"baselines.{name}{where}: {model} has no search space; tune one of "
                f"{', '.join(SUPERVISED_MODELS)}"
            )
        if weights not in (None, "imagenet"):
            raise UserError(f"baselines.{name}.weights{where} must be imagenet or none")
        if weights and model not in ("resnet50", "inceptionv3"):
            raise UserError(f"baselines.{name}{where}: {model} has no ImageNet weights")
        rows.append(BaselineRow(name, model, tuned, weights))
    return tuple(rows)


def _augment_pairs(value: Any, where: str) -> tuple[AugmentPairs, tuple[MethodRow, ...]]:
    """The matrix and its rows (each op's name is checked by `TrainConfig.validate`)."""
    if not isinstance(value, Mapping):
        raise UserError(f"augment_pairs{where} must be a mapping of method, ops, protocol")
    _check_keys(value, _PAIRS_KEYS, f"augment_pairs{where}")
    ops = tuple(dict.fromkeys(str(op).strip() for op in _joined(value.get("ops", "")).split(",")))
    if len(ops) < 2 or not all(ops):
        raise UserError(f"augment_pairs.ops{where} must name at least two augmentation ops")
    method = value.get("method", "simclr")
    if method not in METHODS:
        raise UserError(
            f"unknown method {method!r} in augment_pairs{where}; choose one of {', '.join(METHODS)}"
        )
    pairs = AugmentPairs(method, ops, str(value.get("protocol", "linear")))
    extra = value.get("settings") or {}
    if not isinstance(extra, Mapping):
        raise UserError(f"augment_pairs.settings{where} must be a mapping of settings")
    settings = _settings(extra, "augment_pairs.settings", where, method=False)
    rows = tuple(
        MethodRow(
            pairs.row_name(a, b),
            {**settings, "method": method, "augment": a if a == b else f"{a}+{b}"},
        )
        for a, b in pairs.pairs()
    )
    return pairs, rows


def _tuning(values: dict[str, Any], where: str) -> Tuning:
    _check_keys(values, _TUNING_KEYS, f"tuning{where}")
    tuning = Tuning(**values)
    for name in ("max_trials", "patience"):
        if not _positive(getattr(tuning, name)):
            raise UserError(f"tuning.{name}{where} must be an integer >= 1")
    if tuning.epochs is not None and not _positive(tuning.epochs):
        raise UserError(f"tuning.epochs{where} must be an integer >= 1")
    if tuning.tuner not in TUNERS:
        raise UserError(f"tuning.tuner{where} must be one of {', '.join(TUNERS)}")
    return tuning


def _protocol_options(values: dict[str, Any], where: str) -> ProtocolOptions:
    names = [f.name for f in dataclasses.fields(ProtocolOptions)]
    _check_keys(values, names, f"protocol_options{where}")
    return ProtocolOptions(**values)


def _metrics(value: Any, where: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(item.strip() for item in _joined(value).split(",")))
    _check_keys(dict.fromkeys(names), METRICS, f"metrics{where}")
    return names


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
