"""How much the linear probe's choice of C costs: test top-1 of every C, per finished run.

For each run dir (made by `kerassl train`) the frozen encoder embeds the run's labeled
examples and the test split; for every C of the probe's grid the script prints the
cross-validation accuracy on the labels (one 5-fold split, and the repeated folds the probe
uses) and the test top-1 of the probe fitted with that C. The last lines compare the test
top-1 of the C each rule picks with the best C on test — a ceiling no rule can use, since
it looks at the test split.

Usage:
    python benchmarks/probe_c.py runs/compare/*-seed*
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold, cross_val_score

from kerassl.evaluation.features import extract_features
from kerassl.evaluation.probes import C_GRID, _probe_pipeline, choose_c
from kerassl.run_dir import open_run


def sweep(run_dir: Path, cache: dict) -> dict:
    run = open_run(run_dir)
    key = (run.dataset, run.config.get("data_dir"), run.image_size)
    if key not in cache:
        cache[key] = run.load_data()
    data = cache[key]
    encoder = run.load("encoder")
    labeled = run.split().all_labeled  # what the run's probe trained on
    # float64, as `linear_probe` fits: the CV scores of close Cs can tie differently in float32.
    x = extract_features(encoder, data.x_train[labeled]).astype(np.float64)
    x_test = extract_features(encoder, data.x_test).astype(np.float64)
    y = data.y_train[labeled]
    one_split = StratifiedKFold(5, shuffle=True, random_state=run.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        single = [
            cross_val_score(_probe_pipeline(c, 1000), x, y, cv=one_split).mean() for c in C_GRID
        ]
        repeated_c, _, folds, repeats = choose_c(x, y, seed=run.seed)
        test = [_probe_pipeline(c, 1000).fit(x, y).score(x_test, data.y_test) for c in C_GRID]
    print(f"\n{run_dir.name}: {len(y)} labels, {folds} folds x {repeats} repeats")
    print("C           " + "".join(f"{c:>8g}" for c in C_GRID))
    print("5-fold CV   " + "".join(f"{100 * s:8.1f}" for s in single))
    print("test top-1  " + "".join(f"{100 * s:8.1f}" for s in test))
    single_c = C_GRID[int(np.argmax(single))]  # first maximum: the smaller C
    print(f"C picked: one 5-fold split {single_c:g}, repeated folds {repeated_c:g}", flush=True)
    return {
        "one 5-fold split": test[C_GRID.index(single_c)],
        "repeated folds (the probe)": test[C_GRID.index(repeated_c)],
        "best C on test (ceiling)": max(test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run dirs with encoder.keras")
    args = parser.parse_args()
    cache: dict = {}
    results = [sweep(run_dir, cache) for run_dir in args.runs]
    print(f"\nC chosen by -> test top-1 over {len(results)} runs: mean, worst loss to the ceiling")
    ceiling = [r["best C on test (ceiling)"] for r in results]
    for rule in results[0]:
        values = [r[rule] for r in results]
        worst = max(best - v for best, v in zip(ceiling, values, strict=True))
        print(f"  {rule:34s} {100 * statistics.fmean(values):5.1f} %   {100 * worst:4.1f} pts")


if __name__ == "__main__":
    main()
