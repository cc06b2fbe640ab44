"""The cells of a benchmark: what each computes, where its result is kept, how long the
rest will take. TensorFlow-free (`--dry-run` lists them without loading it).

A cell is one unit of work whose result is one JSON file under `<bench>/cells/`, written
atomically when the cell ends: pretraining a method row (its run directory resumes from
its own checkpoint), evaluating one (row, protocol, label budget, seed), searching a tuned
baseline's hyperparameters once per label budget, training a baseline on one (budget,
seed). A cell whose file exists is done and is not run again, so a killed benchmark loses
at most the cell it was in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerassl.benchmarking.definition import Definition
from kerassl.checks import parse_duration
from kerassl.data.splits import parse_labels
from kerassl.evaluation.options import budget_name
from kerassl.run_dir import RunDir

PRETRAIN, EVALUATE, TUNE, BASELINE = "pretrain", "evaluate", "tune", "baseline"


@dataclass(frozen=True)
class Cell:
    """One unit of work of a benchmark.

    Attributes:
        stage: `PRETRAIN`, `EVALUATE`, `TUNE` or `BASELINE`.
        row: the method row or baseline name.
        protocol: the evaluation protocol (`EVALUATE` cells).
        labels: the label budget's name (`EVALUATE`, `TUNE`, `BASELINE`).
        seed: the split seed (`EVALUATE`, `BASELINE`).
    """

    stage: str
    row: str
    protocol: str | None = None
    labels: str | None = None
    seed: int | None = None

    @property
    def key(self) -> str:
        """The cell's file name stem: `evaluate.simclr.linear.10perclass.seed1`."""
        parts = [self.stage, self.row, self.protocol]
        parts.append(None if self.labels is None else self.labels.replace("/", "per"))
        parts.append(None if self.seed is None else f"seed{self.seed}")
        return ".".join(part for part in parts if part is not None)

    @property
    def kind(self) -> str:
        """Cells whose times are alike (the remaining-time estimate averages over them)."""
        if self.stage == EVALUATE:
            return f"{EVALUATE} {self.protocol} {self.labels}"
        if self.stage == PRETRAIN:
            return PRETRAIN
        return f"{self.stage} {self.row} {self.labels}"

    def describe(self) -> str:
        """`simclr · linear · 100 · seed 1`, `simclr · pretraining`, `cnn-tuned · search · 100`."""
        what = {PRETRAIN: ["pretraining"], TUNE: ["search"]}.get(self.stage, [])
        parts = [self.row, *what, self.protocol, self.labels]
        parts.append(None if self.seed is None else f"seed {self.seed}")
        return " · ".join(str(part) for part in parts if part is not None)


def list_cells(definition: Definition) -> list[Cell]:
    """Every cell of `definition`, in the order they run: each method row's pretraining
    then its evaluations (budget, seed, protocol), then each baseline (per budget: its
    search when tuned, then the seeds)."""
    labels = [budget_name(budget) for budget in definition.labels]
    cells = []
    for row in definition.methods:
        if row.source is None:
            cells.append(Cell(PRETRAIN, row.name))
        for name in labels:
            for seed in definition.seeds:
                cells += [Cell(EVALUATE, row.name, p, name, seed) for p in definition.protocols]
    for baseline in definition.baselines:
        for name in labels:
            if baseline.tuned:
                cells.append(Cell(TUNE, baseline.name, labels=name))
            cells += [Cell(BASELINE, baseline.name, labels=name, seed=s) for s in definition.seeds]
    return cells


class CellStore:
    """The finished cells' results: one JSON file per cell under `<bench>/cells/`."""

    def __init__(self, bench: str | Path):
        self.path = Path(bench) / "cells"

    def get(self, cell: Cell) -> dict[str, Any] | None:
        """The stored result of `cell`, or None while it is not done."""
        return RunDir(self.path).read_json(f"{cell.key}.json")

    def put(self, cell: Cell, result: Mapping[str, Any]) -> None:
        """Stores `result` atomically: the cell is done once its file exists."""
        self.path.mkdir(parents=True, exist_ok=True)
        RunDir(self.path).write_json(f"{cell.key}.json", dict(result))

    def file(self, cell: Cell) -> Path:
        return self.path / f"{cell.key}.json"


