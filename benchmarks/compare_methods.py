"""Methods side by side: `kerassl train` for each method x seed, then one Markdown table.

Every run is a fresh `python -m kerassl.train` process with the same options, so each
method gets the same data, label splits (one per seed), pretraining length and machine.
The table reports linear-probe top-1 on the whole test split as mean ± std over seeds,
the measured pretraining seconds and images/s, and the supervised baseline trained on the
same labels (once per seed, by the first method's runs).

Usage:
    python benchmarks/compare_methods.py --methods simclr moco barlow_twins --seeds 0 1 2 \\
        --out runs/compare -- --epochs 2 --labels 100
Everything after `--` goes to every `kerassl train` call; `--method-args moco="--epochs 2"`
adds options for one method (e.g. to give a method with a cheaper step the same CPU time).
Finished runs (with metrics.json) made by the same command are reused, so an interrupted
comparison continues where it stopped; a run made by a different command is redone.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from kerassl.run_dir import RunDir, open_run


def run_once(method: str, seed: int, out: Path, train_args: list[str], baseline: bool) -> dict:
    run_dir = out / f"{method}-seed{seed}"
    command = [
        "-m", "kerassl.train", method, "--seed", str(seed), "--quiet",
        "--out", str(out), "--run-name", run_dir.name, *train_args,
        *([] if baseline else ["--baseline", "none"]),
    ]  # fmt: skip
    record = out / f"{run_dir.name}.command.json"  # beside the run: the command that made it
    done = (
        RunDir(run_dir).finished and record.exists() and json.loads(record.read_text()) == command
    )
    if not done:
        if run_dir.exists():  # interrupted, or made by another command: start it again
            shutil.rmtree(run_dir)
        print("$ python", shlex.join(command), flush=True)
        subprocess.run([sys.executable, *command], check=True)
        record.write_text(json.dumps(command))
    return open_run(run_dir, finished=True).metrics


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["simclr", "moco", "barlow_twins"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument(
        "--method-args", nargs="*", default=[], metavar="METHOD=OPTIONS",
        help='extra kerassl train options for one method, e.g. moco="--epochs 2"',
    )  # fmt: skip
    parser.add_argument("train_args", nargs="*", help="options for kerassl train (after --)")
    args = parser.parse_args()
    extra = {}
    for item in args.method_args:
        method, sep, options = item.partition("=")
        if not sep or method not in args.methods:
            parser.error(f"--method-args {item!r}: expected METHOD=OPTIONS, METHOD in --methods")
        extra[method] = shlex.split(options)
    out = Path(args.out)
    rows = []
    baselines: list[float] = []
    baseline_name = None
    for index, method in enumerate(args.methods):
        train_args = [*args.train_args, *extra.get(method, [])]
        runs = [run_once(method, s, out, train_args, index == 0) for s in args.seeds]
        probes = [r["linear_probe"]["top1"] for r in runs]
        seconds = statistics.fmean(r["pretrain_seconds"] for r in runs)
        speed = statistics.fmean(r["pretrain_images_per_second"] for r in runs)
        rows.append(
            (f"{method} + linear probe", mean_std(probes), f"{seconds:.0f}", f"{speed:.0f}")
        )
        if index == 0 and "baseline" in runs[0]:
            baselines = [r["baseline"]["top1"] for r in runs]
            baseline_name = runs[0]["baseline"]["model"]
    if baselines:
        rows.append((f"supervised {baseline_name} (same labels)", mean_std(baselines), "–", "–"))
    labels = runs[0]["dataset"]["num_labeled"]
    print(f"\n{runs[0]['dataset']['name']}, {labels} labels, seeds {args.seeds}; "
          f"kerassl train {shlex.join(args.train_args)}"
          + "".join(f"; {m}: {shlex.join(o)}" for m, o in extra.items()) + "\n")  # fmt: skip
    print("| classifier | top-1 % (mean ± std) | pretraining s | images/s |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
