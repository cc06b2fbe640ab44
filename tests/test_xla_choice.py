"""`--xla auto` decided by measuring (`kerassl.xla_choice`): the faster form kept, the
decision cached per key, on/off forced, short and deterministic runs unmeasured, a
continued run keeping its recorded choice, and config.json saying what was chosen."""

import dataclasses
import json

import pytest

from kerassl import experiment, pretraining
from kerassl import xla_choice as xc
from kerassl.pretraining import StepTiming

CPU = {"model": "Test CPU", "flags": "0123", "cores": 2, "machine": "x86_64"}


def _key(**changes):
    values = dict(
        method="simclr",
        encoder="cnn",
        head="mlp",
        preset="fashion",
        input_shape=(28, 28, 1),
        batch_size=256,
        replicas=1,
        device="CPU",
        precision="float32",
        tensorflow="2.21.0",
        cpu=CPU,
    )
    return xc.cache_key(**(values | changes))


class FakeTimer:
    """Seconds per step of each form (`True`: XLA); records which forms were timed."""

    def __init__(self, xla: float, plain: float):
        self.seconds = {True: xla, False: plain}
        self.timed: list[bool] = []

    def __call__(self, on: bool) -> StepTiming:
        self.timed.append(on)
        return StepTiming(self.seconds[on], startup=5.0, first_epoch_end=0, epoch_end=0, spent=9)


def _choose(timer, cache_dir, setting="auto", key=None, **options):
    options = {"replicas": 1, "gpu": False, "steps": 1000} | options
    return xc.choose(setting, key=key or _key(), cache_dir=cache_dir, time_form=timer, **options)


@pytest.mark.parametrize("xla, plain, chosen", [(0.5, 0.8, True), (0.9, 0.7, False)])
def test_the_faster_form_is_chosen_and_recorded(tmp_path, xla, plain, chosen):
    timer = FakeTimer(xla=xla, plain=plain)
    choice = _choose(timer, tmp_path)
    assert sorted(timer.timed) == [False, True]
    assert (choice.jit_compile, choice.how) == (chosen, "measured")
    assert choice.to_json() == {
        "jit_compile": chosen,
        "how": "measured",
        "step_seconds": {"xla": xla, "plain": plain},
    }
    cache = json.loads((tmp_path / "kerassl" / "xla.json").read_text())
    [entry] = cache.values()
    assert entry["jit_compile"] is chosen and entry["key"]["batch_size"] == 256


def test_the_cached_decision_is_reused_without_timing(tmp_path):
    first = _choose(FakeTimer(xla=0.5, plain=0.8), tmp_path)
    timer = FakeTimer(xla=9.0, plain=0.1)  # would choose plain if it timed
    again = _choose(timer, tmp_path)
    assert timer.timed == []
    assert (again.jit_compile, again.how) == (True, "cached")
    assert again.step_seconds == first.step_seconds


@pytest.mark.parametrize(
    "change", [{"batch_size": 128}, {"method": "moco"}, {"tensorflow": "2.22.0"}, {"cpu": {}}]
)
def test_another_key_is_timed_again(tmp_path, change):
    _choose(FakeTimer(xla=0.5, plain=0.8), tmp_path)
    timer = FakeTimer(xla=0.9, plain=0.1)
    choice = _choose(timer, tmp_path, key=_key(**change))
    assert sorted(timer.timed) == [False, True] and choice.jit_compile is False
    assert len(json.loads((tmp_path / "kerassl" / "xla.json").read_text())) == 2
    assert _choose(FakeTimer(0.9, 0.1), tmp_path).how == "cached"  # the first key kept


@pytest.mark.parametrize(
    "setting, options, expected",
    [
        (True, {}, (True, "forced")),
        (False, {}, (False, "forced")),
        (True, {"replicas": 2}, (False, "several replicas")),
        ("auto", {"replicas": 2}, (False, "several replicas")),
        ("auto", {"gpu": True}, (True, "GPU")),
        ("auto", {"deterministic": True}, (False, "deterministic")),
        ("auto", {"steps": xc.SHORT_RUN_STEPS - 1}, (False, "short run")),
        ("auto", {"steps": None, "budget_seconds": 60.0}, (False, "short run")),
        ("auto", {"recorded": {"jit_compile": True, "how": "measured"}}, (True, "measured")),
        (True, {"recorded": {"jit_compile": False}}, (True, "forced")),
    ],
)
def test_choices_made_without_timing(tmp_path, setting, options, expected):
    timer = FakeTimer(xla=0.1, plain=0.9)
    choice = _choose(timer, tmp_path, setting, **options)
    assert (choice.jit_compile, choice.how) == expected
    assert timer.timed == [] and not (tmp_path / "kerassl").exists()


