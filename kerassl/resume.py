"""What one invocation of `kerassl train` does with its run directory: start it, continue
it, or nothing. TensorFlow-free: the CLI decides before TensorFlow loads.

- A new name (`--run-name`, else `<method>-<dataset>-<timestamp>`, or `...-slurm<job id>`
  under SLURM so that a requeued job comes back to its run) starts a run.
- An existing unfinished run continues, if the settings are the run's (`config.json`'s
  "settings", apart from `config.UNCOMPUTED`); other settings are a `UserError` naming
  each difference.
- A finished run (`metrics.json`) is done: nothing runs.
- `--resume RUN_DIR` continues a run with the run's own settings; only
  `config.RESUME_CHANGEABLE` (the learning rate) may change on the way.
- `--overwrite` deletes the run directory and starts afresh; that happens only once the
  new run's data has loaded, so a mistake in the command deletes nothing.

Workers other than the chief read the chief's run directory (a shared file system, as
under SLURM): they resume from its checkpoint and never write.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kerassl import run_dir as files
from kerassl.cluster import is_chief, slurm_job
from kerassl.config import RESUME_CHANGEABLE, UNCOMPUTED, TrainConfig, flag
from kerassl.errors import UserError

START, CONTINUE, DONE = "start", "continue", "done"


@dataclass(frozen=True)
class Decision:
    """What to do with the run directory `path`.

    Attributes:
        path: the run directory.
        action: `START` (a new run), `CONTINUE` (an unfinished one) or `DONE`.
        overwrite: delete what `path` holds before starting.
        changes: `(setting, run's value, new value)` changed by `--resume`.
    """

    path: Path
    action: str
    overwrite: bool = False
    changes: tuple[tuple[str, object, object], ...] = ()


def stored_settings(path: Path) -> TrainConfig:
    """The settings a run directory was started with (`config.json`'s "settings")."""
    run = files.RunDir(path)
    config = run.read_json(files.CONFIG)
    if config is None:
        raise UserError(
            f"{path} has no {files.CONFIG}: it is not a kerassl run directory "
            "(choose another --run-name, or --overwrite to replace it)"
        )
    if "settings" not in config:
        raise UserError(
            f"{path / files.CONFIG} has no settings: it was written by an older kerassl "
            "and cannot be continued"
        )
    return TrainConfig.from_json(config["settings"])


def decide(
    config: TrainConfig,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    given: Iterable[str] = (),
    environ: Mapping[str, str] = os.environ,
) -> tuple[TrainConfig, Decision]:
    """The settings to run with and what to do with the run directory.

    Args:
        config: the validated settings of the command line.
        resume: `--resume RUN_DIR`.
        overwrite: `--overwrite`.
        given: the settings given explicitly on the command line (with `resume`, these
            are compared with the run's own).
        environ: the environment (SLURM's job id names the run).
    """
    if resume is not None:
        if overwrite:
            raise UserError("--resume and --overwrite exclude each other")
        return _resume(config, Path(resume), set(given))
    name = config.run_name or files.default_run_name(
        config.method, config.dataset, slurm_job(environ)
    )
    path = Path(config.out) / name
    config = dataclasses.replace(config, run_name=name)
    if not is_chief(environ):
        return config, Decision(path, DONE if _finished(path) else CONTINUE)
    if overwrite or not path.exists() or _empty(path):
        return config, Decision(path, START, overwrite=overwrite and path.exists())
    differences = config.differences(stored_settings(path))
    if differences:
        raise UserError(
            f"run directory {path} was made with other settings: {'; '.join(differences)}. "
            f"Use the same settings to continue it, --overwrite to start it afresh, or "
            "another --run-name"
        )
    return config, Decision(path, DONE if _finished(path) else CONTINUE)


def _resume(config: TrainConfig, path: Path, given: set[str]) -> tuple[TrainConfig, Decision]:
    if not path.is_dir():
        raise UserError(f"--resume {path}: no such run directory")
    stored = stored_settings(path)
    changed = {
        name: getattr(config, name)
        for name in sorted(given - set(UNCOMPUTED))
        if getattr(config, name) != getattr(stored, name)
    }
    refused = [name for name in changed if name not in RESUME_CHANGEABLE]
    if refused:
        allowed = ", ".join(flag(name) for name in RESUME_CHANGEABLE)
        raise UserError(
            f"--resume {path} continues the run's own settings; "
            f"{', '.join(flag(name) for name in refused)} cannot change on resume "
            f"(only {allowed} can; start another run for other settings)"
        )
    uncomputed = {name: getattr(config, name) for name in given & set(UNCOMPUTED)}
    resumed = dataclasses.replace(
        stored, **changed, **uncomputed, out=str(path.parent), run_name=path.name
    )
    changes = tuple((name, getattr(stored, name), value) for name, value in changed.items())
    action = DONE if _finished(path) else CONTINUE
    if action == DONE and changes:
        raise UserError(f"--resume {path}: the run is finished; there is nothing to change")
    return resumed, Decision(path, action, changes=changes)


def _finished(path: Path) -> bool:
    return files.RunDir(path).finished


def _empty(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())
