"""What `kerassl evaluate` evaluates: a run directory, an encoder `.keras` file or a
KerasHub preset, resolved into an encoder, its data and the settings it implies.

- A run directory brings its dataset (and `data_dir`, image size), its resolved
  augmentation preset (for the alignment views and whether flips preserve labels), its
  validation fraction and label budget; `--dataset` may name another dataset of the same
  image shape.
- A `.keras` encoder or a KerasHub preset needs `--dataset`; the preset and validation
  fraction are then the dataset's default and 0.2. A `.keras` encoder fixes the image
  size; a KerasHub backbone takes the dataset's own size (it resizes inside its graph).

`check_source` runs before any model or data loads; `load_source` loads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kerassl import run_dir as files
from kerassl.errors import UserError

RUN, KERAS, HUB = "run", "keras", "hub"
DEFAULT_VALIDATION = 0.2


@dataclass(frozen=True)
class SourceSpec:
    """A source checked without loading it.

    Attributes:
        kind: "run", "keras" or "hub".
        path: the source as given (a path, or a KerasHub handle / preset name).
        name: short name for output directories.
    """

    kind: str
    path: str
    name: str


@dataclass
class Source:
    """A loaded source.

    Attributes:
        spec: the `SourceSpec`.
        encoder: [0, 1] images → features.
        data: the dataset to evaluate on.
        preset: augmentation preset of the alignment views (and of `flip`).
        validation: fraction of the chosen labels held out for model selection.
        labels: the label budget the source suggests (a run's), else "100".
        out_parent: where `eval-*/` goes by default (the run directory, else evals/).
    """

    spec: SourceSpec
    encoder: object
    data: object
    preset: str
    validation: float
    labels: str
    out_parent: Path


def check_source(source: str, dataset: str | None) -> SourceSpec:
    """Decides what `source` is without loading it; `UserError` if it is none of them."""
    from kerassl.evaluation.hub import is_hub_source

    path = Path(source)
    if is_hub_source(source):  # a preset directory has a config.json too
        _need_dataset(source, dataset)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.rstrip("/").split("/")[-1]) or "hub"
        return SourceSpec(HUB, source, name)
    if path.is_dir() and (path / files.CONFIG).is_file():
        if not (path / files.ENCODER).is_file():
            raise UserError(
                f"run directory {source!r} has no {files.ENCODER}: its pretraining has not "
                "finished; continue it with kerassl train --resume first"
            )
        return SourceSpec(RUN, source, path.resolve().name)
    if path.suffix == ".keras":
        if not path.is_file():
            raise UserError(f"encoder file {source!r} does not exist")
        _need_dataset(source, dataset)
        return SourceSpec(KERAS, source, path.stem)
    if path.is_dir():
        raise UserError(
            f"{source!r} is neither a kerassl run directory (no {files.CONFIG}) nor a KerasHub "
            "preset directory"
        )
    raise UserError(
        f"{source!r} does not exist; give a run directory, an encoder .keras file or a "
        "KerasHub preset"
    )


def _need_dataset(source: str, dataset: str | None) -> None:
    if not dataset:
        raise UserError(f"evaluating {source!r} needs --dataset (only a run directory has one)")


def load_source(
    spec: SourceSpec,
    dataset: str | None = None,
    data_dir: str | None = None,
    image_size: int | None = None,
    download: bool = True,
    backbone_size: int | None = None,
) -> Source:
    """Loads the encoder and the data of a checked source (`backbone_size`: the input size
    a KerasHub backbone is rebuilt at, default the preset's).

    Raises:
        UserError: the data cannot be loaded or does not fit the encoder's input.
    """
    from kerassl.data.registry import load_dataset

    if spec.kind == RUN:
        from kerassl.run_dir import open_run

        run = open_run(spec.path)
        if image_size not in (None, run.image_size):
            raise UserError(
                f"--image-size {image_size}: the encoder of {spec.path} takes "
                f"{run.image_size}-px images"
            )
        same = dataset in (None, run.dataset)
        data = load_dataset(
            run.dataset if same else dataset,
            run.config.get("data_dir") if same and data_dir is None else data_dir,
            run.image_size,
            download,
        )
        _check_shape(data, run.image_shape, spec.path)
        preset = run.config.get("augment") or data.preset
        return Source(
            spec=spec,
            encoder=run.load("encoder"),
            data=data,
            preset=preset if same else data.preset,
            validation=float(run.config.get("validation", DEFAULT_VALIDATION)),
            labels=str(run.config.get("labels", "100")),
            out_parent=run.path,
        )
    if spec.kind == KERAS:
        import keras

        import kerassl.models  # noqa: F401  (registers kerassl's serializable layers)

        try:
            encoder = keras.saving.load_model(spec.path, compile=False)
        except Exception as error:  # a corrupt or foreign file: say which, in one line
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
            raise UserError(f"cannot load encoder {spec.path}: {first}") from None
        shape = tuple(encoder.input_shape[1:])
        if image_size not in (None, shape[0]):
            raise UserError(
                f"--image-size {image_size}: the encoder {spec.path} takes {shape[0]}-px images"
            )
        data = load_dataset(dataset, data_dir, shape[0], download)
        _check_shape(data, shape, spec.path)
    else:
        from kerassl.evaluation.hub import hub_encoder

        data = load_dataset(dataset, data_dir, image_size, download)
        encoder = hub_encoder(spec.path, data.image_shape, input_size=backbone_size)
    return Source(
        spec=spec,
        encoder=encoder,
        data=data,
        preset=data.preset,
        validation=DEFAULT_VALIDATION,
        labels="100",
        out_parent=Path("evals"),
    )


def _check_shape(data, shape: tuple, source: str) -> None:
    if tuple(data.image_shape) != tuple(shape):
        raise UserError(
            f"{data.name} has {data.image_shape} images but the encoder of {source} takes "
            f"{tuple(shape)}"
        )
