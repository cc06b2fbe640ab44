"""`python -m kerassl.export`: export a run for TF Serving, or verify an export.

python -m kerassl.export runs/simclr-fashion_mnist-… --name fashion_simclr --out export/
python -m kerassl.export runs/simclr-fashion_mnist-… --name fashion_cnn --model baseline
python -m kerassl.export --verify export/fashion_simclr/1
"""

from __future__ import annotations

import sys

from kerassl.errors import ArgumentParser, UserError, cli_entry
from kerassl.run_dir import MODEL_FILES
from kerassl.settings_file import CONFIG_HELP, parse_with_settings


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m kerassl.export",
        description="Export a finished run as a SavedModel in TF Serving's "
        "<out>/<name>/<version>/ layout (and update <out>/models.config), or verify one.",
    )
    parser.add_argument("run_dir", nargs="?", help="finished run directory to export")
    parser.add_argument("--name", help="model name, as in /v1/models/<name>")
    parser.add_argument(
        "--model",
        choices=("final", *MODEL_FILES),
        default="final",
        help="which of the run's models: final (default: the one metrics.json names final, "
        "chosen on held-out labels), classifier (encoder + linear probe), finetuned "
        "(--then finetune), student (--then distill), fixmatch (--then consistency) or "
        "baseline (the supervised baseline)",
    )
    parser.add_argument(
        "--version", type=int, help="version number (default: highest existing + 1)"
    )
    parser.add_argument(
        "--out", default="export", help="TF Serving base directory (default: export)"
    )
    parser.add_argument(
        "--top-k", type=int, default=5, help="class ids/names returned per image (default: 5)"
    )
    parser.add_argument(
        "--config-base-path",
        default="/models",
        help="where --out is mounted for TF Serving, used in models.config (default: /models)",
    )
    parser.add_argument(
        "--verify",
        metavar="EXPORT_DIR",
        help="verify <out>/<name>/<version> in a fresh process without kerassl instead",
    )
    parser.add_argument(
        "--run-dir",
        dest="reference_run",
        help="with --verify: run to compare with (default: the one exported)",
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-5, help="with --verify: max abs diff (default 1e-5)"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=CONFIG_HELP.format(example="run_dir: runs/x, name: fashion_simclr, top_k: 3"),
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_with_settings(build_parser(), argv)
    if args.verify:
        if args.run_dir:
            raise UserError("give either RUN_DIR (to export) or --verify EXPORT_DIR, not both")
        from kerassl.serving.verify import verify_export

        report = verify_export(args.verify, run_dir=args.reference_run, tolerance=args.tolerance)
        print(report.summary())
        return 0 if report.ok else 1
    if not args.run_dir:
        raise UserError("RUN_DIR is required (or use --verify EXPORT_DIR)")
    if not args.name:
        raise UserError("--name is required: the model name served at /v1/models/<name>")
    from kerassl.run_dir import open_run
    from kerassl.serving.export import check_model_name, export_run

    check_model_name(args.name)
    run = open_run(args.run_dir, finished=True)
    model = run.final_model() if args.model == "final" else args.model
    run.require(model)  # fail before loading models
    path = export_run(
        args.run_dir,
        args.name,
        args.out,
        version=args.version,
        top_k=args.top_k,
        config_base_path=args.config_base_path,
        model=model,
    )
    print(f"exported {args.run_dir} ({model}) to {path}")
    print(f"verify with: python -m kerassl.export --verify {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
