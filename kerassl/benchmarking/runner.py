"""A whole benchmark: check its directory, run the cells not done, write the outputs.

```
<bench>/
  benchmark.json            the definition's record (`Definition.record`) and data facts
  cells/<cell key>.json     one finished cell each (`kerassl.benchmarking.cells`)
  runs/<method row>/        each method row's run directory (`kerassl train`'s layout)
  tuning/<search cell>/     each tuned baseline's KerasTuner search
  augmentations/<row>.png   the augmented pairs each method row trained on
  results.csv, results.md   every row; the tables (`kerassl.benchmarking.tables`)
  accuracy_vs_labels.png, curves.png
```

A benchmark directory keeps the settings it was made with: a re-run with other settings
is refused (`rerun.changes`), one asking for other rows, budgets, seeds or protocols
reuses the finished cells and runs the missing ones. A user error removes the directory
only if this invocation created it. Checking a directory loads no TensorFlow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kerassl.benchmarking import rerun
from kerassl.benchmarking.cells import (
    BASELINE,
    EVALUATE,
    PRETRAIN,
    TUNE,
    CellStore,
    Progress,
    Sizes,
    duration,
    estimate_seconds,
    list_cells,
)
from kerassl.benchmarking.definition import Definition
from kerassl.benchmarking.tables import WEIGHTS_NOT_FOUND
from kerassl.errors import UserError
from kerassl.run_dir import RunDir

RECORD = "benchmark.json"


def check_directory(definition: Definition, out: Path) -> dict[str, Any] | None:
    """The record of the benchmark in `out` (None if `out` holds none), after checking
    that `definition` may continue it.

    Raises:
        UserError: `out` is a file or a non-empty directory that is not a benchmark, or
            its benchmark was made with other settings (each difference named).
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    recorded = RunDir(out).read_json(RECORD) if out.is_dir() else None
    if recorded is None:
        if out.is_dir() and any(out.iterdir()):
            raise UserError(
                f"--out {out} is a directory without {RECORD}, not a benchmark; "
                "choose another --out"
            )
        return None
    found = rerun.changes(recorded["definition"], definition.record())
    if found:
        raise UserError(
            f"{out} holds a benchmark with other settings: {'; '.join(found)}. Use its "
            "settings (rows, label budgets, seeds and protocols may differ), or another --out"
        )
    return recorded


def _sizes(data) -> Sizes:
    return Sizes(
        train=len(data.x_train),
        test=len(data.x_test),
        pixels=int(data.x_train.shape[1] * data.x_train.shape[2]),
        classes=data.num_classes,
    )


def dry_run(definition: Definition, out: Path) -> str:
    """The cells, their status in `out` and their estimated times; nothing is written.

    The estimate is rough: fixed rates of this project's 2-core CPU machine (pixels per
    second through a pretraining step and through the frozen encoder, seconds per labeled
    image and epoch of supervised training) scaled by the data's sizes; a time budget is
    taken as given. When `out` has finished cells, a kind's mean time there replaces it.
    """
    from kerassl.data.registry import load_dataset

    check_directory(definition, out)
    try:
        data = load_dataset(definition.dataset, definition.data_dir, definition.image_size, False)
        sizes, note = _sizes(data), ""
    except UserError as error:
        sizes, note = Sizes(), f" (data not loaded: {error}; sizes of Fashion-MNIST assumed)"
    from kerassl.benchmarking.stages import weights_missing

    cells = list_cells(definition)
    store = CellStore(out)
    progress = Progress(cells, lambda cell: estimate_seconds(cell, definition, sizes))
    missing = {r.name for r in _rows(definition) if weights_missing(r, definition)}
    lines = []
    for index, cell in enumerate(cells, 1):
        stored = store.get(cell)
        if stored or cell.row in missing:
            progress.finished(cell, stored.get("seconds") if stored else None)
            status = "done" if stored else WEIGHTS_NOT_FOUND
        else:
            status = f"~{duration(progress.estimate(cell))}"
        lines.append(f"[{index}/{len(cells)}] {cell.describe()}: {status}")
    done = sum(store.get(cell) is not None for cell in cells)
    header = (
        f"{definition.title or 'benchmark'} on {definition.dataset}: {len(cells)} cells, "
        f"{done} done in {out}, {len(missing)} row(s) lacking weights; "
        f"about {duration(progress.remaining())} to run{note}. "
        "Estimates: fixed per-kind rates of a 2-core CPU scaled by the data's sizes (a time "
        "budget as given), or the mean of the same kind's finished cells. Nothing written."
    )
    return "\n".join([header, *lines])


