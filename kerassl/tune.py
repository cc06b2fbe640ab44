"""`python -m kerassl.tune MODEL|SEARCH.yaml [options]`: a resumable KerasTuner search.

Tunes a supervised baseline (`cnn`, `mlp`, `resnet50`, `inceptionv3`) or the pretraining
of any SSL method (`simclr`, `moco`, `barlow_twins`, `byol`, `simsiam`, `vicreg`: the
registry's) on a label-scarce split; the objective is `val_accuracy` on the validation
examples carved from the labeled ones (for an SSL method, of a linear probe on its
encoder). Prints and writes the results table,
saves the best model and hyperparameters, then scores the best model once on the test
split. Re-running the same command continues the search without redoing finished trials.

Examples:
    python -m kerassl.tune cnn --dataset fashion_mnist --labels 100 --max-trials 20
    python -m kerassl.tune inceptionv3 --dataset stanford_dogs --labels 0.1 \\
        --tuner bayesian --max-trials 10
    python -m kerassl.tune tuning/cnn_fashion_mnist.yaml --max-trials 5
    python -m kerassl.tune byol --dataset fashion_mnist --labels 100 --epochs 10
    python -m kerassl.tune mlp --config tuning_runs/cnn-fashion_mnist/search.json

Distributed tuning (KerasTuner's chief/worker mode) runs the same command in one chief
and several worker processes, told apart by three environment variables:

    KERASTUNER_TUNER_ID     chief for the chief; a unique ID per worker (tuner0, tuner1, ...)
    KERASTUNER_ORACLE_IP    address the chief listens on and the workers connect to
    KERASTUNER_ORACLE_PORT  its port

The chief runs no trial: it hands trials out, and once they are all over writes the
results table and best model and scores the best model on the test split. Workers only run
trials (trial ids are unique, so their folders `<out>/tuner/trial_<id>/` never collide),
never delete (--overwrite is the chief's) and write no results. All processes must share
the output folder (--out on a shared file system). Re-running a killed chief with the same
command resumes the search (workers wait for it); a killed worker is restarted with its
KERASTUNER_TUNER_ID and runs again the trial it had in hand. No finished trial runs again;
one that was running when the chief died may.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from kerassl.checks import parse_weights
from kerassl.data.presets import label_flip
from kerassl.data.registry import load_dataset
from kerassl.data.splits import label_split, parse_labels
from kerassl.errors import ArgumentParser, UserError, cli_entry
from kerassl.methods import METHODS
from kerassl.settings_file import read_floats, read_settings
from kerassl.train import DATASET_HELP
from kerassl.tuning.config import MODELS, SUPERVISED_MODELS, TUNERS, SearchConfig, ssl_base_config
from kerassl.tuning.distributed import tuner_role

# TensorFlow, Keras and KerasTuner load only once the search definition is valid, so that
# usage errors are reported at once (and without TensorFlow's start-up messages).


EPILOG = """distributed tuning: run the same command as a chief and as workers, with
  KERASTUNER_TUNER_ID     chief, or a unique worker ID (tuner0, tuner1, ...)
  KERASTUNER_ORACLE_IP    the chief's address (the chief listens on it)
  KERASTUNER_ORACLE_PORT  the chief's port
