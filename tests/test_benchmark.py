"""`kerassl benchmark`: end to end on digits, resuming, the dry run, bad input, the tables."""

import json
import math
import re

import numpy as np
import pytest
import yaml

from kerassl.benchmark import main
from kerassl.benchmarking import definition as definitions
from kerassl.benchmarking import rerun, stages, tables
from kerassl.benchmarking.cells import EVALUATE, PRETRAIN, Cell, Progress, list_cells

TINY = {
    "title": "tiny",
    "dataset": "digits",
    "labels": [50],
    "seeds": "0-1",
    "protocols": ["linear", "knn"],
    "pretrain": {
        "epochs": 1,
        "steps_per_epoch": 3,
        "batch_size": 32,
        "max_unlabeled": 256,
        "hidden_dim": 32,
        "projection_dim": 16,
    },
    "methods": {
        "simclr": {},
        "absent": {"source": "/nonexistent/encoder.keras"},
        "supervised": None,
    },
    "baseline_epochs": 2,
    "tuning": {"max_trials": 1, "epochs": 2, "patience": 2},
}
# Pretraining, 3 method rows x 2 seeds x 2 protocols, a search, 2 baselines x 2 seeds.
CELLS = 1 + 3 * 2 * 2 + 1 + 2 * 2
SKIPPED = 2 * 2  # the cells of "absent", whose weights are not found


