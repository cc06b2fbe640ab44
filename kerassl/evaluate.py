"""`python -m kerassl.evaluate SOURCE [options]`: evaluate an encoder with several
protocols, label budgets and split seeds, and write an `eval-*/` directory.

    python -m kerassl.evaluate runs/simclr-fashion_mnist-20261202-101500 \\
        --protocol linear,knn,finetune --labels 1/class,100,0.1 --seeds 0-2

Every cell (protocol × budget × seed) trains and selects on the chosen labels only and
scores the test split once (`kerassl.evaluation.cells`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kerassl.data.registry import DATASET_FORMS
from kerassl.errors import ArgumentParser, UserError, cli_entry
from kerassl.evaluation.options import (
    PROTOCOLS,
    ProtocolOptions,
    budget_name,
    parse_budgets,
    parse_protocols,
    parse_seeds,
)
from kerassl.evaluation.sources import check_source, load_source
from kerassl.settings_file import CONFIG_HELP, parse_with_settings

_OPTION_FLAGS = {
    "knn_k": ("--knn-k", int, "neighbours of the weighted kNN"),
    "knn_temperature": ("--knn-temperature", float, "τ of the kNN's exp(s/τ) votes"),
    "mlp_hidden": ("--mlp-hidden", int, "hidden units of the mlp protocol"),
    "max_epochs": ("--max-epochs", int, "most epochs of mlp and finetune"),
    "patience": ("--patience", int, "early-stopping patience on the validation labels"),
    "max_steps": ("--max-steps", int, "most training steps of mlp/finetune/distill"),
    "min_steps": (
        "--min-steps",
        int,
        "steps of mlp/finetune/distill before an epoch may be kept",
    ),
    "fixed_epochs": (
        "--fixed-epochs",
        int,
        "epochs of mlp/finetune when no validation labels remain (1/class)",
    ),
    "learning_rate": ("--lr", float, "learning rate of the new head (mlp, finetune)"),
    "encoder_lr_scale": (
        "--encoder-lr-scale",
        float,
        "finetune: the encoder's learning rate as a fraction of the head's",
    ),
    "batch_size": ("--batch-size", int, "labeled images per step (mlp, finetune, distill)"),
    "distill_pool": ("--distill-pool", int, "distill: most unlabeled images the student sees"),
    "distill_epochs": ("--distill-epochs", int, "distill: most passes over that pool"),
    "distill_temperature": (
        "--distill-temperature",
        float,
        "distill: τ of the teacher's and student's softmax",
    ),
    "distill_alpha": (
        "--distill-alpha",
        float,
        "distill: weight of the soft-label term (1 − α: the labeled cross-entropy)",
    ),
    "consistency_threshold": (
        "--consistency-threshold",
        float,
        "consistency: FixMatch's confidence threshold τ of a pseudo-label",
    ),
    "consistency_weight": (
        "--consistency-weight",
        float,
        "consistency: λ_u, the weight of the pseudo-label term",
    ),
    "consistency_ratio": (
        "--consistency-ratio",
        int,
        "consistency: μ, pool images per labeled image in a step",
    ),
    "consistency_steps": ("--consistency-steps", int, "consistency: most training steps"),
}


def build_parser() -> ArgumentParser:
    defaults = ProtocolOptions()
    p = ArgumentParser(
        prog="kerassl evaluate",
        description="Evaluate an encoder (a run directory, an encoder .keras file or a KerasHub "
        "preset) with several protocols, label budgets and split seeds. Every protocol trains "
        "and selects on the chosen labels only; the test split is scored once per classifier.",
    )
    p.add_argument(
        "source",
        nargs="?",
        help="a kerassl run directory, an encoder .keras file, or a KerasHub preset (directory, "
        "kaggle://, hf:// handle or preset name; needs kerassl[hub])",
    )
    p.add_argument(
        "--protocol",
        default="linear",
        help=f"comma-separated protocols: {', '.join(PROTOCOLS)} (default %(default)s)",
    )
    p.add_argument(
        "--labels",
        help="comma-separated label budgets: per class (10/class), totals (100) or fractions "
        "(0.1) (default: the run's, else 100)",
    )
    p.add_argument(
        "--seeds",
        default="0",
        help="split seeds: a list (0,1,2) or a range (0-4); they vary the label split only "
        "(default %(default)s)",
    )
    p.add_argument(
        "--validation",
        type=float,
        help="fraction of the chosen labels held out for early stopping (default: the run's, "
        "else 0.2)",
    )
    g = p.add_argument_group("data (a run directory brings its own)")
    g.add_argument("--dataset", help="; ".join(f"{k} ({v})" for k, v in DATASET_FORMS.items()))
    g.add_argument("--data-dir", help="where local data lives")
    g.add_argument("--image-size", type=int, help="image size for a KerasHub source")
    g.add_argument(
        "--backbone-size",
        type=int,
        help="KerasHub source: rebuild the backbone at this input size (e.g. 224 for DINOv2, "
        "whose presets are 518 px; default: the preset's)",
    )
    g.add_argument("--offline", action="store_true", help="never download")
    g = p.add_argument_group("protocol settings")
    for name, (flag, kind, text) in _OPTION_FLAGS.items():
        g.add_argument(
            flag,
            dest=name,
            type=kind,
            default=getattr(defaults, name),
            help=f"{text} (default %(default)s)",
        )
    g = p.add_argument_group("diagnostics and output")
    g.add_argument(
        "--no-diagnostics",
        action="store_true",
        help="skip the embedding diagnostics and the t-SNE picture",
    )
    g.add_argument(
        "--diagnostic-images",
        type=int,
        default=2000,
        help="test images the diagnostics and t-SNE use (default %(default)s)",
    )
    g.add_argument(
        "--augment",
        help="augmentation preset of the two views the alignment compares (default: the "
        "run's, else the dataset's)",
    )
    g.add_argument(
        "--out",
        help="output directory (default: RUN_DIR/eval-TIMESTAMP, else evals/NAME-TIMESTAMP)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    g.add_argument(
        "--config", metavar="FILE", help=CONFIG_HELP.format(example="protocol: linear,knn")
    )
    return p


@cli_entry
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_with_settings(build_parser(), argv)
    if args.source is None:
        raise UserError("SOURCE is required (or source in --config FILE)")
    protocols = parse_protocols(args.protocol)
    seeds = parse_seeds(args.seeds)
    budgets = parse_budgets(args.labels) if args.labels is not None else None
    options = ProtocolOptions(**{name: getattr(args, name) for name in _OPTION_FLAGS})
    if args.validation is not None and not 0 <= args.validation < 1:
        raise UserError(f"--validation must be in [0, 1); got {args.validation}")
    if args.diagnostic_images < 2:
        raise UserError(
            f"--diagnostic-images must be an integer >= 2; got {args.diagnostic_images}"
        )
    if args.augment is not None:
        from kerassl.data.presets import get_preset

        get_preset(args.augment)
    spec = check_source(args.source, args.dataset)
    if args.backbone_size is not None and spec.kind != "hub":
        raise UserError("--backbone-size applies to KerasHub sources only")
    source = load_source(
        spec, args.dataset, args.data_dir, args.image_size, not args.offline, args.backbone_size
    )
    if budgets is None:
        budgets = parse_budgets(source.labels)
    validation = source.validation if args.validation is None else args.validation
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.out:
        out = Path(args.out)
    elif spec.kind == "run":
        out = source.out_parent / f"eval-{stamp}"
    else:
        out = source.out_parent / f"{spec.name}-{stamp}"
    out_dir = evaluate(
        source,
        protocols,
        budgets,
        seeds,
        options,
        validation=validation,
        preset=args.augment or source.preset,
        diagnostics=not args.no_diagnostics,
        diagnostic_images=args.diagnostic_images,
        out=out,
        say=(lambda line: None) if args.quiet else print,
    )
    print(f"evaluation written to {out_dir} (results.md, results.csv)")
    return 0


def evaluate(
    source,
    protocols,
    budgets,
    seeds,
    options: ProtocolOptions,
    *,
    validation: float,
    preset: str,
    diagnostics: bool,
    diagnostic_images: int,
    out: Path,
    say=print,
) -> Path:
    """Runs every cell of a loaded source and writes the evaluation directory `out`.

    Every split is drawn before any cell runs, so that an impossible budget fails at once
    (and `out` is only created, complete, at the end).
    """
    from kerassl.evaluation.cells import draw_split, feature_cache, run_cell
    from kerassl.evaluation.report import assembled, write_evaluation

    data, encoder = source.data, source.encoder
    splits = {
        (budget_name(budget), seed): draw_split(data, budget, seed, validation)
        for budget in budgets
        for seed in seeds
    }
    if Path(out).exists():
        raise UserError(f"{out} already exists; give another --out")
    cache = feature_cache(encoder, data)
    cells = [(protocol, key) for protocol in protocols for key in splits]
    rows, start = [], time.perf_counter()
    for number, (protocol, (budget, seed)) in enumerate(cells, 1):
        row, _ = run_cell(
            protocol,
            encoder,
            data,
            splits[budget, seed],
            preset=preset,
            seed=seed,
            options=options,
            cache=cache,
        )
        rows.append(row)
        say(
            f"[{number}/{len(cells)}] {protocol} · {budget} labels · seed {seed}: top-1 "
            f"{100 * row['top1']:.1f} % ({row['seconds']:.0f} s; elapsed "
            f"{time.perf_counter() - start:.0f} s)"
        )
    found = None
    with assembled(out) as directory:
        if diagnostics:
            found = _diagnostics(encoder, data, cache, preset, diagnostic_images, directory)
        settings = {
            "source": source.spec.path,
            "kind": source.spec.kind,
            "dataset": data.name,
            "num_test": int(len(data.x_test)),
            "protocols": list(protocols),
            "labels": [budget_name(b) for b in budgets],
            "seeds": list(seeds),
            "validation": validation,
            "augment": preset,
            "options": options.to_json(),
            "versions": _versions(),
        }
        lines = [
            f"Source: `{source.spec.path}` ({source.spec.kind}); dataset {data.name}, "
            f"{len(data.x_test)} test images; split seeds {', '.join(map(str, seeds))}; "
            f"{validation:g} of the chosen labels held out for early stopping.",
        ]
        write_evaluation(
            directory,
            rows,
            data.class_names,
            settings,
            f"Evaluation of {source.spec.name}",
            lines,
            found,
        )
    return Path(out)


def _diagnostics(encoder, data, cache, preset, images, directory: Path) -> dict:
    from kerassl.data.augment import make_augmenter
    from kerassl.evaluation.diagnostics import embedding_diagnostics, tsne_png

    found = embedding_diagnostics(
        encoder, data.x_test, data.y_test, make_augmenter(preset, seed=0), max_images=images
    )
    tsne_png(cache.test(), data.y_test, data.class_names, directory / "tsne.png", images)
    return found


def _versions() -> dict:
    import platform

    import keras
    import tensorflow as tf

    import kerassl

    return {
        "kerassl": kerassl.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    sys.exit(main())
