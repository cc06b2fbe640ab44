"""kerassl's own pretraining checkpoint: everything a step-exact resume needs.

Keras 3's `BackupAndRestore` restores only the epoch, saves neither `SeedGenerator` state
nor callback state, and the data order restarts. kerassl's checkpoint is one `.npz` file in
the run's `checkpoints/`, written atomically (temporary name, then rename), holding:

- every variable of the model (`model.variables`: encoder, head, MoCo's key encoder,
  queue and pointer, and the `SeedGenerator` states of the augmenter and MoCo's shuffle);
- the optimizer's variables, whose iteration count is also the learning-rate schedule's
  position;
- the metric trackers, so that an epoch resumed mid-way reports the mean of all its steps
  (on one replica; see `_metric_variables`);
- the step, the history rows so far, and the seconds of training spent.

The data order needs no state: epoch e's order is drawn from (seed, e) alone
(`kerassl.data.pipeline.pretrain_dataset`).

A finite state can still be broken (weights blown up by a too-high learning rate, whose
next loss is NaN), so a new checkpoint is first `state.next.npz` and becomes `state.npz`
once the next step's loss — computed from exactly those weights — is finite. When the
loss becomes NaN or Inf, the pending one is deleted and `state.npz` is the last good
state; a killed run (nothing diverged) continues from the newest (`latest`). A state
holding a NaN or an Inf is never written at all.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from kerassl.checks import Every
from kerassl.errors import RunFailed, UserError

# Set by SIGTERM within `stop_on_sigterm` while a `Checkpointer` trains (`_TRAINING`):
# it then saves at the end of the step and stops the run.
_STOP = threading.Event()
_TRAINING = threading.Event()

STATE = "state.npz"  # the last confirmed-good state
PENDING = "state.next.npz"  # the newest state, until a finite loss confirms it
_META = "__meta__"


class TrainingDiverged(RunFailed):
    """The loss (or a weight) became NaN or Inf: pretraining stopped at the last good
    checkpoint."""

    def __init__(self, step: int, what: str, last_finite: tuple[int, float] | None):
        self.step, self.last_finite = step, last_finite
        last = (
            f"last finite loss {last_finite[1]:.4g} at step {last_finite[0]}"
            if last_finite
            else "no finite loss before it"
        )
        super().__init__(f"{what} at step {step} ({last})")


class NonFiniteState(ValueError):
    """A training state holding NaN or Inf, refused by `save`."""


@dataclass
class TrainingState:
    """Where pretraining stands: `step` steps done (the optimizer's iteration count),
    the history rows of the finished epochs, and the seconds of training so far."""

    step: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    metrics: list[np.ndarray] = field(default_factory=list, repr=False)


def _unique(variables) -> list:
    seen, unique = set(), []
    for variable in variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            unique.append(variable)
    return unique


def _state_variables(model: keras.Model) -> list:
    return _unique(list(model.variables) + list(model.optimizer.variables))


def _metric_variables(model: keras.Model) -> list:
    """The metric trackers' variables on one device. Under several replicas they are
    per-replica partial sums whose read is a collective (the chief alone would hang), so
    they are not kept there: a resumed epoch then reports the mean of its later steps."""
    if model.distribute_strategy.num_replicas_in_sync > 1:
        return []
    return list(model.metrics_variables)


def save(model: keras.Model, path: Path, state: TrainingState) -> None:
    """Writes the model's training state to `path` atomically; `NonFiniteState` (and
    nothing written) if a floating-point value is not finite."""
    arrays = [np.asarray(v.numpy()) for v in _state_variables(model)]
    metrics = [np.asarray(v.numpy()) for v in _metric_variables(model)]
    for array in arrays:
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise NonFiniteState(f"a weight of step {state.step} is NaN or Inf")
    meta = {
        "step": state.step,
        "history": state.history,
        "seconds": state.seconds,
        "shapes": [list(a.shape) for a in arrays],
        "metric_shapes": [list(a.shape) for a in metrics],
    }
    values = {f"v{i}": a for i, a in enumerate(arrays)}
    values |= {f"m{i}": a for i, a in enumerate(metrics)}
    values[_META] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **values)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def restore(model: keras.Model, path: Path) -> TrainingState:
    """Assigns the state saved at `path` to a freshly built and compiled `model` (in the
    strategy scope it was built in) and returns where training stands; the metric values
    are returned, not assigned (`fit` resets metrics when an epoch begins)."""
    model.optimizer.build(model.trainable_variables)
    variables = _state_variables(model)
    try:
        with np.load(path) as saved:
            meta = json.loads(str(saved[_META]))
            arrays = [saved[f"v{i}"] for i in range(len(meta["shapes"]))]
            metrics = [saved[f"m{i}"] for i in range(len(meta["metric_shapes"]))]
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot read checkpoint {path}: {error}") from None
    shapes = [list(v.shape) for v in variables]
    if shapes != meta["shapes"]:
        raise UserError(
            f"checkpoint {path} holds {len(meta['shapes'])} variables that do not match this "
            f"model's {len(shapes)}; it was written by another model or kerassl version"
        )
    for variable, array in zip(variables, arrays, strict=True):
        variable.assign(array)
    return TrainingState(
        step=int(meta["step"]), history=meta["history"], seconds=meta["seconds"], metrics=metrics
    )


def latest(directory: Path) -> Path | None:
    """The newest checkpoint of a `checkpoints/` folder, None when there is none."""
    for name in (PENDING, STATE):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def saved_step(directory: Path) -> int:
    """The step of the newest checkpoint in `directory` (0 when there is none)."""
    path = latest(directory)
    if path is None:
        return 0
    with np.load(path) as saved:
        return int(json.loads(str(saved[_META]))["step"])


def write_history(path: Path, rows: list[dict]) -> None:
    """history.csv: one row per epoch, `epoch` first, then every logged value (NA where an
    epoch has none), written atomically."""
    keys = sorted({key for row in rows for key in row} - {"epoch"})
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for row in rows:
        writer.writerow([row["epoch"], *(row.get(key, "NA") for key in keys)])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as file:
        file.write(text.getvalue())
    os.replace(tmp, path)


def _on_sigterm(*_) -> None:
    if not _TRAINING.is_set():
        raise KeyboardInterrupt("terminated")
    _STOP.set()


@contextlib.contextmanager
def stop_on_sigterm():
    """Within it, SIGTERM (SLURM's preemption notice, `kill`) makes a running pretraining
    checkpoint at the end of its step and raise `KeyboardInterrupt`; outside pretraining
    it raises `KeyboardInterrupt` at once. Main thread only."""
    _STOP.clear()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STOP.clear()
        _TRAINING.clear()


class StopOnNonFinite(keras.callbacks.Callback):
    """Raises `TrainingDiverged` as soon as the logged loss is NaN or Inf. Place it first
    in the callback list, so that no later callback checkpoints the broken state."""

    def __init__(self, first_step: int = 0):
        super().__init__()
        self.step = first_step
        self.last_finite: tuple[int, float] | None = None

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise TrainingDiverged(self.step, f"the loss became {loss}", self.last_finite)
        self.last_finite = (self.step, loss)


class Checkpointer(keras.callbacks.Callback):
    """Saves the training state every `every` (steps or seconds) and at every epoch's
    end, and keeps history.csv (one row per finished epoch; a resumed run rewrites it
    from the checkpoint, so no epoch appears twice).

    After a SIGTERM (`stop_on_sigterm`) it saves at the end of the current step and raises
    `KeyboardInterrupt`: a preempted job loses nothing.

    Without a directory it writes nothing and only keeps `state` (steps, history rows,
    seconds) up to date: a worker that is not the chief, a run without a run directory.

    Args:
        directory: the run's `checkpoints/` folder, or None.
        history_path: the run's history.csv, or None.
        every: the period between saves within an epoch.
        state: where training stands (a fresh `TrainingState` or a restored one); updated
            in place.
    """

    def __init__(
        self,
        directory: Path | None,
        history_path: Path | None,
        every: Every,
        state: TrainingState,
    ):
        super().__init__()
        self.directory = None if directory is None else Path(directory)
        self.history_path = None if history_path is None else Path(history_path)
        self.every = every
        self.state = state

    def on_train_begin(self, logs=None):
        _TRAINING.set()
        self._last_loss = None
        self._begun = time.monotonic()
        self._seconds_before = self.state.seconds
        self._saved_at = (self.state.step, self._begun)

    def on_train_end(self, logs=None):
        _TRAINING.clear()

    def on_epoch_begin(self, epoch, logs=None):
        if self.state.metrics:  # resumed mid-epoch: the epoch's running means go on
            for variable, value in zip(
                _metric_variables(self.model), self.state.metrics, strict=True
            ):
                variable.assign(value)
            self.state.metrics = []

    def on_train_batch_end(self, batch, logs=None):
        self.state.step += 1
        self._last_loss = (self.state.step, float((logs or {}).get("loss", math.nan)))
        # `StopOnNonFinite` ran first: this step's loss, of the pending state's weights,
        # is finite.
        self._confirm()
        step, at = self._saved_at
        if _STOP.is_set() or self.every.due(self.state.step - step, time.monotonic() - at):
            self._save()
        if _STOP.is_set():
            raise KeyboardInterrupt(f"stopped at step {self.state.step}, checkpoint saved")

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        self.state.history.append(row)
        self._save()
        if self.history_path is not None:
            write_history(self.history_path, self.state.history)

    def discard_pending(self) -> None:
        """Deletes the state no finite loss confirmed (training diverged after it)."""
        if self.directory is not None:
            (self.directory / PENDING).unlink(missing_ok=True)

    def _confirm(self) -> None:
        if self.directory is not None and (self.directory / PENDING).is_file():
            os.replace(self.directory / PENDING, self.directory / STATE)

    def _save(self) -> None:
        now = time.monotonic()
        self.state.seconds = self._seconds_before + (now - self._begun)
        if self.directory is not None:
            try:
                save(self.model, self.directory / PENDING, self.state)
            except NonFiniteState:
                raise TrainingDiverged(
                    self.state.step, "a weight became NaN or Inf", self._last_loss
                ) from None
        self._saved_at = (self.state.step, now)
