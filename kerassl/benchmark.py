"""`python -m kerassl.benchmark [DEFINITION.yaml] [options]`: methods and baselines compared
on the same label splits, resumably, with tables and plots.

Examples:
    python -m kerassl.benchmark benchmarks/studies/a_mnist_100.yaml --dataset digits
    python -m kerassl.benchmark --dataset fashion_mnist \\
        --methods simclr,moco,barlow_twins,supervised --labels 100,10/class,0.1 \\
        --seeds 0-2 --protocols linear,knn,finetune --time-budget 5m --out bench/fashion
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kerassl.benchmarking import definition as definitions
from kerassl.errors import ArgumentParser, UserError, cli_entry
from kerassl.evaluation.options import PROTOCOLS
from kerassl.methods import METHODS
from kerassl.train import DATASET_HELP

EPILOG = """Each method row is pretrained once (runs/<row>/, resumable), then evaluated for
every protocol x label budget x seed; the baselines are trained on the same splits. Every
finished cell is kept in OUT/cells/; running the command again runs only what is missing
(a killed benchmark loses at most the cell it was in). OUT keeps the settings it was made
with: other settings are refused, other rows, budgets, seeds or protocols are welcome."""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="kerassl benchmark",
        description="Compare SSL methods and supervised baselines on the same label splits:\n"
        "results.csv, results.md (mean ± std over seeds), accuracy_vs_labels.png, curves.png.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "definition",
        nargs="?",
        help="benchmark definition (YAML), e.g. benchmarks/studies/a_mnist_100.yaml",
    )
    p.add_argument("--config", metavar="FILE", help="the definition, as an option")
    p.add_argument("--full", action="store_true", help="the definition's full: (study) scale")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the cells and a rough time estimate; write nothing",
    )
    p.add_argument("--out", help="benchmark directory (default bench/<definition>-<dataset>)")
    g = p.add_argument_group("what to compare (override the definition)")
    g.add_argument("--dataset", help=DATASET_HELP)
    g.add_argument("--data-dir", help="where local data lives (IDX files, TFDS data_dir)")
    g.add_argument("--image-size", type=int, help="resize images to this square size")
    g.add_argument(
        "--methods",
        help=f"comma-separated rows: {', '.join(METHODS)}, supervised (= the baselines) "
        f"(default {definitions.DEFAULTS['methods']})",
    )
    g.add_argument(
        "--labels",
        help="label budgets: totals (100), per class (10/class), fractions (0.1), "
        f"comma-separated (default {definitions.DEFAULTS['labels']})",
    )
    g.add_argument(
        "--seeds",
        help="split seeds: 0,1,2 or 0-4; they vary the label split only "
        f"(default {definitions.DEFAULTS['seeds']})",
    )
    g.add_argument(
        "--protocols",
        help=f"comma-separated: {', '.join(PROTOCOLS)} "
        f"(default {definitions.DEFAULTS['protocols']})",
    )
    g.add_argument(
        "--validation",
        type=float,
        help="fraction of each budget's labels held out for model selection (default 0.2)",
    )
    g = p.add_argument_group("pretraining (every method row)")
    g.add_argument("--epochs", type=int, help="equal steps: this many epochs for every row")
    g.add_argument(
        "--time-budget",
        help="equal wall-clock: pretrain every row for this time (90s, 5m, 1h) instead",
    )
    g.add_argument("--batch-size", type=int, help="pretraining batch size (rows may override)")
    g.add_argument("--steps-per-epoch", type=int, help="cap steps per epoch")
    g.add_argument("--max-unlabeled", type=int, help="use at most this many unlabeled images")
    g = p.add_argument_group("baselines")
    g.add_argument(
        "--baseline-epochs",
        type=int,
        help="maximum epochs of a baseline (early stopping on the validation labels)",
    )
    g.add_argument(
        "--tuning-trials", type=int, help="KerasTuner trials per label budget (tuned baselines)"
    )
    p.add_argument("--verbose", action="store_true", help="Keras progress bars in pretraining")
    return p


def definition_of(args: argparse.Namespace) -> tuple[definitions.Definition, str]:
    """The checked definition of a command line, and its name (the file's stem)."""
    if args.definition and args.config:
        raise UserError("give the definition once: as DEFINITION or as --config FILE")
    path = args.definition or args.config
    values = definitions.read_file(path) if path else {}
    pretrain = {k: getattr(args, k) for k in ("batch_size", "steps_per_epoch", "max_unlabeled")}
    pretrain = {k: v for k, v in pretrain.items() if v is not None}
    overrides = {
        k: getattr(args, k)
        for k in (
            "dataset",
            "data_dir",
            "image_size",
            "methods",
            "labels",
            "seeds",
            "protocols",
            "validation",
            "baseline_epochs",
            "epochs",
            "time_budget",
        )
    }
    overrides["pretrain"] = pretrain or None
    if args.tuning_trials is not None:
        overrides["tuning"] = {"max_trials": args.tuning_trials}
    source = path or "the command line"
    definition = definitions.resolve(values, full=args.full, overrides=overrides, source=source)
    return definition, Path(path).stem if path else "benchmark"


def default_out(name: str, definition: definitions.Definition) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in definition.dataset)
    return Path("bench") / f"{name}-{safe}"


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    definition, name = definition_of(args)  # every usage error before TensorFlow loads
    out = Path(args.out) if args.out else default_out(name, definition)
    from kerassl.benchmarking import runner

    if args.dry_run:
        print(runner.dry_run(definition, out))
        return 0
    from kerassl import checkpoint

    # SIGTERM (SLURM's preemption notice, `kill`): a pretraining checkpoints at the end of
    # its step, any other cell stops at once; exit 130, and the next run goes on from there.
    with checkpoint.stop_on_sigterm():
        runner.run(definition, out, verbose="auto" if args.verbose else 0)
    print(f"results: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
