"""How closely `kerassl train --time-budget` keeps its wall-clock budget on this machine.

    python benchmarks/time_budget.py                  # 1m and 2m on Fashion-MNIST
    python benchmarks/time_budget.py --budgets 3m --dataset digits

Each budget runs `kerassl train simclr --labels 100 --time-budget B --quiet --baseline none`
in a fresh process (in-process `kerassl.train.main`, timed from outside the library): the
wall-clock from the start of the step-time measurement to the end of pretraining is what the
budget promises. Prints, per budget, the steps planned, the step time the measurement
planned with, the step time `fit` actually ran (mean interval between step ends after the
first, epoch ends included) and the overrun. The machine may be shared: the NumPy matmul
GFLOP/s printed first says how busy it was.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kerassl.benchmarking.machine import numpy_matmul_gflops


def worker(budget: str, dataset: str, out: str) -> dict:
    """Runs one budgeted training in this process; returns its figures."""
    from kerassl import checkpoint, experiment
    from kerassl.train import main

    marks: dict = {"step_ends": []}
    measure, pretrain = experiment.measure_step_seconds, experiment.pretrain_with_state
    batch_end = checkpoint.Checkpointer.on_train_batch_end

    def timed_measure(*args, **kwargs):
        marks["started"] = time.monotonic()
        try:
            return measure(*args, **kwargs)
        finally:
            marks["measured"] = time.monotonic()

    def timed_pretrain(*args, **kwargs):
        marks["pretraining"] = True
        try:
            return pretrain(*args, **kwargs)
        finally:
            marks["ended"], marks["pretraining"] = time.monotonic(), False

    def timed_batch_end(self, batch, logs=None):
        batch_end(self, batch, logs)
        if marks.get("pretraining"):  # the run's own steps, not the measurement's
            marks["step_ends"].append(time.monotonic())

    experiment.measure_step_seconds = timed_measure
    experiment.pretrain_with_state = timed_pretrain
    checkpoint.Checkpointer.on_train_batch_end = timed_batch_end
    argv = ["simclr", "--dataset", dataset, "--labels", "100", "--time-budget", budget]
    argv += ["--quiet", "--baseline", "none", "--out", out, "--run-name", "run"]
    if main(argv) != 0:
        raise SystemExit(f"kerassl train {' '.join(argv)} failed")
    recorded = json.loads(Path(out, "run", "config.json").read_text())["time_budget"]
    ends = marks["step_ends"]
    return {
        "budget": recorded,
        "wall_seconds": marks["ended"] - marks["started"],
        "fit_step_seconds": (ends[-1] - ends[0]) / max(len(ends) - 1, 1),
        # Where the wall-clock went: the measurement; from its end to the run's first step
        # end (header, model build, fit set-up, tracing); the steps after it; the rest.
        "parts": [
            marks["measured"] - marks["started"],
            ends[0] - marks["measured"],
            ends[-1] - ends[0],
            marks["ended"] - ends[-1],
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="1m,2m", help="comma-separated (default 1m,2m)")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--worker", metavar="BUDGET", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.dataset, args.out)))
        return
    print(
        f"numpy float32 matmul 2048²: {numpy_matmul_gflops():.0f} GFLOP/s; {args.dataset}, SimCLR"
    )
    print("budget  steps  measured s/step  in-fit s/step  wall s   overrun")
    for budget in args.budgets.split(","):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, __file__, "--worker", budget, "--out", out]
            command += ["--dataset", args.dataset]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        recorded, wall = result["budget"], result["wall_seconds"]
        print(
            f"{budget:>6}  {recorded['steps']:5d}  {recorded['step_seconds']:15.3f}  "
            f"{result['fit_step_seconds']:13.3f}  {wall:6.1f}  "
            f"{100 * (wall / recorded['seconds'] - 1):+7.1f} %",
            flush=True,
        )
        parts = ", ".join(f"{s:.1f}" for s in result["parts"])
        print(f"        seconds of measurement, first step, other steps, end: {parts}")
        print(f"        recorded: {json.dumps(recorded)}", flush=True)


if __name__ == "__main__":
    main()