def duration(seconds: float) -> str:
    """`45s`, `3m10s`, `1h02m`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """The line printed after each cell, with the elapsed and the estimated remaining time.

    The remaining time is, for every cell still to run, the mean time of the finished
    cells of its kind (`Cell.kind`: of this invocation and of earlier ones), or the rough
    `estimate` for a kind none of which has finished.

    Args:
        cells: every cell of the benchmark, in order.
        estimate: rough seconds of a cell (`estimate_seconds`).
        clock: seconds of a monotonic clock.
    """

    def __init__(
        self,
        cells: Sequence[Cell],
        estimate: Callable[[Cell], float],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cells = list(cells)
        self.estimate = estimate
        self.clock = clock
        self.started = clock()
        self.times: dict[str, list[float]] = {}
        self.done: set[Cell] = set()

    def finished(self, cell: Cell, seconds: float | None) -> None:
        """Marks `cell` done (`seconds`: how long it took, None when not known)."""
        self.done.add(cell)
        if seconds is not None:
            self.times.setdefault(cell.kind, []).append(float(seconds))

    def remaining(self) -> float:
        """Estimated seconds of the cells not done."""
        total = 0.0
        for cell in self.cells:
            if cell not in self.done:
                times = self.times.get(cell.kind)
                total += sum(times) / len(times) if times else self.estimate(cell)
        return total

    def line(self, cell: Cell, outcome: str, seconds: float) -> str:
        """`[7/24] simclr · linear · 100 · seed 1: 72.1 % (14 s; elapsed 3m10s, about 5m left)`."""
        index = self.cells.index(cell) + 1
        elapsed = duration(self.clock() - self.started)
        left = self.remaining()
        tail = f"about {duration(left)} left" if left > 0 else "done"
        return (
            f"[{index}/{len(self.cells)}] {cell.describe()}: {outcome} "
            f"({seconds:.0f} s; elapsed {elapsed}, {tail})"
        )


# Rough costs on this project's machine kind (2-core AMD EPYC, no AVX-512, CPU only), for
# `--dry-run` and for kinds none of whose cells has finished yet. Pretraining: image pixels
# per second through a training step of the small CNN (two views, forward and backward);
# inference: pixels per second through the frozen encoder. A trained protocol or baseline
# costs its steps (`kerassl.stopping.epochs_within` caps them) times the images of a step.
TRAIN_PIXELS_PER_SECOND = 70_000.0
INFER_PIXELS_PER_SECOND = 1_500_000.0
OVERHEAD_SECONDS = {PRETRAIN: 25.0, EVALUATE: 2.0, TUNE: 5.0, BASELINE: 5.0}
# Supervised training (one view, forward and backward, with label-set augmentation).
SUPERVISED_SECONDS_PER_IMAGE = 0.006
# Epochs a trained protocol or baseline runs before early stopping ends it, as a fraction
# of its most epochs.
STOPPED_FRACTION = 0.5


@dataclass(frozen=True)
class Sizes:
    """What the estimate needs to know of the data (assumed when it is not loaded)."""

    train: int = 60_000
    test: int = 10_000
    pixels: int = 28 * 28
    classes: int = 10


def estimate_seconds(cell: Cell, definition: Definition, sizes: Sizes) -> float:
    """A rough time for `cell` (see the rates above; a time budget is taken as given)."""
    from kerassl.config import TrainConfig
    from kerassl.stopping import epochs_within
    from kerassl.supervised import MAX_STEPS

    scale = sizes.pixels / 784
    overhead = OVERHEAD_SECONDS[cell.stage]
    if cell.stage == PRETRAIN:
        row = next(r for r in definition.methods if r.name == cell.row)
        settings = {**definition.pretrain, **row.settings}
        if settings.get("time_budget"):
            return parse_duration(settings["time_budget"]) + overhead
        defaults = TrainConfig()
        batch = int(settings.get("batch_size", defaults.batch_size))
        pool = min(settings.get("max_unlabeled") or sizes.train, sizes.train)
        per_epoch = max(1, pool // batch)
        steps = min(settings.get("steps_per_epoch") or per_epoch, per_epoch)
        images = int(settings.get("epochs", defaults.epochs)) * steps * batch
        return overhead + images * sizes.pixels / TRAIN_PIXELS_PER_SECOND
    labeled = _labeled(cell.labels, sizes)
    trained = int(labeled * (1 - definition.validation)) or 1

    def training(batch: int, epochs: int, max_steps: int, images_per_step: int) -> float:
        per_epoch = -(-trained // batch)
        run = epochs_within(max_steps, per_epoch, max(1, int(epochs * STOPPED_FRACTION)))
        return run * per_epoch * images_per_step * SUPERVISED_SECONDS_PER_IMAGE * scale

    if cell.stage == EVALUATE:
        # The first cell of a row embeds the test split; spread over the row's cells.
        per_row = len(definition.labels) * len(definition.seeds) * len(definition.protocols)
        embed = (sizes.test + labeled) * sizes.pixels / INFER_PIXELS_PER_SECOND / per_row
        options = definition.protocol_options
        batch = options.batch_size
        pool = sizes.train
        cost = {
            "finetune": lambda: training(batch, options.max_epochs, options.max_steps, batch),
            "distill": lambda: (  # after its teacher, the finetune cell
                min(
                    options.max_steps,
                    options.distill_epochs
                    * max(1, min(options.distill_pool, pool) // options.distill_batch_size),
                )
                * STOPPED_FRACTION
                * (options.distill_batch_size + batch)
                * SUPERVISED_SECONDS_PER_IMAGE
                * scale
            ),
            "consistency": lambda: (
                min(options.consistency_steps, options.max_steps)
                * STOPPED_FRACTION
                * (batch + 1.2 * options.consistency_ratio * batch)
                * SUPERVISED_SECONDS_PER_IMAGE
                * scale
            ),
        }
        return overhead + embed + cost.get(cell.protocol, lambda: 0.0)()
    epochs = definition.tuning_epochs() if cell.stage == TUNE else definition.baseline_epochs
    fit = training(32, epochs, MAX_STEPS, 32)
    test = sizes.test * sizes.pixels / INFER_PIXELS_PER_SECOND
    trials = definition.tuning.max_trials if cell.stage == TUNE else 1
    return overhead + trials * (fit + test)


def _labeled(labels: str | None, sizes: Sizes) -> int:
    """Labeled images of a budget name (100, 10/class, 0.1, 100%) at the data's sizes."""
    if labels is None:
        return 0
    if labels.endswith("/class"):
        return int(labels.split("/")[0]) * sizes.classes
    value = parse_labels(labels)
    if isinstance(value, int):
        return value
    return max(sizes.classes, int(value * sizes.train))


def total_seconds(cells: Iterable[Cell], estimate: Callable[[Cell], float]) -> float:
    return math.fsum(estimate(cell) for cell in cells)
