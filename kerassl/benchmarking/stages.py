"""What each kind of benchmark cell runs, on data loaded once.

- pretraining: `kerassl.experiment.run` of the row's `TrainConfig` into
  `<bench>/runs/<row>` (resumable through the run directory's own checkpoint);
- evaluation: `kerassl.evaluation.cells.evaluate_cell` on the row's frozen encoder, one
  feature cache per encoder shared by its cells;
- search: a KerasTuner search of a tuned baseline (`kerassl.tuning.search.run_search`)
  on seed 0's split of a label budget: trials train on its labeled examples and are scored
  on its validation examples, never on the test split;
- baseline: a supervised classifier trained on the split's labels only — untuned
  (`kerassl.supervised.supervised_baseline`) or with the search's best hyperparameters
  through its HyperModel (the same code path as its trials) — scored once on the test
  split (`kerassl.evaluation.cells.score`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from kerassl import run_dir as files
from kerassl.benchmarking.cells import BASELINE, EVALUATE, PRETRAIN, TUNE, Cell
from kerassl.benchmarking.definition import BaselineRow, Definition, MethodRow
from kerassl.config import TrainConfig
from kerassl.data.presets import label_flip
from kerassl.data.registry import ImageData
from kerassl.data.splits import Split, parse_labels
from kerassl.evaluation.cells import draw_split, evaluate_cell, feature_cache, score
from kerassl.evaluation.features import extract_features
from kerassl.evaluation.options import budget_name

NO_VALIDATION = "– (no validation labels to tune on)"


def weights_missing(row: MethodRow | BaselineRow, definition: Definition) -> bool:
    """Whether a row needs weights that are not on this machine: ImageNet weights not in
    the Keras cache, or a saved encoder (`source`) that is no local path (a KerasHub
    handle or preset name would need a download, which a benchmark never starts)."""
    from kerassl.models.classifiers import imagenet_weights_available

    if isinstance(row, BaselineRow):
        return bool(row.weights) and not imagenet_weights_available(row.model)
    if row.source is not None:
        return not Path(row.source).exists()
    settings = {**definition.pretrain, **row.settings}
    encoder = settings.get("encoder", TrainConfig.encoder)
    return settings.get("weights") == "imagenet" and not imagenet_weights_available(encoder)


class Stages:
    """Runs cells of one benchmark on its data (loaded once by the caller).

    Args:
        definition: the benchmark.
        bench: its directory (`runs/`, `tuning/`, `augmentations/` are written here).
        data: the dataset of `definition`.
        store: the finished cells (a baseline cell reads its search's result there).
        verbose: Keras verbosity of pretraining.
        log: where a search's per-trial lines go.
    """

    def __init__(
        self, definition: Definition, bench: Path, data: ImageData, store, verbose=0, log=print
    ):
        self.definition = definition
        self.bench = Path(bench)
        self.data = data
        self.store = store
        self.verbose = verbose
        self.log = log
        self._splits: dict[tuple[str, int], Split] = {}
        self._encoders: dict[str, tuple[Any, bool, Any]] = {}

    def run(self, cell: Cell) -> dict[str, Any]:
        """The result row of `cell` (JSON-ready), with its `seconds`."""
        start = time.perf_counter()
        run = {
            PRETRAIN: self.pretrain,
            EVALUATE: self.evaluate,
            TUNE: self.tune,
            BASELINE: self.baseline,
        }[cell.stage]
        result = run(cell)
        base = {"stage": cell.stage, "row": cell.row}
        return base | result | {"seconds": round(time.perf_counter() - start, 2)}

    # ------------------------------------------------------------------ helpers

    def split(self, labels: str, seed: int) -> Split:
        key = (labels, seed)
        if key not in self._splits:
            budget = parse_labels(labels)
            self._splits[key] = draw_split(self.data, budget, seed, self.definition.validation)
        return self._splits[key]

    def run_path(self, row: str) -> Path:
        return self.bench / "runs" / row

    def _row(self, name: str):
        return next(
            r for r in (*self.definition.methods, *self.definition.baselines) if r.name == name
        )

    def baseline_flip(self) -> bool:
        """Horizontal flips in the baselines' label-set augmentation: under the benchmark's
        augmentation (`pretrain.augment`, else the dataset's preset)."""
        return label_flip(self.definition.pretrain.get("augment") or self.data.preset)

    def encoder(self, name: str):
        """(encoder, augmentation preset, feature cache) of a method row, loaded once for
        its cells."""
        if name not in self._encoders:
            self._encoders.clear()  # cells come row by row: one encoder in memory at a time
            row = self._row(name)
            if row.source is None:
                run = files.open_run(self.run_path(name), finished=True)
                encoder, preset = run.load("encoder"), run.config["augment"]
            else:
                encoder, preset = self._source_encoder(row.source)
            self._encoders[name] = (encoder, preset, feature_cache(encoder, self.data))
        return self._encoders[name]

    def _source_encoder(self, source: str):
        """A saved encoder (`kerassl.evaluation.sources`: a run directory, an encoder
        `.keras` file or a KerasHub preset directory) and its augmentation preset."""
        from kerassl.evaluation.sources import check_source, load_source

        definition = self.definition
        spec = check_source(source, definition.dataset)
        loaded = load_source(spec, definition.dataset, definition.data_dir, definition.image_size)
        return loaded.encoder, loaded.preset

    # ------------------------------------------------------------------ stages

    def pretrain(self, cell: Cell) -> dict[str, Any]:
        from kerassl import experiment
        from kerassl.plan import resolve, unlabeled_pool

        row = self._row(cell.row)
        config = self.definition.train_config(row, self.bench / "runs")
        path, metrics = experiment.run(config, verbose=self.verbose)
        run = files.open_run(path, finished=True)
        # The steps the run trained: its resolved epochs and steps per epoch (a time
        # budget's, or the pool's) as the plan resolves them.
        names = TrainConfig.__dataclass_fields__
        resolved = TrainConfig(**{k: v for k, v in run.config.items() if k in names})
        pool = unlabeled_pool(self.data.x_train, resolved.max_unlabeled, resolved.seed)
        first = budget_name(self.definition.labels[0])
        plan = resolve(resolved, self.data, self.split(first, 0), pool)
        budget = run.config.get("time_budget")
        augmentations = self.bench / "augmentations"
        augmentations.mkdir(exist_ok=True)
        if (path / files.AUGMENTATIONS).is_file():
            shutil.copyfile(path / files.AUGMENTATIONS, augmentations / f"{row.name}.png")
        return {
            "method": config.method,
            "run": str(Path("runs") / row.name),
            "epochs": plan.config.epochs,
            "steps_per_epoch": plan.steps_per_epoch,
            "steps": plan.total_steps,
            "batch_size": plan.config.batch_size,
            "time_budget": budget["seconds"] if budget else None,
            "pretrain_seconds": metrics["pretrain_seconds"],
            "images_per_second": metrics["pretrain_images_per_second"],
        }

    def evaluate(self, cell: Cell) -> dict[str, Any]:
        encoder, preset, cache = self.encoder(cell.row)
        return evaluate_cell(
            cell.protocol,
            encoder,
            self.data,
            self.split(cell.labels, cell.seed),
            preset=preset,
            seed=cell.seed,
            options=self.definition.protocol_options,
            cache=cache,
        )

    def tune(self, cell: Cell) -> dict[str, Any]:
        from kerassl.tuning import search
        from kerassl.tuning.config import SearchConfig
        from kerassl.tuning.hypermodels import make_hypermodel

        row, definition = self._row(cell.row), self.definition
        split = self.split(cell.labels, 0)
        if not len(split.validation):
            return {"labels": cell.labels, "skipped": NO_VALIDATION, "best_hyperparameters": None}
        config = SearchConfig(
            model=row.model,
            dataset=definition.dataset,
            data_dir=definition.data_dir,
            image_size=definition.image_size,
            labels=cell.labels,
            validation=definition.validation,
            tuner=definition.tuning.tuner,
            max_trials=definition.tuning.max_trials,
            epochs=definition.tuning_epochs(),
            patience=definition.tuning.patience,
            seed=0,
            weights=row.weights or "none",
            out=str(self.bench / "tuning" / cell.key),
        )
        config.validate()
        hypermodel = make_hypermodel(
            row.model,
            self.data.image_shape,
            self.data.num_classes,
            weights=row.weights,
            epochs=config.epochs,
            patience=config.patience,
            flip=self.baseline_flip(),
            seed=0,
        )
        result = search.run_search(
            config,
            hypermodel,
            self.data.x_train,
            self.data.y_train,
            split,
            log=lambda line: self.log(f"  {cell.describe()}: {line}"),
        )
        return {
            "labels": cell.labels,
            "best_hyperparameters": _jsonable(result.best_hyperparameters),
            "best_score": result.best_score,
            "trials": len(result.table),
            "search": str(Path("tuning") / cell.key),
        }

    def baseline(self, cell: Cell) -> dict[str, Any]:
        row = self._row(cell.row)
        split = self.split(cell.labels, cell.seed)
        if row.tuned:
            model, selected = self._tuned_baseline(row, cell, split)
        else:
            from kerassl.supervised import supervised_baseline

            weights = {"weights": row.weights} if row.model in ("resnet50", "inceptionv3") else {}
            result, model = supervised_baseline(
                self.data,
                split,
                flip=self.baseline_flip(),
                model=row.model,
                epochs=self.definition.baseline_epochs,
                seed=cell.seed,
                **weights,
            )
            selected = {"epochs_run": result["epochs_run"]}
        stops_on = (
            "the smoothed validation accuracy (kerassl.stopping)"
            if len(split.validation)
            else "the training loss (no validation labels)"
        )
        scores = extract_features(model, self.data.x_test)  # [T, K] probabilities
        return {
            "protocol": "supervised",
            "labels": cell.labels,
            "seed": cell.seed,
            "num_labeled": int(len(split.all_labeled)),
            "num_validation": int(len(split.validation)),
            **score(scores, self.data.y_test, self.data.num_classes),
            "schedule": f"early stopping on {stops_on}",
            "selected": selected,
        }

    def _tuned_baseline(self, row: BaselineRow, cell: Cell, split: Split):
        """The search's best hyperparameters (its cell's result) trained on this split."""
        import keras_tuner as kt

        from kerassl.tuning.hypermodels import make_hypermodel

        search = self.store.get(Cell(TUNE, row.name, labels=cell.labels))
        best = search["best_hyperparameters"]
        hypermodel = make_hypermodel(
            row.model,
            self.data.image_shape,
            self.data.num_classes,
            space=best,  # every value fixed
            weights=row.weights,
            epochs=self.definition.baseline_epochs,
            patience=self.definition.tuning.patience,
            flip=self.baseline_flip(),
            seed=cell.seed,
        )
        hp = kt.HyperParameters()
        model = hypermodel.build(hp)
        x, y = self.data.x_train, self.data.y_train
        validation = (x[split.validation], y[split.validation]) if len(split.validation) else None
        history = hypermodel.fit(hp, model, x[split.labeled], y[split.labeled], validation)
        return model, {"epochs_run": len(history.epoch), "hyperparameters": best}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in values.items()}
