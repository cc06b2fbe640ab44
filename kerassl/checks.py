"""Rules on single values, each written once.

A constructor checks its arguments with `check(name, value)`, which raises a Keras-style
`ValueError("temperature must be > 0. Received: temperature=0")`; `TrainConfig.validate`
applies the same `RULES` to the CLI settings and raises a one-line `UserError` naming the
option instead. No TensorFlow import: the CLI validates before TensorFlow loads.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kerassl import catalog


@dataclass(frozen=True)
class Rule:
    """A predicate on one value and the words saying what it accepts."""

    test: Callable[[Any], bool]
    accepted: str

    def holds(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except TypeError:  # e.g. a string where a number is expected
            return False


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer_at_least(low: int) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def one_of(names: tuple[str, ...]) -> Rule:
    return Rule(lambda v: v in names, f"one of {', '.join(names)}")


POSITIVE = Rule(lambda v: v > 0, "> 0")
NON_NEGATIVE = Rule(lambda v: v >= 0, ">= 0")
UNIT_INTERVAL_OPEN = Rule(lambda v: 0 <= v < 1, "in [0, 1)")

# Argument name → rule. Config fields use the same rules (see `TrainConfig.validate`).
RULES: dict[str, Rule] = {
    "temperature": POSITIVE,
    "similarity": one_of(catalog.SIMILARITIES),
    "learning_rate": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "momentum": UNIT_INTERVAL_OPEN,
    "queue_size": integer_at_least(1),
    "bn_groups": integer_at_least(1),
    "lambda_": NON_NEGATIVE,
    "epsilon": NON_NEGATIVE,
    "base_momentum": UNIT_INTERVAL_OPEN,
    "total_steps": integer_at_least(1),
    "predictor_hidden_dim": integer_at_least(1),
    "invariance_weight": NON_NEGATIVE,
    "variance_weight": NON_NEGATIVE,
    "covariance_weight": NON_NEGATIVE,
    "gamma": POSITIVE,
    "epochs": integer_at_least(1),
    "batch_size": integer_at_least(2),
    "projection_dim": integer_at_least(1),
    "hidden_dim": integer_at_least(1),
    "steps_per_epoch": integer_at_least(1),
    "max_unlabeled": integer_at_least(2),
    "image_size": integer_at_least(8),
    "validation": UNIT_INTERVAL_OPEN,
    "knn_every": integer_at_least(0),
    "baseline_epochs": integer_at_least(1),
    "distill_pool": integer_at_least(1),
    "consistency_steps": integer_at_least(1),
}


def check(name: str, value: Any, rule: Rule | None = None) -> Any:
    """Returns `value` if `RULES[name]` (or `rule`) holds, else raises a Keras-style
    `ValueError`."""
    rule = rule or RULES[name]
    if not rule.holds(value):
        raise ValueError(f"{name} must be {rule.accepted}. Received: {name}={value!r}")
    return value


def parse_widths(text: str) -> tuple[int, ...]:
    """`"1024,1024,1024"` → `(1024, 1024, 1024)`; `ValueError` unless every width is an
    integer >= 1."""
    parts = [part.strip() for part in str(text).split(",")]
    if not parts or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise ValueError(
            "widths must be comma-separated integers >= 1 (e.g. 1024,1024,1024). "
            f"Received: {text!r}"
        )
    return tuple(int(part) for part in parts)


def parse_weights(value: str | None) -> str | None:
    """The pretrained-weights setting: `None`/`"none"` → None, other names unchanged."""
    return None if value is None or str(value).lower() == "none" else str(value)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Every:
    """A checkpoint period: every `steps` training steps, or every `seconds` of training."""

    steps: int | None = None
    seconds: float | None = None

    def due(self, steps_since: int, seconds_since: float) -> bool:
        if self.steps is not None:
            return steps_since >= self.steps
        return seconds_since >= self.seconds


def parse_duration(text: str) -> float:
    """`"30s"`, `"5m"`, `"1.5h"` → seconds; `ValueError` unless a duration > 0."""
    every = parse_every(text)
    if every.seconds is None:
        raise ValueError(f"a duration needs a unit (s, m or h), such as 5m. Received: {text!r}")
    return every.seconds


def parse_every(text: str) -> Every:
    """`"200"` → every 200 steps; `"30s"`, `"5m"`, `"1.5h"` → a duration. `ValueError`
    unless the number is > 0 (steps: an integer)."""
    text = str(text).strip().lower()
    try:
        if text and text[-1] in _DURATION_UNITS:
            seconds = float(text[:-1]) * _DURATION_UNITS[text[-1]]
            if seconds > 0:
                return Every(seconds=seconds)
        elif text.isdigit() and int(text) >= 1:
            return Every(steps=int(text))
    except ValueError:
        pass
    raise ValueError(
        f"a period must be a number of steps >= 1 or a duration such as 30s, 5m, 1h. "
        f"Received: {text!r}"
    )
