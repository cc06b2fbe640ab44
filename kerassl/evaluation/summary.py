"""Mean ± standard deviation over seeds: how every kerassl table reports a result."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof 1; 0 for one value), count) of the values
    that are numbers; (nan, nan, 0) when none is."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), std, len(finite)


def percent(mean: float, std: float | None = None, count: int | None = None) -> str:
    """`72.8 ± 0.3` (fractions as percentages, one decimal); `72.8` for a single value;
    `–` for nothing."""
    if mean is None or math.isnan(mean):
        return "–"
    if std is None or count is not None and count < 2:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def group_rows(rows: Sequence[dict], keys: Sequence[str], value: str = "top1") -> list[dict]:
    """One dict per distinct combination of `keys` (in first-seen order) with the `mean`,
    `std` and `n` of `value` over its rows (e.g. over seeds)."""
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(key) for key in keys), []).append(row.get(value))
    summary = []
    for combination, values in groups.items():
        mean, std, count = mean_std(values)
        summary.append(
            dict(zip(keys, combination, strict=True)) | {"mean": mean, "std": std, "n": count}
        )
    return summary
