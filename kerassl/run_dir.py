"""The run directory: what `kerassl train` writes, and the one module that reads it back.

```
runs/<method>-<dataset>-<timestamp or slurm<job id>>/
  config.json        every resolved setting: the `TrainConfig` fields, with image_size
                     resolved to an int, plus channels, class_names, augment (the
                     resolved preset), source, skipped_files, distribution, versions;
                     "settings": the settings as given (what a re-run is compared with);
                     "changes": settings changed on `--resume`, with the step;
                     "xla": whether the step is XLA-compiled and how that was decided
  split.json         labeled / validation indices into x_train, per class (`Split`)
  checkpoints/       state.npz: the last pretraining checkpoint (`kerassl.checkpoint`),
                     removed once encoder.keras is written
  logs/              TensorBoard
  history.csv        per-epoch pretraining metrics, each epoch once
  augmentations.png  augmented pairs from the model's augmenter
  encoder.keras      the pretrained encoder ([0, 1] float images → features); its
                     presence marks pretraining done
  progress.json      results of the stages done so far (pretraining time, probe, baseline)
  classifier.keras   encoder + trained linear probe: [0, 1] images → class probabilities
  baseline.keras     the supervised baseline ([0, 1] images → class probabilities)
  finetuned.keras    `--then finetune`: the fine-tuned network (images → probabilities)
  student.keras      `--then distill`: the student distilled on the unlabeled pool
  report.md          the run's table
  metrics.json       written last: every classifier's results on the test split and
                     "final", the one chosen on held-out labels (exported by default)
```

A run directory without `metrics.json` is unfinished, and running the same command again
continues it where it stopped (`kerassl.resume` decides; `kerassl.experiment.run` skips
the stages done). Every file is written atomically (to a temporary name in the same
directory, then renamed), so a killed run never leaves a half-written file under a final
name, and `metrics.json` appearing last marks the run finished. Writers use `RunDir`;
readers (`kerassl.export`, the benchmarks, tests) use `open_run`. Nobody else parses
these files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerassl.errors import UserError

CONFIG = "config.json"
SPLIT = "split.json"
METRICS = "metrics.json"
PROGRESS = "progress.json"
HISTORY = "history.csv"
REPORT = "report.md"
AUGMENTATIONS = "augmentations.png"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
ENCODER = "encoder.keras"
CLASSIFIER = "classifier.keras"
BASELINE = "baseline.keras"
FINETUNED = "finetuned.keras"
STUDENT = "student.keras"
FIXMATCH = "fixmatch.keras"

# A run's exportable classifiers (`kerassl export --model NAME`) → their files.
MODEL_FILES = {
    "classifier": CLASSIFIER,
    "finetuned": FINETUNED,
    "student": STUDENT,
    "fixmatch": FIXMATCH,
    "baseline": BASELINE,
}


def default_run_name(method: str, dataset: str, slurm_job: str | None = None) -> str:
    """`<method>-<dataset>-<timestamp>`, the dataset name made path-safe; under SLURM
    `<method>-<dataset>-slurm<job id>`, so that a requeued job finds its run again."""
    safe = dataset.replace(":", "-").replace("/", "_").strip("_-")[-40:]
    when = f"slurm{slurm_job}" if slurm_job else time.strftime("%Y%m%d-%H%M%S")
    return f"{method}-{safe}-{when}"


class RunDir:
    """Writes the files of one run directory, each atomically.

    Example:
        >>> run_dir = RunDir.create("runs", "simclr-digits-20260101-120000")
        >>> run_dir.write_json(CONFIG, {"method": "simclr"})
        >>> run_dir.finished
        False
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, out: str | Path, name: str) -> RunDir:
        """Creates `<out>/<name>/`; `UserError` when it exists or cannot be made."""
        path = Path(out) / name
        try:
            path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise UserError(
                f"run directory {path} already exists; choose another --run-name"
            ) from None
        except OSError as error:
            raise UserError(f"cannot create run directory under {out}: {error.strerror}") from None
        return cls(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def finished(self) -> bool:
        return (self.path / METRICS).is_file()

    def has(self, name: str) -> bool:
        """Whether the file `name` has been written."""
        return (self.path / name).is_file()

    def write_text(self, name: str, text: str) -> Path:
        """Writes `text` to `name` atomically."""
        return self._atomic(name, lambda tmp: tmp.write_text(text))

    def write_json(self, name: str, values: Any) -> Path:
        """Writes indented JSON atomically (non-JSON values as `str`)."""
        return self.write_text(name, json.dumps(values, indent=2, default=str) + "\n")

    def save_model(self, name: str, model) -> Path:
        """Saves a Keras model as `name` (a `.keras` file) atomically."""
        return self._atomic(name, lambda tmp: model.save(tmp), suffix=".keras")

    def _atomic(self, name: str, write, suffix: str = ".tmp") -> Path:
        target = self.path / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=self.path)
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return target

    def read_json(self, name: str, default: Any = None) -> Any:
        """The JSON file `name`, or `default` when it does not exist."""
        path = self.path / name
        return _read_json(path) if path.is_file() else default

    def remove(self) -> None:
        """Deletes the directory and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class Run:
    """A run directory read back: its resolved settings, split, metrics and models.

    Attributes:
        path: the run directory (absolute).
        config: the resolved settings of `config.json`.
        metrics: `metrics.json`, or None while the run is unfinished.
    """

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def method(self) -> str:
        return str(self.config.get("method", "unknown"))

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset", "unknown"))

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    @property
    def channels(self) -> int:
        return self.config["channels"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(str(name) for name in self.config["class_names"])

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    def split(self):
        """The run's `kerassl.data.splits.Split` (from `split.json`)."""
        from kerassl.data.splits import Split

        return Split.from_json(_read_json(self.path / SPLIT))

    def final_model(self) -> str:
        """The `MODEL_FILES` name of the run's final classifier (metrics.json "final",
        chosen on held-out labels); "classifier" for runs from before it was recorded."""
        final = (self.metrics or {}).get("final") or {}
        return final.get("model", "classifier")

    def has(self, model: str) -> bool:
        """Whether the run kept `model` (a key of `MODEL_FILES`, or "encoder")."""
        return (self.path / _model_file(model)).is_file()

    def require(self, model: str) -> Path:
        """The file of `model`, or a `UserError` saying why the run has none."""
        if not self.has(model):
            if model == "baseline":
                trained = isinstance(self.metrics, dict) and "baseline" in self.metrics
                reason = (
                    "its baseline was trained by a kerassl that did not save baseline.keras"
                    if trained
                    else "it was trained with --baseline none"
                )
                raise UserError(f"run {str(self.path)!r} has no {BASELINE}: {reason}")
            raise UserError(
                f"run directory {str(self.path)!r} has no {_model_file(model)}: only runs "
                "that trained one can use it"
            )
        return self.path / _model_file(model)

    def load(self, model: str):
        """Loads `model` ("encoder", "classifier" or "baseline") without compiling it.

        kerassl's custom layers are registered first by importing `kerassl.models`.
        """
        import keras

        import kerassl.models  # noqa: F401  (registers kerassl's serializable layers)

        return keras.saving.load_model(self.require(model), compile=False)

    def load_data(self, download: bool = False):
        """The run's dataset, loaded as the run loaded it (`kerassl.data` registry)."""
        from kerassl.data.registry import load_dataset

        return load_dataset(
            self.config["dataset"], self.config.get("data_dir"), self.image_size, download
        )


