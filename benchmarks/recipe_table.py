"""One table of recipe searches: the best trial of each `kerassl tune` search under a folder.

Each search (`python -m kerassl.tune --config benchmarks/recipes/search_5min.yaml METHOD
--out DIR/METHOD`) scores its trials on a development split of the training images; this
prints, per search, the best trial's score and settings, the spread of its trials, and the
pretraining steps its `--time-budget` held (the trial's `budget.json`).

Usage:
    python benchmarks/recipe_table.py bench/recipes-5min
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

NOT_SETTINGS = {"trial", "status", "val_accuracy", "seconds"}


def search_row(search: Path) -> dict | None:
    """The best trial of the finished search in `search`, or None."""
    results = search / "results.csv"
    if not results.exists():
        return None
    table = pd.read_csv(results)
    done = table[table["status"] == "COMPLETED"]
    if done.empty:
        return None
    best = done.loc[done["val_accuracy"].idxmax()]
    budget = search / "tuner" / f"trial_{int(best['trial'])}" / "budget.json"
    steps = json.loads(budget.read_text())["steps"] if budget.exists() else None
    settings = {
        name: value for name, value in best.items() if name not in NOT_SETTINGS and pd.notna(value)
    }
    return {
        "method": search.name,
        "best": best["val_accuracy"],
        "median": done["val_accuracy"].median(),
        "worst": done["val_accuracy"].min(),
        "trials": len(done),
        "steps": steps,
        "settings": ", ".join(f"{k} {_short(v)}" for k, v in settings.items()),
    }


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of kerassl tune --out folders")
    args = parser.parse_args(argv)
    rows = [row for path in sorted(args.folder.iterdir()) if (row := search_row(path))]
    if not rows:
        parser.error(f"no finished search under {args.folder}")
    rows.sort(key=lambda row: -row["best"])
    print("| method | best dev top-1 | median | worst | trials | steps | best settings |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {100 * r['best']:.1f} | {100 * r['median']:.1f} "
            f"| {100 * r['worst']:.1f} | {r['trials']} | {r['steps'] or '–'} | {r['settings']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
