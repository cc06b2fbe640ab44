"""`--time-budget`: the step time measured as `fit` runs it, the step count from it (and
the rest of what the run spends), the schedule ending with the last step, and a continued
run keeping its recorded step count."""

import dataclasses
import itertools
import math

import numpy as np
import pytest

from kerassl import experiment, pretraining
from kerassl.config import TrainConfig
from kerassl.plan import prepare
from kerassl.pretraining import StepTiming, budget_steps


@pytest.fixture(scope="module")
def plan():
    config = TrainConfig(
        dataset="digits", batch_size=32, labels="50", time_budget="60s", knn_every=0
    )
    return prepare(config)


def test_the_step_time_is_measured_after_compilation(plan):
    timing = pretraining.measure_step_seconds(plan, steps=2)
    assert 0 < timing.step < timing.startup < timing.spent  # tracing costs most
    assert timing.epoch_end >= 0 and timing.first_epoch_end >= 0


def test_the_measurement_reads_its_clock_at_the_ends_of_fit_steps_and_epochs(plan):
    """A scripted clock: 3 s of startup, 0.5 s steps, 2 s for the first epoch's end and
    1 s for the second's, in a `fit` with the run's callbacks (kNN monitor included)."""
    knn_plan = plan.with_config(dataclasses.replace(plan.config, knn_every=1))
    ticks = [0.0, 3.5, 4.0, 4.5, 5.0, 7.0, 7.5, 8.0, 8.5, 9.0, 10.0, 10.5]
    clock = iter(ticks).__next__  # one more read than scripted fails the test
    timing = pretraining.measure_step_seconds(knn_plan, steps=4, clock=clock)
    assert timing == StepTiming(
        step=0.5, startup=3.0, first_epoch_end=2.0, epoch_end=1.0, spent=10.5
    )


def _steps_by_search(seconds, timing, per_pass):
    """The largest step count whose planned cost fits the budget, found by trying them."""
    best = 1
    for steps in range(1, 10_000):
        epochs = math.ceil(steps / per_pass)  # as Plan.with_steps plans them
        cost = (
            timing.spent
            + timing.startup
            + steps * timing.step
            + timing.first_epoch_end
            + (epochs - 1) * timing.epoch_end
        )
        if cost <= seconds + 1e-9:
            best = steps
    return best


@pytest.mark.parametrize(
    "step, first_end, end, per_pass",
    list(itertools.product([0.1, 0.37], [0.0, 2.5], [0.0, 0.8], [7, 44, 5000])),
)
def test_budget_steps_fit_the_budget(step, first_end, end, per_pass):
    timing = StepTiming(step=step, startup=4.0, first_epoch_end=first_end, epoch_end=end, spent=6.0)
    assert budget_steps(60.0, timing, per_pass) == _steps_by_search(60.0, timing, per_pass)


def test_without_epoch_costs_steps_are_the_budget_over_the_step_time():
    timing = StepTiming(step=0.1, startup=4.0, first_epoch_end=0.0, epoch_end=0.0, spent=6.0)
    assert budget_steps(60.0, timing, 44) == math.floor((60 - 6 - 4) / 0.1) == 500
    assert budget_steps(5.0, timing, 44) == 1  # a budget the measurement used up: one step


def test_the_budget_sets_steps_epochs_and_schedule(plan, tmp_path, monkeypatch):
    timing = StepTiming(step=0.1, startup=4.0, first_epoch_end=0.0, epoch_end=0.0, spent=6.0)
    monkeypatch.setattr(experiment, "measure_step_seconds", lambda plan, strategy: timing)
    budgeted, budget = experiment.budgeted(plan, None)
    assert budget["steps"] == 500 and budget["step_seconds"] == 0.1
    assert budget["measurement_seconds"] == 6.0 and budget["startup_seconds"] == 4.0
    per_pass = plan.steps_per_epoch  # 1437 images // 32
    assert budgeted.config.epochs == -(-500 // per_pass)  # ceil: an epoch is at most a pass
    assert budgeted.total_steps == budgeted.config.epochs * (500 // budgeted.config.epochs)
    assert (
        budgeted.steps_per_epoch <= per_pass and budgeted.total_steps > 500 - budgeted.config.epochs
    )
    assert plan.config.epochs == 10  # the given settings are left alone


def test_the_schedule_ends_at_zero_on_the_budgets_last_step(tmp_path, monkeypatch):
    """6 s at 0.5 s a step = 12 steps, in 3 epochs of 4 (a pass is 5 steps here); the
    learning rate is still decaying at the last step and 0 right after it."""
    config = TrainConfig(
        dataset="digits",
        batch_size=32,
        labels="50",
        time_budget="6s",
        steps_per_epoch=5,
        knn_every=0,
        warmup_epochs=1,
    )
    timing = StepTiming(step=0.5, startup=0.0, first_epoch_end=0.0, epoch_end=0.0, spent=0.0)
    monkeypatch.setattr(experiment, "measure_step_seconds", lambda plan, strategy: timing)
    budgeted, budget = experiment.budgeted(prepare(config), None)
    assert budget["steps"] == 12
    assert (budgeted.config.epochs, budgeted.steps_per_epoch) == (3, 4)
    model, state = pretraining.pretrain_with_state(budgeted, verbose=0)
    steps = int(model.optimizer.iterations.numpy())
    assert steps == state.step == budgeted.total_steps == 12
    schedule = model.optimizer._learning_rate  # the WarmupCosine (the property reads it)
    assert schedule.total_steps == 12 and schedule.warmup_steps == 4
    last, after = np.asarray(schedule(steps - 1)), np.asarray(schedule(steps))
    assert last > 0 and after == 0


def test_a_continued_run_keeps_its_recorded_step_count(plan, tmp_path, monkeypatch):
    def never(*_):
        raise AssertionError("a continued run must not measure again")

    monkeypatch.setattr(experiment, "measure_step_seconds", never)
    recorded = {"seconds": 60.0, "steps": 90}
    budgeted, budget = experiment.budgeted(plan, None, recorded)
    assert budget == recorded
    assert (budgeted.config.epochs, budgeted.steps_per_epoch) == (3, 30)  # 44 steps a pass


def test_a_malformed_budget_is_one_line_before_tensorflow(capsys):
    from kerassl.train import main

    assert main(["simclr", "--dataset", "digits", "--time-budget", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("kerassl: error: --time-budget must be a duration such as 90s, 5m or 1h; got 5")