def _model_file(model: str) -> str:
    return ENCODER if model == "encoder" else MODEL_FILES[model]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"run directory {str(path.parent)!r} has no {path.name}") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None


def open_run(path: str | Path, finished: bool = False) -> Run:
    """Reads and checks a run directory.

    Args:
        path: the run directory.
        finished: require a finished run (one with `metrics.json`).

    Raises:
        UserError: the directory is missing, unfinished while `finished` is asked, or its
            `config.json` is unreadable or lacks a needed field.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory {str(path)!r} does not exist")
    metrics = _read_json(path / METRICS) if (path / METRICS).is_file() else None
    if finished and metrics is None:
        raise UserError(
            f"run directory {str(path)!r} has no {METRICS}: the run is unfinished; "
            "use a run that completed"
        )
    config = _read_json(path / CONFIG)
    config_path = path / CONFIG
    missing = [key for key in ("image_size", "channels", "class_names") if key not in config]
    if missing:
        raise UserError(f"{config_path} lacks {', '.join(missing)}")
    image_size, channels = config["image_size"], config["channels"]
    if not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"{config_path}: image_size must be a positive int, got {image_size!r}")
    if channels not in (1, 3):
        raise UserError(f"{config_path}: channels must be 1 or 3, got {channels!r}")
    class_names = config["class_names"]
    if not isinstance(class_names, list) or len(class_names) < 2:
        raise UserError(f"{config_path}: class_names must list at least 2 names")
    return Run(path=path.resolve(), config=config, metrics=metrics)
