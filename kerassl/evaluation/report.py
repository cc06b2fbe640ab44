"""The files of an evaluation directory (`eval-*/`), written by `kerassl evaluate`.

```
eval-<timestamp>/
  evaluation.json     the source, dataset, protocols, budgets, seeds and options
  results.csv         one row per protocol × label budget × seed: top-1…5, schedule, …
  results.md          mean ± std over seeds per protocol and budget; how each stopped
  per_class.csv       per-class accuracy of every row
  confusion/          PROTOCOL_LABELS.csv + .png, summed over the seeds
  diagnostics.json    embedding diagnostics on the test split (intra/inter-class cosine
                      similarity, alignment, uniformity)
  tsne.png            t-SNE of a subsample of the test features
```

The directory is assembled under a hidden temporary name beside it and renamed when
complete, so an interrupted or failed evaluation leaves no half-written `eval-*/`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kerassl.errors import UserError
from kerassl.evaluation.summary import group_rows, percent

RESULT_COLUMNS = (
    "protocol",
    "labels",
    "seed",
    "num_labeled",
    "num_validation",
    "top1",
    "top2",
    "top3",
    "top4",
    "top5",
    "schedule",
    "selected",
    "seconds",
)


@contextmanager
def assembled(out: Path):
    """Yields a temporary directory that becomes `out` on success and vanishes otherwise.

    Raises:
        UserError: `out` exists already or its parent cannot be written.
    """
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; give another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:
        raise UserError(f"cannot write under {out.parent}: {error.strerror}") from None
    try:
        yield partial
        os.chmod(partial, 0o755)
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def results_csv(rows: Sequence[dict]) -> str:
    """Every row, `selected` as JSON."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "selected": json.dumps(row.get("selected", {}))})
    return buffer.getvalue()


def per_class_csv(rows: Sequence[dict], class_names: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["protocol", "labels", "seed", "class", "accuracy"])
    for row in rows:
        for name, accuracy in zip(class_names, row["per_class"], strict=True):
            writer.writerow([row["protocol"], row["labels"], row["seed"], name, accuracy])
    return buffer.getvalue()


def summed_confusions(rows: Sequence[dict]) -> dict[tuple[str, str], np.ndarray]:
    """(protocol, labels) → the confusion matrix summed over its seeds."""
    sums: dict[tuple[str, str], np.ndarray] = {}
    for row in rows:
        key = (row["protocol"], row["labels"])
        matrix = np.asarray(row["confusion"], np.int64)
        sums[key] = sums[key] + matrix if key in sums else matrix
    return sums


def results_markdown(
    rows: Sequence[dict], title: str, lines: Sequence[str], diagnostics: dict | None = None
) -> str:
    """Top-1 (and top-5 when reported) as mean ± std over seeds: a row per protocol, a
    column per label budget; then how each protocol chose and stopped."""
    budgets = list(dict.fromkeys(row["labels"] for row in rows))
    protocols = list(dict.fromkeys(row["protocol"] for row in rows))
    text = [f"# {title}", "", *lines, ""]
    for metric in ("top1", "top5"):
        if not any(metric in row for row in rows):
            continue
        summary = {
            (s["protocol"], s["labels"]): s
            for s in group_rows(rows, ("protocol", "labels"), metric)
        }
        text += [
            f"## {metric.replace('top', 'top-')} accuracy (%), mean ± std over seeds",
            "",
            "| protocol | " + " | ".join(f"{b} labels" for b in budgets) + " |",
            "|---|" + "---|" * len(budgets),
        ]
        for protocol in protocols:
            cells = []
            for budget in budgets:
                s = summary.get((protocol, budget))
                cells.append(
                    "–" if s is None else f"{percent(s['mean'], s['std'], s['n'])} (n={s['n']})"
                )
            text.append(f"| {protocol} | " + " | ".join(cells) + " |")
        text.append("")
    text += ["## How each protocol chose and stopped", ""]
    for row in rows:
        text.append(
            f"- {row['protocol']}, {row['labels']} labels, seed {row['seed']} "
            f"({row['num_labeled']} labels, {row['num_validation']} for validation): "
            f"{row['schedule']}"
        )
    if diagnostics:
        text += ["", "## Embedding diagnostics (test split)", ""]
        text += [f"- {name}: {_number(value)}" for name, value in diagnostics.items()]
        text += ["", "![t-SNE of the test features](tsne.png)"]
    text += ["", "Confusion matrices (summed over seeds): `confusion/`.", ""]
    return "\n".join(text)


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_evaluation(
    directory: Path,
    rows: Sequence[dict],
    class_names: Sequence[str],
    settings: dict,
    title: str,
    lines: Sequence[str],
    diagnostics: dict | None = None,
) -> None:
    """Writes every file of an evaluation directory into `directory` (see the module)."""
    from kerassl.evaluation.figures import confusion_png

    directory = Path(directory)
    (directory / "evaluation.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    (directory / "results.csv").write_text(results_csv(rows))
    (directory / "per_class.csv").write_text(per_class_csv(rows, class_names))
    confusion_dir = directory / "confusion"
    confusion_dir.mkdir()
    for (protocol, budget), matrix in summed_confusions(rows).items():
        stem = f"{protocol}_{budget}".replace("/", "-per-")
        with open(confusion_dir / f"{stem}.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["true \\ predicted", *class_names])
            for name, counts in zip(class_names, matrix.tolist(), strict=True):
                writer.writerow([name, *counts])
        confusion_png(
            matrix, class_names, confusion_dir / f"{stem}.png", f"{protocol}, {budget} labels"
        )
    if diagnostics is not None:
        (directory / "diagnostics.json").write_text(json.dumps(diagnostics, indent=2) + "\n")
    (directory / "results.md").write_text(results_markdown(rows, title, lines, diagnostics))