def write_definition(path, values=TINY):
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One tiny benchmark run in-process; its directory and what it printed."""
    from kerassl.testing.fake_run import build_fake_models

    tmp = tmp_path_factory.mktemp("bench")
    encoder, _ = build_fake_models(image_size=16, channels=1, num_classes=10)
    encoder.save(tmp / "saved.keras")
    methods = {**TINY["methods"], "saved": {"source": str(tmp / "saved.keras")}}
    definition = write_definition(tmp / "tiny.yaml", {**TINY, "methods": methods})
    out = tmp / "out"
    capture = pytest.MonkeyPatch()
    lines = []
    capture.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    try:
        assert main([definition, "--out", str(out)]) == 0
    finally:
        capture.undo()
    return definition, out, lines


def test_end_to_end_tables_one_row_per_method_with_mean_and_std(bench):
    _, out, _ = bench
    for name in ("results.csv", "results.md", "accuracy_vs_labels.png", "curves.png"):
        assert (out / name).is_file(), name
    assert (out / "augmentations" / "simclr.png").is_file()
    assert len(list((out / "cells").glob("*.json"))) == CELLS - SKIPPED
    markdown = (out / "results.md").read_text()
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", markdown, re.MULTILINE)
    linear, knn = (dict(rows[i + 1 : i + 6]) for i in (0, 6))  # a header, 5 rows each
    for table in (linear, knn):
        assert list(table) == [
            "simclr",
            "absent",
            "saved",
            "supervised cnn",
            "supervised cnn (tuned)",
        ]
        for name in ("simclr", "saved", "supervised cnn", "supervised cnn (tuned)"):
            assert re.fullmatch(r"\d+\.\d ± \d+\.\d", table[name]), table[name]
        assert table["absent"] == "skipped: weights not found"
    assert "equal steps, 1 epoch × 3 steps of 32 images" in markdown
    assert "search of 1 trial per label budget, on seed 0's split only" in markdown
    assert "mean ± std over 2 seeds" in markdown and "machine: " in markdown


def test_the_table_is_the_mean_and_std_of_the_csv_rows(bench):
    _, out, _ = bench
    import pandas as pd

    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == 2 * 2 * 2 + 2 * 2  # 2 rows x 2 protocols x 2 seeds, 2 baselines x 2 seeds
    top1 = csv[(csv.row == "simclr") & (csv.protocol == "linear")].top1.to_numpy()
    expected = f"{100 * top1.mean():.1f} ± {100 * np.std(top1, ddof=1):.1f}"
    assert f"| simclr | {expected} |" in (out / "results.md").read_text()
    cell = json.loads((out / "cells" / "evaluate.simclr.knn.50.seed1.json").read_text())
    assert len(cell["confusion"]) == 10 and cell["num_labeled"] == 50


def test_a_progress_line_per_cell(bench):
    _, _, lines = bench
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == CELLS - SKIPPED
    pattern = (
        rf"\[\d+/{CELLS}\] simclr · linear · 50 · seed 1: \d+\.\d % "
        r"\(\d+ s; elapsed \S+, (about \S+ left|done)\)"
    )
    assert any(re.fullmatch(pattern, line) for line in progress), progress
    assert progress[-1].endswith("done)")
    assert "absent: skipped: weights not found" in lines


def test_a_second_run_does_no_work(bench, monkeypatch):
    definition, out, _ = bench

    def no_work(*args, **kwargs):
        raise AssertionError("a finished benchmark ran a cell")

    monkeypatch.setattr(stages.Stages, "run", no_work)
    monkeypatch.setattr("kerassl.experiment.run", no_work)
    cells = {path: path.stat().st_mtime_ns for path in (out / "cells").iterdir()}
    assert main([definition, "--out", str(out)]) == 0
    assert {path: path.stat().st_mtime_ns for path in (out / "cells").iterdir()} == cells


def test_more_seeds_run_only_the_new_cells(bench, monkeypatch, tmp_path):
    import shutil

    definition, out, _ = bench
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    ran = []

    class Stop(Exception):
        pass

    def first(self, cell):
        ran.append(cell)
        raise Stop

    monkeypatch.setattr(stages.Stages, "run", first)
    with pytest.raises(Stop):
        main([definition, "--out", str(copy), "--seeds", "0-2"])
    assert ran == [Cell(EVALUATE, "simclr", "linear", "50", 2)]


def test_other_settings_in_an_existing_directory_are_one_line(bench, capsys):
    definition, out, _ = bench
    assert main([definition, "--out", str(out), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kerassl: error: ")
    assert "pretrain.epochs: 2 (it has 1)" in err


def test_dry_run_lists_the_cells_and_writes_nothing(bench, tmp_path, capsys):
    definition, out, _ = bench
    target = tmp_path / "new"
    assert main([definition, "--out", str(target), "--dry-run"]) == 0
    assert not target.exists()
    text = capsys.readouterr().out
    assert f"{CELLS} cells, 0 done" in text and f"[1/{CELLS}] simclr · pretraining: ~" in text
    assert "absent · linear · 50 · seed 0: skipped: weights not found" in text
    assert main([definition, "--out", str(out), "--dry-run"]) == 0
    assert f"{CELLS - SKIPPED} done" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change, argv, message",
    [
        ({}, ["--methods", "simclr,swav"], "unknown method 'swav'"),
        ({}, ["--protocols", "linear,svm"], "unknown protocol 'svm'"),
        ({}, ["--labels", "100,0"], "--labels: labels must be"),
        ({}, ["--epochs", "2", "--time-budget", "1m"], "--epochs and --time-budget exclude"),
        ({}, ["--dataset", "nope_dataset"], "unknown dataset 'nope_dataset'"),
        ({"seed": 1}, [], "unknown key seed in"),
        ({"methods": {"s": {"method": "simclr", "similarty": "dot"}}}, [], "did you mean"),
        ({"methods": {"s": {"method": "simclr", "batch_size": 1}}}, [], "--batch-size must be"),
        ({"methods": {"s": {"method": "simclr", "dataset": "mnist"}}}, [], "set by the benchmark"),
        ({"pretrain": {"batch_size": 512}}, [], "larger than the 256 unlabeled images"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, change, argv, message):
    definition = write_definition(tmp_path / "bad.yaml", definitions.merge(TINY, change))
    out = tmp_path / "out"
    assert main([definition, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kerassl: error: ") and message in err, err
    assert not out.exists()


def test_a_missing_definition_file_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "none.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "cannot read benchmark definition" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_flags_only_definition_and_cells():
    definition = definitions.resolve(
        {},
        overrides={
            "dataset": "digits",
            "methods": "simclr,moco,supervised",
            "labels": "100,10/class,0.1",
            "seeds": "0-2",
            "protocols": "linear,knn,finetune",
            "time_budget": "5m",
        },
    )
    assert [row.name for row in definition.methods] == ["simclr", "moco"]
    assert [b.title for b in definition.baselines] == ["supervised cnn", "supervised cnn (tuned)"]
    assert definition.train_config(definition.methods[1], "b/runs").time_budget == "5m"
    cells = list_cells(definition)
    assert len(cells) == 2 * (1 + 3 * 3 * 3) + 3 * 3 + (3 + 3 * 3)
    assert (
        cells[0] == Cell(PRETRAIN, "simclr") and cells[1].key == "evaluate.simclr.linear.100.seed0"
    )
    assert Cell(EVALUATE, "moco", "knn", "10/class", 2).key == "evaluate.moco.knn.10perclass.seed2"


def test_the_budget_flags_replace_every_rows_budget():
    values = {"pretrain": {"epochs": 3}, "methods": {"simclr": {"time_budget": "1m"}}}
    definition = definitions.resolve(values, overrides={"epochs": 2})
    config = definition.train_config(definition.methods[0], "runs")
    assert (config.epochs, config.time_budget) == (2, None)


def test_changes_name_settings_and_allow_other_axes():
    old = definitions.resolve(TINY, source="a").record()
    more = definitions.merge(TINY, {"seeds": "0-4", "labels": [50, "10/class"]})
    assert rerun.changes(old, definitions.resolve(more).record()) == []
    fewer = {**TINY, "methods": {"simclr": {}}, "protocols": ["knn"]}
    assert rerun.changes(old, definitions.resolve(fewer).record()) == []
    other = definitions.merge(TINY, {"methods": {"simclr": {"temperature": 0.5}}})
    assert rerun.changes(old, definitions.resolve(other).record()) == [
        "methods.simclr.temperature: 0.5 (it has (not set))"
    ]


def test_options_of_a_protocol_no_cell_ran_may_change():
    old = definitions.resolve({**TINY, "protocols": ["linear", "distill"]}).record()
    del old["protocol_options"]["consistency_steps"]  # a directory older than the option
    newer = {**TINY, "protocols": ["linear", "distill", "consistency"]}
    newer["protocol_options"] = {"consistency_steps": 20}
    assert rerun.changes(old, definitions.resolve(newer).record()) == []
    distill = {**TINY, "protocol_options": {"distill_pool": 64}}
    assert rerun.changes(old, definitions.resolve(distill).record()) == [
        "protocol_options.distill_pool: 64 (it has 20000)"
    ]


def test_remaining_time_is_the_mean_of_finished_cells_of_the_same_kind():
    cells = [Cell(EVALUATE, "simclr", "linear", "100", s) for s in range(4)]
    cells += [Cell(EVALUATE, "simclr", "knn", "100", s) for s in range(2)]
    now = [0.0]
    progress = Progress(cells, estimate=lambda cell: 7.0, clock=lambda: now[0])
    assert progress.remaining() == 6 * 7.0
    progress.finished(cells[0], 10.0)
    progress.finished(cells[1], 20.0)
    now[0] = 190.0
    assert progress.remaining() == 2 * 15.0 + 2 * 7.0
    line = progress.line(cells[1], "72.1 %", 20.0)
    assert (
        line == "[2/6] simclr · linear · 100 · seed 1: 72.1 % (20 s; elapsed 3m10s, about 44s left)"
    )


def test_the_pair_matrix_and_missing_cells():
    values = {
        "dataset": "digits",
        "labels": [100],
        "seeds": "0-1",
        "protocols": ["1nn"],
        "methods": {"simclr": {}},
        "augment_pairs": {"ops": ["crop", "blur"], "protocol": "1nn"},
    }
    definition = definitions.resolve(values)
    names = [row.name for row in definition.methods]
    assert names == ["simclr", "simclr-crop", "simclr-crop+blur", "simclr-blur"]
    assert definition.methods[2].settings["augment"] == "crop+blur"
    rows = [
        {"row": "simclr-crop+blur", "protocol": "1nn", "labels": "100", "seed": s, "top1": v}
        for s, v in enumerate((0.5, 0.7))
    ]
    rows.append({"row": "simclr-crop", "protocol": "1nn", "labels": "100", "seed": 0, "top1": 0.4})
    text = tables.markdown(definition, rows, facts={})
    spread = 100 * np.std([0.5, 0.7], ddof=1)
    assert "| simclr-crop | 40.0 (n=1) |" in text  # the rows' table: a seed missing
    assert f"| crop | 40.0 | 60.0 ± {spread:.1f} |" in text  # the matrix (n in its title)
    assert f"| blur | 60.0 ± {spread:.1f} | – |" in text
    assert not math.isnan(spread)


def test_the_shipped_benchmark_definitions_are_valid():
    """benchmarks/label_budgets.yaml and the recipes' benchmarks resolve (rows, budgets,
    baselines): a definition the README's commands run cannot rot unnoticed."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    paths = [root / "label_budgets.yaml", *sorted((root / "recipes").glob("benchmark_*.yaml"))]
    assert len(paths) >= 2
    for path in paths:
        definition = definitions.resolve(definitions.read_file(str(path)), source=str(path))
        assert definition.methods and definition.baselines, path
