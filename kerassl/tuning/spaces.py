"""Search spaces as data: hyperparameter specs, their parsing, and each model's defaults.

A search space is a dict of hyperparameter name → spec, where a spec is

- a range `{"min": 1e-4, "max": 1e-2, "sampling": "log", "step": None}` (an `hp.Int` when
  `min`, `max` and `step` are integers, else an `hp.Float`),
- a list of choices `[16, 32, 64]` (`hp.Choice`), or
- a single value (`hp.Fixed`).

This module imports neither Keras nor KerasTuner, so that the CLI can check a search
definition before loading TensorFlow.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kerassl.methods import METHODS

if TYPE_CHECKING:
    import keras_tuner as kt

SAMPLINGS = ("linear", "log", "reverse_log")
_SPEC_KEYS = {"min", "max", "sampling", "step"}


def _number(value: Any) -> Any:
    """YAML 1.1 reads `1e-4` as a string; accept numeric strings as numbers."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Param:
    """One hyperparameter's search range, choices or fixed value.

    Use `Param.parse(name, spec)` to read a spec; `define(hp, name)` registers it.
    """

    kind: str  # "int", "float", "choice" or "fixed"
    min: float | None = None
    max: float | None = None
    sampling: str = "linear"
    step: float | None = None
    values: tuple = ()

    @classmethod
    def parse(cls, name: str, spec: Any) -> Param:
        """Reads a spec (range dict, choice list or scalar); ValueError names what is wrong."""
        if isinstance(spec, Param):
            return spec
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - _SPEC_KEYS)
            if unknown or "min" not in spec or "max" not in spec:
                raise ValueError(
                    f"{name}: a range needs min and max (optional sampling, step). "
                    f"Received: {dict(spec)}"
                )
            low, high = _number(spec["min"]), _number(spec["max"])
            step = _number(spec.get("step"))
            sampling = spec.get("sampling") or "linear"
            for key, value in (("min", low), ("max", high), ("step", step)):
                if value is not None and (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not math.isfinite(value)
                ):
                    raise ValueError(f"{name}: {key} must be a number. Received: {key}={value!r}")
            if low > high:
                raise ValueError(f"{name}: min must be <= max. Received: min={low}, max={high}")
            if sampling not in SAMPLINGS:
                raise ValueError(
                    f"{name}: sampling must be one of {', '.join(SAMPLINGS)}. "
                    f"Received: sampling={sampling!r}"
                )
            if sampling != "linear" and low <= 0:
                raise ValueError(f"{name}: {sampling} sampling needs min > 0. Received: min={low}")
            if step is not None and step <= 0:
                raise ValueError(f"{name}: step must be > 0. Received: step={step}")
            integer = _is_int(low) and _is_int(high) and (step is None or _is_int(step))
            return cls("int" if integer else "float", low, high, sampling, step)
        if isinstance(spec, (list, tuple)):
            values = tuple(_number(value) for value in spec)
            if not values:
                raise ValueError(f"{name}: a list of choices must not be empty.")
            if not all(isinstance(value, (bool, int, float, str)) for value in values):
                raise ValueError(f"{name}: choices must be numbers or strings. Received: {spec}")
            if len({type(value) for value in values} - {int, float}) > 1 or (
                any(isinstance(v, (str, bool)) for v in values)
                and len({type(v) for v in values}) > 1
            ):
                raise ValueError(f"{name}: choices must share one type. Received: {spec}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: choices must be distinct. Received: {spec}")
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                if not all(_is_int(v) for v in values):
                    values = tuple(float(v) for v in values)
            return cls("choice", values=values)
        if spec is None or isinstance(spec, (bool, int, float, str)):
            return cls("fixed", values=(_number(spec),))
        raise ValueError(f"{name}: expected a range, a list or a value. Received: {spec!r}")

    def define(self, hp: kt.HyperParameters, name: str) -> Any:
        """Registers the hyperparameter in `hp` and returns its current value."""
        if self.kind == "int":
            step = int(self.step) if self.step is not None else None
            return hp.Int(name, int(self.min), int(self.max), step=step, sampling=self.sampling)
        if self.kind == "float":
            return hp.Float(name, self.min, self.max, step=self.step, sampling=self.sampling)
        if self.kind == "choice":
            return hp.Choice(name, list(self.values))
        return hp.Fixed(name, self.values[0])

    def contains(self, value: Any) -> bool:
        """Whether `value` lies in this range or among these choices."""
        if self.kind in ("int", "float"):
            return self.min <= value <= self.max
        return value in self.values


def unknown_names(what: str, unknown, known, where: str = "", known_as: str = "known") -> str:
    """One line naming unknown names with the closest known ones, e.g. `unknown key
    max_trial in a.yaml; did you mean max_trials? known: model, dataset, …`."""
    unknown = sorted(map(str, unknown))
    known = list(known)
    close = [m[0] for name in unknown if (m := difflib.get_close_matches(name, known, n=1))]
    noun = what if len(unknown) == 1 else f"{what}s"
    hint = f" did you mean {', '.join(close)}?" if close else ""
    return f"unknown {noun} {', '.join(unknown)}{where};{hint} {known_as}: {', '.join(known)}"