The chief runs no trial and writes the results once all are over; workers run trials only.
All processes must share --out. Re-run a killed chief (or a killed worker, with its ID)
with the same command to resume; finished trials are not run again."""


def _at_least_one(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m kerassl.tune",
        description="Resumable KerasTuner search for a supervised baseline or an SSL method's\n"
        "pretraining, scored on the labeled validation split (SSL: by a linear probe);\n"
        "the best model is tested once on the test split.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        nargs="?",
        help=f"model to tune: a supervised baseline ({', '.join(SUPERVISED_MODELS)}), an "
        f"SSL method ({', '.join(METHODS)}), or a YAML search definition such as "
        "tuning/cnn_fashion_mnist.yaml (or the definition as --config FILE)",
    )
    add = parser.add_argument
    add("--dataset", help=DATASET_HELP)
    add("--data-dir", help="local data folder (IDX files, TFDS data_dir)")
    add("--image-size", type=_at_least_one, help="resize images to this square size")
    add("--labels", help="label budget: total count (100) or fraction per class (0.1)")
    add("--validation", type=float, help="fraction of the labels held out (default 0.2)")
    add("--tuner", help=f"search algorithm: {', '.join(TUNERS)} (default random)")
    add(
        "--max-trials",
        type=_at_least_one,
        help="trials in total, finished ones included (default 10)",
    )
    add(
        "--epochs",
        type=_at_least_one,
        help="maximum epochs per trial (SSL methods: pretraining epochs)",
    )
    add("--patience", type=_at_least_one, help="early-stopping patience in epochs (default 40)")
    add("--seed", type=int, help="seed of the split, the tuner and the trials (default 0)")
    add("--weights", help="resnet50/inceptionv3 base: auto (ImageNet if cached), imagenet, none")
    add("--out", help="output folder (default tuning_runs/<model>-<dataset>)")
    add(
        "--overwrite",
        action="store_true",
        help="discard a previous search in --out "
        "(the chief's or a lone search's; workers never delete)",
    )
    add("--no-download", action="store_true", help="never let TFDS download a dataset")
    add(
        "--config",
        metavar="FILE",
        help="take the settings from a YAML or JSON search definition, as TARGET.yaml "
        "(the same keys; e.g. a search's own search.json). TARGET is then left out or a "
        "model name, which replaces the file's model; options given on the command line win",
    )
    return parser


def resolve_config(args: argparse.Namespace) -> SearchConfig:
    """The search definition (TARGET.yaml or `--config`; defaults for a model name), with
    a model name and the CLI options on top."""
    target = args.target
    definition = target is not None and (
        target.endswith((".yaml", ".yml")) or os.path.isfile(target)
    )
    if target is not None and not definition and target not in MODELS:
        raise UserError(
            f"unknown model {target!r}; choose one of {', '.join(MODELS)} "
            "or give a .yaml search definition"
        )
    defaults = dataclasses.asdict(SearchConfig())
    if args.config is not None:
        if definition:
            raise UserError("give the search definition as TARGET or as --config, not both")
        values = read_settings(args.config, list(defaults), defaults=defaults)
        config = SearchConfig.from_dict(values, source=args.config)
        if target is not None:
            config.model = target
    elif definition:
        config = SearchConfig.from_yaml(target)
        for name, value in read_floats(vars(config), defaults).items():  # as --config does
            setattr(config, name, value)
    elif target is not None:
        config = SearchConfig(model=target)
    else:
        raise UserError(
            f"give the model to tune ({', '.join(MODELS)}), a .yaml search definition, "
            "or --config FILE"
        )
    for field in dataclasses.fields(SearchConfig):
        value = getattr(args, field.name, None)
        if value is not None and field.name != "model":
            setattr(config, field.name, str(value) if field.name == "labels" else value)
    config.validate()
    return config


def _classifier_search(config: SearchConfig, data, split, overwrite: bool) -> tuple[Any, dict]:
    """(SearchResult, the best model's test-split metrics), or (None, {}) on a worker."""
    from kerassl.supervised import evaluate_classifier
    from kerassl.tuning import search
    from kerassl.tuning.hypermodels import make_hypermodel

    hypermodel = make_hypermodel(
        config.model,
        data.x_train.shape[1:],
        len(data.class_names),
        space=config.space,
        weights=parse_weights(config.weights),
        epochs=config.epochs,
        patience=config.patience,
        flip=label_flip(data.preset),
        seed=config.seed,
    )
    result = search.run_search(
        config, hypermodel, data.x_train, data.y_train, split, overwrite=overwrite
    )
    if result is None:  # a distributed worker: the chief tests the best model
        return None, {}
    return result, evaluate_classifier(result.best_model, data.x_test, data.y_test)


def _ssl_search(config: SearchConfig, data, split, overwrite: bool) -> tuple[Any, dict]:
    """(SearchResult, the best encoder's test-split probe metrics), or (None, {}) on a
    worker."""
    from kerassl.experiment import evaluate
    from kerassl.plan import resolve, unlabeled_pool
    from kerassl.tuning import search
    from kerassl.tuning.hypermodels import SSLHyperModel

    base = ssl_base_config(config)
    pool = unlabeled_pool(data.x_train, base.max_unlabeled, base.seed)
    hypermodel = SSLHyperModel(config.model, base, space=config.space)
    # The trials see a plan whose data holds no test images.
    plan = resolve(base, search.without_test(data), split, pool)
    result = search.run_ssl_search(config, hypermodel, plan, overwrite=overwrite)
    if result is None:  # a distributed worker: the chief tests the best encoder
        return None, {}
    best_config = dataclasses.replace(base, **result.best_hyperparameters)
    metrics, _ = evaluate(resolve(best_config, data, split, pool), result.best_model)
    probe = metrics["linear_probe"]
    return result, {"top1": probe["top1"], **({"top5": probe["top5"]} if probe["top5"] else {})}


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    tuner_role()  # a half-set KERASTUNER_* environment is an error before TensorFlow loads
    data = load_dataset(config.dataset, config.data_dir, config.image_size, not args.no_download)
    split = label_split(data.y_train, parse_labels(config.labels), config.seed, config.validation)
    searcher = _ssl_search if config.model in METHODS else _classifier_search
    result, test = searcher(config, data, split, args.overwrite)
    if result is None:
        return 0
    from kerassl.tuning.search import to_markdown

    out = config.output_dir()
    test = {**test, "num_test": int(len(data.y_test)), "val_accuracy": result.best_score}
    (out / "test_metrics.json").write_text(json.dumps(test, indent=2) + "\n")
    print(to_markdown(result.table))
    print(f"best hyperparameters: {json.dumps(result.best_hyperparameters)}")
    scores = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k not in ("num_test",))
    print(f"best model ({config.model}, {len(result.table)} trials): {scores}; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
