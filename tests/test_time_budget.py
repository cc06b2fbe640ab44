"""`--time-budget`: the step count from a measured step time, kept by a continued run."""

import json
from pathlib import Path

import pytest

from kerassl import experiment, pretraining
from kerassl.config import TrainConfig
from kerassl.plan import prepare
from kerassl.resume import CONTINUE, START, Decision
from kerassl.run_dir import RunDir


@pytest.fixture(scope="module")
def plan():
    config = TrainConfig(
        dataset="digits", batch_size=32, labels="50", time_budget="60s", knn_every=0
    )
    return prepare(config)


def test_the_step_time_is_measured_after_compilation(plan):
    step, compile_seconds, spent = pretraining.measure_step_seconds(plan, steps=2)
    assert 0 < step < compile_seconds < spent  # the first (tracing) step costs most


def test_the_budget_sets_steps_epochs_and_schedule(plan, tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "measure_step_seconds", lambda plan, strategy: (0.1, 4, 6))
    run_dir = RunDir(tmp_path)
    budgeted, budget = experiment._budgeted(plan, run_dir, Decision(tmp_path, START), None)
    assert budget["steps"] == int((60 - 6 - 4) / 0.1) == 500
    per_pass = plan.steps_per_epoch  # 1437 images // 32
    assert budgeted.config.epochs == -(-500 // per_pass)  # ceil: an epoch is at most a pass
    assert budgeted.total_steps == budgeted.config.epochs * (500 // budgeted.config.epochs)
    assert (
        budgeted.steps_per_epoch <= per_pass and budgeted.total_steps > 500 - budgeted.config.epochs
    )
    assert plan.config.epochs == 10  # the given settings are left alone


def test_a_continued_run_keeps_its_recorded_step_count(plan, tmp_path, monkeypatch):
    def never(*_):
        raise AssertionError("a continued run must not measure again")

    monkeypatch.setattr(experiment, "measure_step_seconds", never)
    recorded = {"seconds": 60.0, "steps": 90}
    Path(tmp_path, "config.json").write_text(json.dumps({"time_budget": recorded}))
    decision = Decision(tmp_path, CONTINUE)
    budgeted, budget = experiment._budgeted(plan, RunDir(tmp_path), decision, None)
    assert budget == recorded
    assert (budgeted.config.epochs, budgeted.steps_per_epoch) == (3, 30)  # 44 steps a pass


def test_a_malformed_budget_is_one_line_before_tensorflow(capsys):
    from kerassl.train import main

    assert main(["simclr", "--dataset", "digits", "--time-budget", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("kerassl: error: --time-budget must be a duration such as 90s, 5m or 1h; got 5")