def parse_space(defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict:
    """Merges `overrides` into `defaults` (both name → spec) and parses every spec.

    Raises:
        ValueError: an unknown hyperparameter name or a bad spec (the message names it).
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            unknown_names("hyperparameter", unknown, sorted(defaults), known_as="tunable")
        )
    merged = {**defaults, **overrides}
    return {name: Param.parse(name, spec) for name, spec in merged.items()}


# Augmentation strengths shared by the from-scratch baselines (see `label_augmenter`).
_AUGMENT_SPACE = {
    "rotation": {"min": 0.0, "max": 0.08, "step": 0.02},
    "translation": {"min": 0.0, "max": 0.15, "step": 0.05},
    "zoom": {"min": 0.0, "max": 0.2, "step": 0.05},
}


CNN_SPACE = {
    "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
    "weight_decay": {"min": 1e-6, "max": 1e-2, "sampling": "log"},
    "batch_size": [16, 32, 64],
    "base_filters": [16, 32, 64],
    "convs_per_block": [1, 2],
    "dropout": {"min": 0.0, "max": 0.5, "step": 0.1},
    "pooling": ["flatten", "avg"],
    "dense_units": [0, 128, 256],
    "dense_dropout": {"min": 0.0, "max": 0.5, "step": 0.1},
    **_AUGMENT_SPACE,
}

MLP_SPACE = {
    "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
    "weight_decay": {"min": 1e-6, "max": 1e-2, "sampling": "log"},
    "batch_size": [16, 32, 64],
    "hidden_units": [128, 256, 512, 1024],
    "hidden_layers": [1, 2, 3],
    "dropout": {"min": 0.0, "max": 0.5, "step": 0.1},
    **_AUGMENT_SPACE,
}

TRANSFER_SPACE = {
    "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
    "weight_decay": [1e-4],
    "batch_size": [32],
    "dense1": [0, 128, 256, 512],
    "dense2": [0, 64, 128, 256],
    "dropout": {"min": 0.0, "max": 0.5, "step": 0.1},
    "fine_tune_blocks": 0,
    "rotation": 0.02,
    "translation": 0.1,
    "zoom": 0.1,
}

# The part of every SSL method's space (`TrainConfig` fields). `head` only for the methods
# that use the shared projection head: a method with its own projector ignores `--head`.
SSL_SHARED_SPACE = {
    "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
    "batch_size": [64, 128, 256],
    "head": ["linear", "mlp", "deep_mlp"],
}

# The ranges of the methods' own hyperparameters, by `TrainConfig` field. A method's space
# holds those of its registry entry's `arguments` (`ssl_space`); the other arguments
# (similarity, symmetric, bn_groups, seed) are choices of design, fixed through `ssl`.
SSL_HYPERPARAMETERS = {
    # SimCLR (Chen et al. 2020, table 5: 0.05 to 1) and MoCo (0.07 in v1, 0.2 in v2).
    "temperature": {"min": 0.05, "max": 1.0, "sampling": "log"},
    # MoCo's key-encoder m (He et al. 2020 ablate 0.9 to 0.9999; 0.99 and 0.999 best) and
    # BYOL's τ_base (Grill et al. 2020 ablate it from 0.9 to 1; 0.996 by default).
    "momentum": [0.9, 0.99, 0.996, 0.999],
    # MoCo's negatives K (He et al. 2020 compare 256 to 65536, better with more); a small
    # dataset's pool holds far fewer images than the paper's 65536 keys.
    "queue_size": [1024, 4096, 16384],
    # Barlow Twins' λ of the off-diagonal term, around the paper's 5e-3 (Zbontar et al.
    # 2021 found the method little sensitive to λ near it).
    "bt_lambda": {"min": 1e-3, "max": 2e-2, "sampling": "log"},
    # VICReg's weights around the paper's λ = μ = 25, ν = 1 (Bardes et al. 2022 keep
    # ν = 1 and λ = μ > 1 in their study of the coefficients).
    "vicreg_lambda": {"min": 5.0, "max": 50.0, "sampling": "log"},
    "vicreg_mu": {"min": 5.0, "max": 50.0, "sampling": "log"},
    "vicreg_nu": {"min": 0.5, "max": 2.0, "sampling": "log"},
    # The predictor's hidden width of BYOL (4096 on ImageNet) and SimSiam (512, a
    # bottleneck; Chen & He 2021), scaled to small encoders.
    "hidden_dim": [128, 256, 512, 1024],
}


def ssl_space(method: str) -> dict[str, Any]:
    """The default search space of an SSL method (`TrainConfig` field → spec): its own
    hyperparameters (those of `METHODS[method].arguments` with a range in
    `SSL_HYPERPARAMETERS`), then the shared ones that apply to it. The one place that
    decides which settings a method's trials tune."""
    spec = METHODS[method]
    own = {
        name: SSL_HYPERPARAMETERS[name] for name in spec.arguments if name in SSL_HYPERPARAMETERS
    }
    shared = {
        name: value
        for name, value in SSL_SHARED_SPACE.items()
        if name != "head" or spec.projector is None
    }
    return {**own, **shared}


SIMCLR_SPACE = ssl_space("simclr")  # temperature, learning_rate, batch_size, head

# Every supervised space also has `flip` (horizontal flips), fixed by default.
DEFAULT_SPACES = {
    "cnn": {**CNN_SPACE, "flip": False},
    "mlp": {**MLP_SPACE, "flip": False},
    "resnet50": {**TRANSFER_SPACE, "flip": True},
    "inceptionv3": {**TRANSFER_SPACE, "flip": True},
    **{name: ssl_space(name) for name in METHODS},
}
