"""Resumable KerasTuner searches over the supervised baselines and SSL pretraining.

A search is described by a `SearchConfig` (what `tuning/*.yaml` holds and what the
`kerassl.tune` CLI builds). The search functions take the training arrays and the
label split only: the test split cannot reach a trial. The objective is `val_accuracy` on
the validation examples carved from the labeled ones.

Resuming: the tuner's state lives in `<out>/tuner/` and is reloaded (`overwrite=False`),
so re-running the same search skips finished trials and re-runs only a trial that was
interrupted. A larger `max_trials` extends a finished search.

Distributed: under KerasTuner's `KERASTUNER_*` variables (`kerassl.tuning.distributed`)
the chief runs no trial, serves the oracle, then writes the results as above; a worker runs
trials and returns None. A search started alone resumes distributed, and back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import pandas as pd

from kerassl.errors import UserError
from kerassl.methods import METHODS
from kerassl.tuning import distributed, hypermodels
from kerassl.tuning.config import TUNERS, SearchConfig

OBJECTIVE = "val_accuracy"


@dataclass
class SearchResult:
    """What a search leaves behind (also written to its output folder).

    Attributes:
        table: one row per trial: trial, status, hyperparameters, val_accuracy.
        best_hyperparameters: values of the best trial.
        best_score: its objective (`val_accuracy` on the labeled validation split).
        best_model: the best trial's model (supervised: classifier; SSL: encoder).
        trials_run: trials that ran (to completion) during this call.
    """

    table: pd.DataFrame
    best_hyperparameters: dict[str, Any]
    best_score: float
    best_model: keras.Model | None
    trials_run: int


class _TrialLog:
    """Mixin for KerasTuner tuners: one printed line per finished trial, quiet otherwise;
    for `SSLHyperModel`, trials that pretrain + probe instead of `model.fit`; and, in
    distributed mode, a chief that serves the oracle (`distributed.serve_oracle`)."""

    log: Callable[[str], None] = print
    trials_run = 0

    def _activate_all_conditions(self):
        # KerasTuner builds a model here to discover conditional hyperparameters; kerassl's
        # spaces have none, so declaring them is enough (saves building e.g. InceptionV3).
        hp = self.oracle.get_space()
        self.hypermodel.values(hp)
        self.oracle.update_space(hp)

    def _get_tuner_fname(self):
        # Whatever KERASTUNER_TUNER_ID says, the process holding the oracle (alone or the
        # chief) reloads it from tuner0.json: a search started alone resumes distributed
        # and back. Workers keep their own (oracle-less) state apart.
        name = f"worker-{self.tuner_id}" if self._is_worker() else "tuner0"
        return os.path.join(str(self.project_dir), f"{name}.json")

    def search(self, *fit_args, **fit_kwargs):
        role = distributed.tuner_role()
        if role.kind != "chief":
            return super().search(*fit_args, **fit_kwargs)
        # As KerasTuner's chief: no trial here, the oracle is served until the workers are done.
        self.oracle.verbose = fit_kwargs.get("verbose", 1)
        self.save()
        distributed.serve_oracle(self.oracle, role.address, self._log_trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.trials_run += 1
        # A worker's copy of the trial has no score: the chief's oracle scored it.
        ended = self.oracle.get_trial(trial.trial_id)
        self._log_trial(ended, self.tuner_id if self._is_worker() else None)

    def _log_trial(self, trial, tuner_id: str | None = None) -> None:
        values = {k: _short(v) for k, v in trial.hyperparameters.values.items()}
        score = "failed" if trial.score is None else f"{OBJECTIVE}={trial.score:.4f}"
        by = f" ({tuner_id})" if tuner_id else ""
        self.log(f"trial {trial.trial_id}{by}: {score} {values}")

    def run_trial(self, trial, *args, **kwargs):
        if not isinstance(self.hypermodel, hypermodels.SSLHyperModel):
            return super().run_trial(trial, *args, **kwargs)
        hp = trial.hyperparameters
        config = self.hypermodel.build(hp)
        metrics = self.hypermodel.fit(hp, config, *args, **kwargs)
        trial_dir = self.get_trial_dir(trial.trial_id)
        self.hypermodel.last_model.encoder.save(os.path.join(trial_dir, "encoder.keras"))
        if self.hypermodel.last_budget is not None:  # the steps a --time-budget held
            with open(os.path.join(trial_dir, "budget.json"), "w") as file:
                json.dump(self.hypermodel.last_budget, file)
        return metrics

    def load_model(self, trial):
        if not isinstance(self.hypermodel, hypermodels.SSLHyperModel):
            return super().load_model(trial)
        return keras.saving.load_model(
            os.path.join(self.get_trial_dir(trial.trial_id), "encoder.keras")
        )


def _short(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


_TUNER_CLASSES: dict[str, type] = {}


def _tuner_class(kind: str) -> type:
    if kind not in _TUNER_CLASSES:
        base = {
            "random": kt.RandomSearch,
            "bayesian": kt.BayesianOptimization,
            "hyperband": kt.Hyperband,
        }[kind]
        _TUNER_CLASSES[kind] = type(f"Kerassl{base.__name__}", (_TrialLog, base), {})
    return _TUNER_CLASSES[kind]


def make_tuner(
    kind: str,
    hypermodel: kt.HyperModel,
    directory: str | os.PathLike,
    max_trials: int,
    max_epochs: int,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> kt.Tuner:
    """A KerasTuner tuner maximising `val_accuracy`, resuming from `directory/tuner`.

    Args:
        kind: `random`, `bayesian` or `hyperband`.
        hypermodel: a HyperModel of `kerassl.tuning.hypermodels`.
        directory: the search's output folder.
        max_trials: total trials (Hyperband: a cap on its own schedule).
        max_epochs: Hyperband's largest epoch budget.
        seed: the oracle's seed.
        overwrite: start afresh instead of resuming.
        log: where per-trial lines go.
    """
    if kind not in TUNERS:
        raise ValueError(f"kind must be one of {TUNERS}. Received: kind={kind!r}")
    common = {
        "objective": kt.Objective(OBJECTIVE, "max"),
        "seed": seed,
        "directory": str(directory),
        "project_name": "tuner",
        "overwrite": overwrite,
        "max_consecutive_failed_trials": 3,
    }
    cls = _tuner_class(kind)
    if kind == "hyperband":
        tuner = cls(hypermodel, max_epochs=max_epochs, factor=3, **common)
        tuner.oracle.max_trials = max_trials
    else:
        tuner = cls(hypermodel, max_trials=max_trials, **common)
        tuner.oracle.max_trials = max_trials  # a resumed oracle keeps the new budget
    tuner.log = log
    tuner.trials_run = 0
    return tuner


def results_table(tuner: kt.Tuner) -> pd.DataFrame:
    """One row per trial, in trial order: trial, status, hyperparameters, val_accuracy."""
    rows = []
    for trial_id in sorted(tuner.oracle.trials, key=int):
        trial = tuner.oracle.trials[trial_id]
        row = {"trial": int(trial_id), "status": str(trial.status)}
        row.update({k: _short(v) for k, v in trial.hyperparameters.values.items()})
        row[OBJECTIVE] = None if trial.score is None else round(float(trial.score), 4)
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table = table[[c for c in table.columns if c != OBJECTIVE] + [OBJECTIVE]]
    return table


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' `to_markdown` needs `tabulate`)."""
    if table.empty:
        return "(no trials)"
    columns = [str(c) for c in table.columns]
    cells = [["" if pd.isna(v) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _changed_settings(config: SearchConfig, out: Path) -> list[str]:
    """The identity settings in which `config` differs from the search recorded in `out`
    (none when `out` records no readable search)."""
    try:
        previous = json.loads((out / "search.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return sorted(k for k, v in config.identity().items() if previous.get(k) != v)


def _check_resumable(config: SearchConfig, out: Path, overwrite: bool) -> None:
    changed = [] if overwrite else _changed_settings(config, out)
    if changed:
        raise UserError(
            f"{out} holds a search with other {', '.join(changed)}; resume it with the same "
            "settings, pass --overwrite to start afresh, or choose another --out"
        )


def _silence_tuner() -> None:
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_search(
    config: SearchConfig,
    hypermodel: kt.HyperModel,
    x_train: np.ndarray,
    y_train: np.ndarray,
    split: Any,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> SearchResult | None:
    """Runs (or resumes) a search on the labeled examples; never sees the test split.

    Trials train on `x_train[split.labeled]` and are scored (`val_accuracy`) on
    `x_train[split.validation]`. Writes `search.json`, `results.csv`, `results.md`,
    `best_hyperparameters.json` and `best_model.keras` to `config.output_dir()`; on a
    worker of a distributed search, runs trials only and returns None.

    Args:
        config: the validated search definition.
        hypermodel: a `ClassifierHyperModel` (an `SSLHyperModel` goes to `run_ssl_search`).
        x_train: uint8 training pool [N, H, W, C].
        y_train: labels [N] (-1 = unlabeled).
        split: `Split` with `labeled` and `validation` indices into `x_train`.
        overwrite: discard an existing search in the output folder.
        log: where progress lines go.
    """
    if not len(split.validation):
        raise UserError(
            "the search needs validation examples; raise --validation or --labels so that "
            "each class keeps at least one validation example"
        )
    x = x_train[split.labeled]
    y = y_train[split.labeled]
    validation = (x_train[split.validation], y_train[split.validation])
    return _search(config, hypermodel, (x, y), {"validation_data": validation}, overwrite, log)


def run_ssl_search(
    config: SearchConfig,
    hypermodel: hypermodels.SSLHyperModel,
    plan: Any,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> SearchResult | None:
    """Runs (or resumes) an SSL method's search on a `kerassl.plan.Plan` whose data holds no test
    images (`without_test`); each trial re-resolves it for its settings. The objective is
    probe accuracy on `plan.split.validation`. Returns None on a distributed worker."""
    if len(plan.data.x_test):
        raise ValueError("plan.data must not hold the test split; use without_test().")
    return _search(config, hypermodel, (plan,), {}, overwrite, log)


def without_test(data: Any) -> Any:
    """A copy of `ImageData` whose test split is empty (what a search may be given)."""
    shape = (0, *data.x_train.shape[1:])
    return dataclasses.replace(data, x_test=np.zeros(shape, np.uint8), y_test=np.zeros(0, np.int64))


def _search(config, hypermodel, args, kwargs, overwrite, log) -> SearchResult | None:
    _silence_tuner()
    role = distributed.tuner_role()
    if role.kind == "worker":
        _work(config, hypermodel, args, kwargs, role, log)
        return None
    out = config.output_dir()
    _check_resumable(config, out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(config.identity(), indent=2) + "\n")
    tuner = make_tuner(
        config.tuner,
        hypermodel,
        out,
        config.max_trials,
        config.epochs,
        seed=config.seed,
        overwrite=overwrite,
        log=log,
    )
    distributed.requeue_unfinished(tuner.oracle)
    done = sum(1 for t in tuner.oracle.trials.values() if t.status == "COMPLETED")
    if done:
        log(f"resuming {out}: {done} finished trial(s) kept")
    if role.kind == "chief":
        log(f"chief: serving the oracle on {role.address}; the workers run the trials")
    tuner.search(*args, epochs=config.epochs, verbose=0, **kwargs)
    table = results_table(tuner)
    table.to_csv(out / "results.csv", index=False)
    markdown = to_markdown(table)
    (out / "results.md").write_text(markdown + "\n")
    finished = [t for t in tuner.oracle.trials.values() if t.score is not None]
    if not finished:
        raise UserError(f"no trial of the search in {out} finished; see the messages above")
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_values = dict(best_trial.hyperparameters.values)
    (out / "best_hyperparameters.json").write_text(
        json.dumps(
            {"trial": best_trial.trial_id, OBJECTIVE: best_trial.score, **best_values}, indent=2
        )
        + "\n"
    )
    best_model = _load_best(tuner, best_trial)
    name = "best_encoder.keras" if config.model in METHODS else "best_model.keras"
    best_model.save(out / name)
    return SearchResult(
        table=table,
        best_hyperparameters=best_values,
        best_score=float(best_trial.score),
        best_model=best_model,
        trials_run=tuner.trials_run,
    )


def _load_best(tuner: kt.Tuner, trial: Any) -> keras.Model:
    """The best trial's model. Its trial folder holding nothing but the oracle's
    trial.json is a `UserError`: the worker that ran it wrote elsewhere."""
    folder = tuner.get_trial_dir(trial.trial_id)
    if not set(os.listdir(folder)) - {"trial.json"}:
        raise UserError(
            f"best trial {trial.trial_id} left no model in {folder}; distributed workers "
            "must write to the chief's output folder (a shared --out)"
        )
    return tuner.load_model(trial)


def _work(config, hypermodel, args, kwargs, role: distributed.Role, log) -> None:
    """A worker's share of a distributed search: trials from the chief until it has none.

    Deletes nothing (`--overwrite` is the chief's) and writes no results; refuses to run
    trials when the search the chief recorded in the output folder has other settings.
    """
    out = config.output_dir()
    tuner = make_tuner(
        config.tuner,
        hypermodel,
        out,
        config.max_trials,
        config.epochs,
        seed=config.seed,
        log=log,
    )
    tuner.oracle = distributed.PatientClient(tuner.oracle)
    tuner.oracle.get_space()  # waits for the chief, which writes search.json before serving
    changed = _changed_settings(config, out)
    if changed:
        raise UserError(
            f"worker {role.tuner_id}: the chief's search in {out} has other "
            f"{', '.join(changed)}; start the worker with the chief's settings"
        )
    tuner.search(*args, epochs=config.epochs, verbose=0, **kwargs)
    log(
        f"worker {role.tuner_id}: {tuner.trials_run} trial(s) run; the chief at "
        f"{role.address} writes the results to {out}"
    )