def test_a_short_run_does_not_read_the_cache(tmp_path):
    _choose(FakeTimer(xla=0.1, plain=0.9), tmp_path)  # cached: XLA
    choice = _choose(FakeTimer(0.1, 0.9), tmp_path, steps=10)
    assert (choice.jit_compile, choice.how) == (False, "short run")
    assert _choose(FakeTimer(0.1, 0.9), tmp_path, steps=None, budget_seconds=1200).how == "cached"


def test_an_unreadable_cache_is_measured_again_and_rewritten(tmp_path):
    path = tmp_path / "kerassl" / "xla.json"
    path.parent.mkdir()
    path.write_text("{not json")
    timer = FakeTimer(xla=0.1, plain=0.9)
    assert _choose(timer, tmp_path).how == "measured" and len(timer.timed) == 2
    assert len(json.loads(path.read_text())) == 1


def test_the_cpu_signature_names_model_flags_and_cores():
    cpu = xc.cpu_signature()
    assert set(cpu) == {"model", "flags", "cores", "machine"}
    assert cpu["model"] and len(cpu["flags"]) == 16 and cpu["cores"] >= 1


@pytest.fixture(scope="module")
def plan():
    from kerassl.config import TrainConfig
    from kerassl.plan import prepare

    config = TrainConfig(dataset="digits", batch_size=32, labels="50", epochs=10, knn_every=0)
    return prepare(config)  # 44 steps a pass: 440 steps, long enough to measure


def test_a_plan_times_each_form_with_measure_step_seconds(plan, tmp_path, monkeypatch):
    timed = []

    def measure(plan, strategy):
        timed.append(plan.jit_compile)
        return StepTiming(0.2 if plan.jit_compile else 0.3, 4.0, 0.0, 0.0, spent=7.0)

    monkeypatch.setattr(pretraining, "measure_step_seconds", measure)
    choice = xc.choose_for_plan(plan, cache_dir=tmp_path)
    assert sorted(timed) == [False, True] and choice.jit_compile is True
    [entry] = json.loads((tmp_path / "kerassl" / "xla.json").read_text()).values()
    assert entry["key"]["method"] == "simclr"
    assert entry["key"]["input_shape"] == list(plan.data.image_shape)
    # A --time-budget plans with the chosen form's timing, both measurements spent.
    timing = experiment._chosen_timing(choice)
    assert (timing.step, timing.spent) == (0.2, 14.0)
    config = dataclasses.replace(plan.config, time_budget="60s")
    budget_plan = plan.with_config(config).with_jit_compile(True)
    budgeted, budget = experiment.budgeted(budget_plan, None, timing=timing)
    assert len(timed) == 2 and budget["measurement_seconds"] == 14.0
    assert budgeted.jit_compile is True  # the choice survives re-planning for the budget


@pytest.mark.parametrize(
    "header, expected", [({"xla": {"jit_compile": True, "how": "measured"}}, True), ({}, False)]
)
def test_a_continued_run_keeps_its_recorded_choice(plan, tmp_path, monkeypatch, header, expected):
    """Recorded: reused; not recorded (started before the choice was): the fixed rule."""

    def never(*_):
        raise AssertionError("a continued run must not measure again")

    monkeypatch.setattr(pretraining, "measure_step_seconds", never)
    _, choice, _ = experiment.settle(plan, None, recorded=header)
    assert choice.jit_compile is expected


def test_config_json_says_what_was_chosen_and_a_rerun_keeps_it(tmp_path, monkeypatch):
    """`run` up to its stages (replaced by a recorder): a short run's config.json, then
    the same command on the unfinished directory, whose recorded choice it keeps."""
    from kerassl.config import TrainConfig

    planned = []
    monkeypatch.setattr(experiment, "_run_stages", lambda plan, *_: planned.append(plan) or {})
    config = TrainConfig(dataset="digits", labels="50", batch_size=32, epochs=1, knn_every=0,
                         baseline="none", out=str(tmp_path), run_name="run")  # fmt: skip
    experiment.run(config)
    path = tmp_path / "run" / "config.json"
    header = json.loads(path.read_text())
    assert header["xla"] == {"jit_compile": False, "how": "short run"}
    assert planned[-1].jit_compile is False
    header["xla"] = {"jit_compile": True, "how": "measured", "step_seconds": {"xla": 1, "plain": 2}}
    path.write_text(json.dumps(header))
    experiment.run(config)  # unfinished: continued
    assert planned[-1].jit_compile is True
