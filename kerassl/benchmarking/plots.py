"""The benchmark's PNGs: accuracy against the number of labels, pretraining curves
(`kerassl.evaluation.figures` draws them; this module chooses what goes in)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kerassl.benchmarking.definition import Definition
from kerassl.benchmarking.tables import PROTOCOL_TITLES
from kerassl.evaluation.summary import group_rows

ACCURACY_PNG = "accuracy_vs_labels.png"
CURVES_PNG = "curves.png"


def series_name(definition: Definition, row: Mapping[str, Any]) -> str:
    """`simclr + linear` for a method row, the baseline's title for a baseline."""
    for baseline in definition.baselines:
        if baseline.name == row["row"]:
            return baseline.title
    return f"{row['row']} + {PROTOCOL_TITLES.get(row['protocol'], row['protocol'])}"


def accuracy_points(definition: Definition, rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """`accuracy_vs_labels_png`'s points: per series and budget, top-1 mean and std over
    the seeds at the budget's number of labeled images (training + validation)."""
    named = [
        {**row, "series": series_name(definition, row), "count": _labels(row)}
        for row in rows
        if row.get("top1") is not None
    ]
    groups = group_rows(named, ("series", "count"), "top1")
    return [
        {"series": g["series"], "labels": g["count"], "mean": g["mean"], "std": g["std"]}
        for g in groups
    ]


def _labels(row: Mapping[str, Any]) -> int:
    return int(row["num_labeled"])  # every chosen label, the validation ones included


def write(definition: Definition, bench: Path, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Writes accuracy_vs_labels.png (when some cell has a result) and curves.png (when
    some row was pretrained); returns the paths written."""
    from kerassl.evaluation.figures import accuracy_vs_labels_png, curves_png, read_history

    written = []
    points = accuracy_points(definition, rows)
    title = f"top-1 accuracy vs labeled images on {definition.dataset}"
    if points:
        written.append(accuracy_vs_labels_png(points, bench / ACCURACY_PNG, title=title))
    curves = {
        row.name: read_history(bench / "runs" / row.name)
        for row in definition.pretrained_rows
        if (bench / "runs" / row.name / "history.csv").is_file()
    }
    if curves:
        title = f"pretraining on {definition.dataset}"
        written.append(curves_png(curves, bench / CURVES_PNG, title=title))
    return written
