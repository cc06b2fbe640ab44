"""results.csv and results.md of a benchmark: every cell's row, and the studies' tables.

results.md has a header (data, label budgets, pretraining budget, tuning, machine, time)
and one table per protocol family: rows are the method rows (× protocol when the family
has several) and the supervised baselines, columns the label budgets (× the metrics,
top-1 … top-5, when several), cells "mean ± std" over the seeds
(`kerassl.evaluation.summary`); an augmentation-pair matrix when the definition has one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kerassl.benchmarking.cells import duration
from kerassl.benchmarking.definition import Definition
from kerassl.evaluation.options import budget_name
from kerassl.evaluation.report import RESULT_COLUMNS
from kerassl.evaluation.summary import group_rows, percent

# Protocol families: one table each, with the protocols of the definition among them.
FAMILIES = (
    ("Frozen features: linear and MLP heads", ("linear", "mlp")),
    ("Frozen features: nearest neighbours", ("knn", "1nn")),
    ("Fine-tuned encoder", ("finetune",)),
    ("Semi-supervised: the unlabeled pool too", ("distill", "consistency")),
)
PROTOCOL_TITLES = {
    "linear": "linear",
    "mlp": "MLP",
    "knn": "kNN",
    "1nn": "1-NN",
    "finetune": "fine-tuned",
    "distill": "distilled",
    "consistency": "FixMatch",
}
CSV_COLUMNS = ("row", "stage", *RESULT_COLUMNS)
WEIGHTS_NOT_FOUND = "skipped: weights not found"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every evaluation and baseline row (per-class accuracy and the confusion matrix stay
    in the cell files); `selected` as JSON."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = dict(row)
        values["selected"] = json.dumps(values.get("selected") or {}, sort_keys=True)
        writer.writerow(values)
    return out.getvalue()


def pretraining_budget(definition: Definition, pretraining: Mapping[str, Mapping]) -> str:
    """How the rows' pretraining compares: equal steps, equal wall-clock, or per row; with
    the seconds each trained (compilation and the run's own probe not counted)."""
    done = {
        r.name: pretraining[r.name] for r in definition.pretrained_rows if r.name in pretraining
    }
    if not done:
        return "none (no method row is pretrained)"
    budgets = {p.get("time_budget") for p in done.values()}
    shapes = {(p["epochs"], p["steps_per_epoch"], p["batch_size"]) for p in done.values()}
    if len(budgets) == 1 and None not in budgets:
        each = ", ".join(
            f"{n} {p['steps']} steps of {p['batch_size']} images in {p['pretrain_seconds']:.0f} s"
            for n, p in done.items()
        )
        return f"equal wall-clock, {duration(budgets.pop())} per method: {each}"
    if len(shapes) == 1 and budgets == {None}:
        epochs, steps, batch = shapes.pop()
        each = ", ".join(f"{n} {p['pretrain_seconds']:.0f} s" for n, p in done.items())
        return (
            f"equal steps, {_plural(epochs, 'epoch')} × {steps} steps of {batch} images per "
            f"method: {each}"
        )
    each = "; ".join(
        f"{n} {p['epochs']} × {p['steps_per_epoch']} steps of {p['batch_size']}"
        + (f" (budget {duration(p['time_budget'])})" if p.get("time_budget") else "")
        + f", {p['pretrain_seconds']:.0f} s"
        for n, p in done.items()
    )
    return f"per row (not equal): {each}"


def _tuning_line(definition: Definition, tuning: Mapping[tuple[str, str], Mapping]) -> list[str]:
    lines = []
    for baseline in (b for b in definition.baselines if b.tuned):
        searched = [
            f"{labels}: val {100 * t['best_score']:.1f} %"
            for (name, labels), t in tuning.items()
            if name == baseline.name and t.get("best_score") is not None
        ]
        lines.append(
            f"- {baseline.title}: KerasTuner {definition.tuning.tuner} search of "
            f"{_plural(definition.tuning.max_trials, 'trial')} per label budget, on seed 0's "
            "split only (trained on its labeled examples, scored on its validation "
            "examples; never the test split); the best hyperparameters then train every seed"
            + (f" ({'; '.join(searched)})" if searched else "")
        )
    return lines


def markdown(
    definition: Definition,
    rows: Sequence[Mapping[str, Any]],
    *,
    facts: Mapping[str, str],
    pretraining: Mapping[str, Mapping] = {},
    tuning: Mapping[tuple[str, str], Mapping] = {},
    skipped: Mapping[tuple[str, str | None], str] = {},
    figures: Sequence[str] = (),
) -> str:
    """results.md.

    Args:
        definition: the benchmark.
        rows: the evaluation and baseline rows of its cells.
        facts: header lines by name: "data", "machine", "time".
        pretraining: method row → its pretraining cell.
        tuning: (baseline, label budget) → its search cell.
        skipped: (row, label budget or None for every budget) → why it has no result.
        figures: PNGs to show below the tables, relative to results.md.
    """
    budgets = [budget_name(b) for b in definition.labels]
    seeds = ", ".join(map(str, definition.seeds))
    counts = _label_counts(rows)
    budget_text = ", ".join(
        f"{name} ({counts[name]} labels)" if name in counts else name for name in budgets
    )
    lines = [
        f"# {definition.title or 'Benchmark'}",
        "",
        f"- data: {facts.get('data', definition.dataset)}",
        f"- label budgets: {budget_text}; {100 * definition.validation:g} % of each budget's "
        "labels held out for validation (model selection, early stopping), never the test "
        f"split; seeds {seeds} vary the label split only",
        f"- pretraining: {pretraining_budget(definition, pretraining)}",
        *_tuning_line(definition, tuning),
        f"- machine: {facts.get('machine', 'unknown')}",
        f"- time: {facts.get('time', 'unknown')}",
    ]
    for title, family in FAMILIES:
        protocols = [p for p in definition.protocols if p in family]
        if not protocols:
            continue
        lines += ["", *_table(definition, rows, title, protocols, budgets, skipped)]
        lines += _schedules(rows, protocols, budgets)
    if definition.augment_pairs is not None:
        lines += ["", *_pair_matrix(definition, rows, budgets[0], skipped)]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


def _pair_matrix(definition, rows, budget, skipped) -> list[str]:
    """The augmentation-pair matrix: first op (rows) × second op (columns), top-1 of the
    pair's row under the matrix's protocol at one budget; the diagonal is an op alone."""
    pairs = definition.augment_pairs
    ops, protocol = pairs.ops, pairs.protocol
    summary = {
        g["row"]: g
        for g in group_rows(rows, ("row", "protocol", "labels"), "top1")
        if g["protocol"] == protocol and g["labels"] == budget
    }
    lines = [
        f"## Augmentation pairs ({pairs.method}): {PROTOCOL_TITLES[protocol]} top-1 accuracy "
        f"(%) at {budget} labels, mean ± std over the seeds; the diagonal is one op alone",
        "",
        "| first op, second op → | " + " | ".join(ops) + " |",
        "|---|" + "---|" * len(ops),
    ]
    for i, first in enumerate(ops):
        cells = []
        for j, second in enumerate(ops):
            name = pairs.row_name(*((first, second) if i <= j else (second, first)))
            group = summary.get(name)
            if skipped.get((name, None)):
                cells.append(skipped[(name, None)])
            elif group is None or not group["n"]:
                cells.append("–")
            else:
                cells.append(percent(group["mean"], group["std"], group["n"]))
        lines.append(f"| {first} | " + " | ".join(cells) + " |")
    return lines


def _label_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = {}
    for row in rows:
        if row.get("num_labeled") is not None:
            counts.setdefault(row["labels"], row["num_labeled"])  # validation included
    return counts


def _table(definition, rows, title, protocols, budgets, skipped) -> list[str]:
    """A family's table: a column per budget (× metric when several), a row per method
    row (× protocol when several) and per baseline."""
    seeds, metrics = len(definition.seeds), definition.metrics
    names = ", ".join(f"top-{metric[-1]}" for metric in metrics)
    columns = [(b, m) for b in budgets for m in metrics]
    heads = [b if len(metrics) == 1 else f"{b} · top-{m[-1]}" for b, m in columns]
    lines = [
        f"## {title}: {names} accuracy (%), mean ± std over {seeds} seed{'s' * (seeds > 1)}",
        "",
        "| method | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(heads),
    ]
    summary = {
        (g["row"], g["protocol"], g["labels"], metric): g
        for metric in metrics
        for g in group_rows(rows, ("row", "protocol", "labels"), metric)
    }

    def cells(name: str, protocol: str) -> list[str]:
        out = []
        for budget, metric in columns:
            reason = skipped.get((name, None)) or skipped.get((name, budget))
            group = summary.get((name, protocol, budget, metric))
            if reason:
                out.append(reason)
            elif group is None or not group["n"]:
                out.append("–")
            else:
                text = percent(group["mean"], group["std"], group["n"])
                out.append(text if group["n"] == seeds else f"{text} (n={group['n']})")
        return out

    for row in definition.methods:
        for protocol in protocols:
            label = row.name if len(protocols) == 1 else f"{row.name} · {PROTOCOL_TITLES[protocol]}"
            lines.append(f"| {label} | " + " | ".join(cells(row.name, protocol)) + " |")
    for baseline in definition.baselines:
        lines.append(
            f"| {baseline.title} | " + " | ".join(cells(baseline.name, "supervised")) + " |"
        )
    return lines


def _schedules(rows, protocols, budgets) -> list[str]:
    """How the protocols stopped or selected, per protocol and budget (distinct texts)."""
    found: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row.get("protocol") in protocols and row.get("schedule"):
            texts = found.setdefault((row["protocol"], row["labels"]), [])
            if row["schedule"] not in texts:
                texts.append(str(row["schedule"]))
    if not found:
        return []
    lines = ["", "How each protocol stopped or selected:"]
    for protocol in protocols:
        for budget in budgets:
            texts = found.get((protocol, budget))
            if texts:
                shown = " / ".join(texts[:3]) + (" / …" if len(texts) > 3 else "")
                lines.append(f"- {PROTOCOL_TITLES[protocol]} · {budget}: {shown}")
    return lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"