def run(
    definition: Definition,
    out: Path,
    *,
    log: Callable[[str], None] = print,
    verbose: Any = 0,
) -> Path:
    """Runs the cells of `definition` not finished in `out`, then writes results.csv,
    results.md and the PNGs. Returns `out`.

    Raises:
        UserError: a definition the directory or the data cannot take (nothing is written
            then unless the directory existed).
    """
    started = time.monotonic()
    recorded = check_directory(definition, out)
    cells = list_cells(definition)
    store = CellStore(out)
    todo = [cell for cell in cells if store.get(cell) is None]
    created = not out.exists()
    data = facts = None
    if todo or recorded is None or "facts" not in recorded:
        data = _load_checked(definition)
        facts = {"data": _data_facts(definition, data)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        record = definition.record()
        if recorded is not None:
            record = rerun.merged_record(recorded["definition"], record)
        facts = facts or recorded["facts"]
        RunDir(out).write_json(RECORD, {"definition": record, "facts": facts})
        skipped = _run_cells(definition, out, cells, store, data, log, verbose)
        _write_outputs(definition, out, cells, store, skipped, facts, time.monotonic() - started)
    except UserError:
        if created:
            RunDir(out).remove()
        raise
    return out


def _load_checked(definition: Definition):
    """The data, after every check that needs it: each budget's split can be drawn and
    every method row's batch fits its unlabeled pool (before anything is written)."""
    from kerassl.data.registry import load_dataset
    from kerassl.evaluation.cells import draw_split
    from kerassl.plan import resolve, unlabeled_pool

    data = load_dataset(definition.dataset, definition.data_dir, definition.image_size)
    splits = [draw_split(data, budget, 0, definition.validation) for budget in definition.labels]
    for row in definition.pretrained_rows:
        config = definition.train_config(row, "runs")
        pool = unlabeled_pool(data.x_train, config.max_unlabeled, config.seed)
        try:
            resolve(config, data, splits[0], pool)
        except UserError as error:
            raise UserError(f"methods.{row.name}: {error}") from None
    return data


def _data_facts(definition: Definition, data) -> str:
    height, width, channels = data.image_shape
    return (
        f"{definition.dataset} ({data.source}): {len(data.x_train)} training images, "
        f"{len(data.x_test)} test images, {data.num_classes} classes, "
        f"{height}×{width}×{channels}"
    )


def _run_cells(definition, out, cells, store, data, log, verbose) -> dict:
    """Runs the cells not done; returns the skipped (row, budget or None) → why."""
    from kerassl.benchmarking.stages import Stages, weights_missing

    skipped = {
        (row.name, None): WEIGHTS_NOT_FOUND
        for row in _rows(definition)
        if weights_missing(row, definition)
    }
    sizes = _sizes(data) if data is not None else Sizes()
    progress = Progress(cells, lambda cell: estimate_seconds(cell, definition, sizes))
    stages = None
    earlier = 0
    for cell in cells:
        stored = store.get(cell)
        reason = skipped.get((cell.row, None)) or skipped.get((cell.row, cell.labels))
        if stored is not None or reason:
            progress.finished(cell, stored.get("seconds") if stored else None)
            earlier += stored is not None
            if stored and stored.get("skipped"):
                skipped[(cell.row, cell.labels)] = stored["skipped"]
            continue
        if earlier:
            log(f"{earlier} cell(s) finished earlier in {out / 'cells'}: not run again")
            earlier = 0
        if stages is None:
            stages = Stages(definition, out, data, store, verbose=verbose, log=log)
        result = stages.run(cell)
        store.put(cell, result)
        progress.finished(cell, result["seconds"])
        if result.get("skipped"):
            skipped[(cell.row, cell.labels)] = result["skipped"]
        log(progress.line(cell, _outcome(result), result["seconds"]))
    if earlier:
        log(f"{earlier} cell(s) finished earlier in {out / 'cells'}: not run again")
    for (name, _), reason in sorted(skipped.items(), key=lambda item: str(item[0])):
        if reason == WEIGHTS_NOT_FOUND:
            log(f"{name}: {reason}")
    return skipped


def _rows(definition: Definition):
    return (*definition.methods, *definition.baselines)


def _outcome(result: dict[str, Any]) -> str:
    if result.get("skipped"):
        return result["skipped"]
    if result["stage"] == PRETRAIN:
        return f"{result['steps']} steps of {result['batch_size']} images"
    if result["stage"] == TUNE:
        trials = f"{result['trials']} trial{'s' * (result['trials'] != 1)}"
        return f"best validation {100 * result['best_score']:.1f} % over {trials}"
    return f"{100 * result['top1']:.1f} %"


def _write_outputs(definition, out, cells, store, skipped, facts, elapsed) -> None:
    from kerassl.benchmarking import machine, plots, tables

    results = {cell: store.get(cell) for cell in cells}
    rows = [r for c, r in results.items() if r is not None and c.stage in (EVALUATE, BASELINE)]
    pretraining = {c.row: r for c, r in results.items() if r is not None and c.stage == PRETRAIN}
    tuning = {(c.row, c.labels): r for c, r in results.items() if r is not None and c.stage == TUNE}
    by_stage: dict[str, float] = {}
    for cell, result in results.items():
        if result is not None:
            by_stage[cell.stage] = by_stage.get(cell.stage, 0.0) + result.get("seconds", 0.0)
    spent = ", ".join(f"{stage} {duration(s)}" for stage, s in by_stage.items())
    facts = {
        **facts,
        "machine": machine.describe(),
        "time": f"{duration(sum(by_stage.values()))} of cells in all ({spent}); this "
        f"invocation took {duration(elapsed)}",
    }
    bench = RunDir(out)
    bench.write_text("results.csv", tables.csv_text(rows))
    figures = [path.relative_to(out) for path in plots.write(definition, out, rows)]
    previews = [Path("augmentations") / f"{row.name}.png" for row in definition.pretrained_rows]
    figures += [path for path in previews if (out / path).is_file()]
    markdown = tables.markdown(
        definition,
        rows,
        facts=facts,
        pretraining=pretraining,
        tuning=tuning,
        skipped=skipped,
        figures=[str(path) for path in figures],
    )
    bench.write_text("results.md", markdown)
