"""`python -m kerassl.tune`: searches on digits, resuming, the test-split guarantee,
InceptionV3 on a mocked Stanford Dogs, SimCLR tuning, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kerassl import supervised, tune
from kerassl.data.registry import load_dataset
from kerassl.tuning.search import SearchConfig

REPO = Path(__file__).resolve().parents[1]
# A tiny, fast CNN search on digits (16 px): 50 labels, 20 of them for validation.
TINY = ["--dataset", "digits", "--labels", "50", "--validation", "0.4", "--epochs", "2"]
TINY_SPACE = """
space:
  base_filters: [8]
  convs_per_block: 1
  dense_units: [0, 32]
  batch_size: 16
"""


def _tiny_yaml(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"model: cnn\nseed: 0\n{TINY_SPACE}{extra}")
    return str(path)


@pytest.fixture
def trainings(monkeypatch):
    """Records the arrays of every supervised training (trials go through this function)."""
    calls = []
    real = supervised.train_classifier

    def spy(model, x, y, validation=None, **kwargs):
        calls.append({"x": x, "y": y, "validation": validation})
        if getattr(spy, "interrupt_at", None) == len(calls):
            raise KeyboardInterrupt
        return real(model, x, y, validation=validation, **kwargs)

    monkeypatch.setattr(supervised, "train_classifier", spy)
    spy.calls = calls
    return spy


def _trial_json(out: Path, trial: str) -> dict:
    return json.loads((out / "tuner" / f"trial_{trial}" / "trial.json").read_text())


def test_two_trial_search_never_sees_the_test_split(tmp_path, capsys, monkeypatch, trainings):
    data = load_dataset("digits")
    # Poisoned test images: noise that matches no training image.
    data.x_test = np.random.default_rng(7).integers(0, 256, data.x_test.shape, np.uint8)
    monkeypatch.setattr(tune, "load_dataset", lambda *args, **kwargs: data)
    events = []
    real_evaluate = supervised.evaluate_classifier

    def evaluate_spy(model, x, y, **kwargs):
        events.append(("evaluate", x is data.x_test, len(trainings.calls)))
        return real_evaluate(model, x, y, **kwargs)

    monkeypatch.setattr(supervised, "evaluate_classifier", evaluate_spy)
    out = tmp_path / "out"
    code = tune.main([_tiny_yaml(tmp_path), *TINY, "--max-trials", "2", "--out", str(out)])
    assert code == 0

    # Each trial trained on the 30 labeled examples and validated on the 20 held out, all
    # training images; no test image reached a trial.
    assert len(trainings.calls) == 2
    test_rows = {row.tobytes() for row in data.x_test}
    train_rows = {row.tobytes() for row in data.x_train}
    for call in trainings.calls:
        assert len(call["x"]) == 30 and len(call["validation"][0]) == 20
        rows = [row.tobytes() for images in (call["x"], call["validation"][0]) for row in images]
        assert not any(row in test_rows for row in rows)
        assert all(row in train_rows for row in rows)
    # The test split is scored once, by the best model, after both trials finished.
    assert events == [("evaluate", True, 2)]

    table = pd.read_csv(out / "results.csv")
    assert table["trial"].tolist() == [0, 1]
    assert {"learning_rate", "dense_units", "val_accuracy"} <= set(table.columns)
    assert (table["status"] == "COMPLETED").all() and table["val_accuracy"].between(0, 1).all()
    best = json.loads((out / "best_hyperparameters.json").read_text())
    assert best["val_accuracy"] == pytest.approx(table["val_accuracy"].max(), abs=1e-4)
    test = json.loads((out / "test_metrics.json").read_text())
    assert set(test) == {"top1", "top5", "num_test", "val_accuracy"}
    assert test["top1"] <= 0.3  # chance level on noise: it really scored the poisoned split
    assert (out / "best_model.keras").exists()
    printed = capsys.readouterr().out
    assert "| trial | status |" in printed and "best hyperparameters:" in printed


def test_rerun_continues_without_redoing_finished_trials(tmp_path, capsys, trainings):
    out = tmp_path / "out"
    args = [_tiny_yaml(tmp_path), *TINY, "--out", str(out)]
    assert tune.main([*args, "--max-trials", "1"]) == 0
    first = _trial_json(out, "0")
    assert len(trainings.calls) == 1 and first["status"] == "COMPLETED"
    assert tune.main([*args, "--max-trials", "2"]) == 0
    assert len(trainings.calls) == 2  # only the new trial trained
    assert _trial_json(out, "0") == first
    assert tune.main([*args, "--max-trials", "2"]) == 0
    assert len(trainings.calls) == 2  # a finished search trains nothing
    assert pd.read_csv(out / "results.csv")["trial"].tolist() == [0, 1]
    # Other settings in the same folder are refused rather than mixed in.
    capsys.readouterr()
    assert tune.main([*args, "--max-trials", "2", "--seed", "1"]) == 2
    assert "other seed" in capsys.readouterr().err


def test_interrupted_search_resumes_at_the_interrupted_trial(tmp_path, capsys, trainings):
    out = tmp_path / "out"
    args = [_tiny_yaml(tmp_path), *TINY, "--out", str(out), "--max-trials", "2"]
    trainings.interrupt_at = 2  # Ctrl-C while trial 1 trains
    assert tune.main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    finished = _trial_json(out, "0")
    assert finished["status"] == "COMPLETED"
    trainings.interrupt_at = None
    trainings.calls.clear()
    assert tune.main(args) == 0
    assert len(trainings.calls) == 1  # trial 1 re-run from scratch; trial 0 kept
    assert _trial_json(out, "0") == finished
    assert pd.read_csv(out / "results.csv")["status"].tolist() == ["COMPLETED"] * 2


def test_inceptionv3_search_on_mocked_stanford_dogs(tmp_path):
    import tensorflow_datasets as tfds

    out = tmp_path / "dogs"
    space = "space:\n  dense1: [16]\n  dense2: [0]\n  batch_size: [64]\n"
    path = tmp_path / "dogs.yaml"
    path.write_text(f"model: inceptionv3\ndataset: stanford_dogs\nweights: none\n{space}")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=150):
        code = tune.main(
            [str(path), "--labels", "1.0", "--validation", "0.5", "--image-size", "24",
             "--max-trials", "1", "--epochs", "1", "--out", str(out)]
        )  # fmt: skip
    assert code == 0
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["num_test"] == 150 and "top5" in test
    best = json.loads((out / "best_hyperparameters.json").read_text())
    assert best["dense1"] == 16 and best["flip"] is True  # natural images are flipped


def test_simclr_search_objective_is_validation_probe_accuracy(tmp_path, monkeypatch):
    from kerassl import experiment
    from kerassl.evaluation import probes

    seen = []
    real_probe = probes.linear_probe

    def probe_spy(train_features, train_labels, test_features, test_labels, **kwargs):
        seen.append((len(train_labels), len(test_labels)))
        return real_probe(train_features, train_labels, test_features, test_labels, **kwargs)

    monkeypatch.setattr(probes, "linear_probe", probe_spy)
    monkeypatch.setattr(experiment, "linear_probe", probe_spy)
    path = tmp_path / "simclr.yaml"
    path.write_text(
        "model: simclr\ndataset: digits\nlabels: 50\nvalidation: 0.4\nepochs: 1\n"
        "ssl: {steps_per_epoch: 2, max_unlabeled: 256, projection_dim: 16, hidden_dim: 32,"
        " jit_compile: false}\n"
        "space: {batch_size: [32], head: [linear], temperature: {min: 0.1, max: 0.5}}\n"
    )
    out = tmp_path / "ssl"
    assert tune.main([str(path), "--max-trials", "1", "--out", str(out)]) == 0
    # The trial's probe: 30 labeled → 20 validation; then the best encoder is tested once
    # with all 50 labels against the whole test split.
    data = load_dataset("digits")
    assert seen == [(30, 20), (50, len(data.y_test))]
    best = json.loads((out / "best_hyperparameters.json").read_text())
    assert 0.1 <= best["temperature"] <= 0.5 and best["head"] == "linear"
    assert (out / "best_encoder.keras").exists()


def test_byol_search_writes_its_best_config_and_encoder(tmp_path, monkeypatch):
    import keras

    from kerassl import pretraining
    from kerassl.evaluation import probes

    pretrained = []
    real_pretrain = pretraining.pretrain

    def pretrain_spy(plan, *args, **kwargs):
        pretrained.append(plan.config)
        return real_pretrain(plan, *args, **kwargs)

    monkeypatch.setattr(pretraining, "pretrain", pretrain_spy)
    # The probe's choice of C is tests/test_probes.py's; C = 1 here saves 3 cross-validations.
    monkeypatch.setattr(probes, "choose_c", lambda *args, **kwargs: (1.0, None, 0, 0))
    path = tmp_path / "byol.yaml"
    path.write_text(
        "model: byol\ndataset: digits\nlabels: 50\nvalidation: 0.4\nepochs: 1\n"
        "ssl: {steps_per_epoch: 1, max_unlabeled: 64, projection_dim: 16, jit_compile: false}\n"
        "space: {batch_size: [32], head: [linear], hidden_dim: [16, 32], momentum: [0.9, 0.99]}\n"
    )
    out = tmp_path / "byol"
    assert tune.main([str(path), "--max-trials", "2", "--out", str(out)]) == 0
    assert [config.method for config in pretrained] == ["byol", "byol"]
    table = pd.read_csv(out / "results.csv")
    assert table["trial"].tolist() == [0, 1] and (table["status"] == "COMPLETED").all()
    assert {"momentum", "hidden_dim", "learning_rate"} <= set(table.columns)
    assert "temperature" not in table.columns  # not a BYOL hyperparameter
    best = json.loads((out / "best_hyperparameters.json").read_text())
    assert best["hidden_dim"] in (16, 32) and best["momentum"] in (0.9, 0.99)
    assert best["val_accuracy"] == pytest.approx(table["val_accuracy"].max(), abs=1e-4)
    # The best trial's encoder: the search's model, an image → vector map.
    encoder = keras.saving.load_model(out / "best_encoder.keras")
    assert len(encoder.output_shape) == 2 and not (out / "best_model.keras").exists()
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert 0 <= test["top1"] <= 1 and test["num_test"] == len(load_dataset("digits").y_test)


def test_an_ssl_trial_pretrains_for_its_time_budget(tmp_path, monkeypatch):
    """`ssl: {time_budget: ...}` sets each trial's steps as `kerassl train --time-budget`
    would (it was ignored: trials ran their epochs); the record is kept in the trial's dir."""
    from kerassl import experiment, pretraining
    from kerassl.evaluation import probes
    from kerassl.pretraining import StepTiming

    timing = StepTiming(step=0.5, startup=0.0, first_epoch_end=0.0, epoch_end=0.0, spent=0.0)
    monkeypatch.setattr(experiment, "measure_step_seconds", lambda plan, strategy: timing)
    monkeypatch.setattr(probes, "choose_c", lambda *args, **kwargs: (1.0, None, 0, 0))
    planned = []
    real_pretrain = pretraining.pretrain

    def pretrain_spy(plan, *args, **kwargs):
        planned.append(plan)
        return real_pretrain(plan, *args, **kwargs)

    monkeypatch.setattr(pretraining, "pretrain", pretrain_spy)
    path = tmp_path / "simclr.yaml"
    path.write_text(
        "model: simclr\ndataset: digits\nlabels: 50\nvalidation: 0.4\nepochs: 30\n"
        "ssl: {time_budget: 6s, max_unlabeled: 256, projection_dim: 16, hidden_dim: 32,"
        " jit_compile: false}\n"
        "space: {batch_size: [32], head: [linear], temperature: [0.2]}\n"
    )
    out = tmp_path / "ssl"
    assert tune.main([str(path), "--max-trials", "1", "--out", str(out)]) == 0
    [plan] = planned
    assert plan.total_steps == 12  # 6 s of 0.5 s steps, not 30 epochs of 8
    [record] = [json.loads(p.read_text()) for p in out.glob("tuner/trial_*/budget.json")]
    assert record["steps"] == 12 and record["seconds"] == 6.0


def test_tuning_yaml_definitions_are_valid():
    paths = sorted((REPO / "tuning").glob("*.yaml"))
    names = {p.name for p in paths}
    assert {
        "cnn_fashion_mnist.yaml",
        "inceptionv3_stanford_dogs.yaml",
        "simclr_fashion_mnist.yaml",
    } <= names
    recipes = sorted((REPO / "benchmarks" / "recipes").glob("search_*.yaml"))
    assert recipes  # the recipe searches are search definitions too
    for path in paths + recipes:
        SearchConfig.from_yaml(str(path)).validate()


def test_shipped_yaml_runs_with_overrides(tmp_path, trainings):
    out = tmp_path / "out"
    yaml_path = str(REPO / "tuning" / "cnn_fashion_mnist.yaml")
    args = [yaml_path, *TINY, "--max-trials", "1", "--tuner", "random", "--out", str(out)]
    assert tune.main(args) == 0
    assert len(trainings.calls) == 1


@pytest.mark.parametrize(
    "content, args, message",
    [
        ("model: vgg\n", [], "unknown model 'vgg'; choose one of cnn, mlp"),
        ("model: cnn\ntuner: grid\n", [], "unknown tuner 'grid'; choose one of random"),
        ("model: cnn\n", ["--tuner", "grid"], "unknown tuner 'grid'"),
        (
            "model: cnn\nspace:\n  learning_rate: {min: 1e-2, max: 1e-4, sampling: log}\n",
            [],
            "bad search space for cnn: learning_rate: min must be <= max",
        ),
        ("model: cnn\nspace:\n  depth: [1, 2]\n", [], "unknown hyperparameter depth; tunable: "),
        ("model: cnn\nmax_trial: 3\n", [], "bad.yaml; did you mean max_trials? known: model, "),
        ("model: cnn\nmax_trials: 0\n", [], "max_trials must be an integer >= 1; got 0"),
        (
            "model: byol\nspace:\n  temperature: [0.1]\n",
            [],
            "bad search space for byol: unknown hyperparameter temperature; tunable: ",
        ),
        ("model: cnn\nssl: {encoder: cnn}\n", [], "ssl settings apply to the SSL methods (simclr,"),
        (
            "model: moco\nssl: {method: byol}\n",
            [],
            "ssl cannot set method: it is the search's model",
        ),
        ("model: vicreg\nssl: {vicreg_mu: 5}\n", [], "ssl setting(s) vicreg_mu are tuned"),
        ("model: simsiam\nspace: {batch_size: [big]}\n", [], "batch_size must be integers"),
        ("model: cnn\n", ["--labels", "lots"], "labels must be"),
        ("model: cnn\nmodel: [\n", [], "is not valid YAML"),
        ("- cnn\n", [], "must be a mapping"),
    ],
)
def test_bad_search_definitions_one_line_exit_2(tmp_path, capsys, content, args, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert tune.main([str(path), *args, "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kerassl: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "never").exists()


def test_unknown_model_on_the_command_line_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kerassl.tune", "densenet", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    # TensorFlow's own start-up lines may precede it; kerassl prints one line, no traceback.
    ours = [line for line in result.stderr.splitlines() if "kerassl" in line]
    assert ours == [
        "kerassl: error: unknown model 'densenet'; choose one of cnn, mlp, resnet50, "
        "inceptionv3, simclr, moco, barlow_twins, byol, simsiam, vicreg or give a .yaml "
        "search definition"
    ]
    assert "Traceback" not in result.stderr


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` → its bytes (None for a folder)."""
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


LABELS_ACCEPTED = (
    "labels must be a total count such as 100, a count per class such as 10/class or a "
    "fraction of each class in (0, 1]"
)
AT_LEAST_ONE = "must be an integer >= 1, got"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["densenet"], "unknown model 'densenet'; choose one of cnn, mlp, resnet50"),
        (["dino", "--dataset", "digits"], "unknown model 'dino'; choose one of cnn, mlp, resnet50, "
         "inceptionv3, simclr, moco, barlow_twins, byol, simsiam, vicreg or give a .yaml"),
        (["cnn", "--tuner", "grid"], "unknown tuner 'grid'; choose one of random, bayesian"),
        (["cnn", "--max-trials", "0"], f"argument --max-trials: {AT_LEAST_ONE} '0'"),
        (["cnn", "--max-trials", "ten"], f"argument --max-trials: {AT_LEAST_ONE} 'ten'"),
        (["cnn", "--epochs", "1.5"], f"argument --epochs: {AT_LEAST_ONE} '1.5'"),
        (["missing.yaml"], "cannot read search definition missing.yaml: No such file"),
        (["typo.yaml"], "unknown key max_trial in typo.yaml; did you mean max_trials? known:"),
        (["space.yaml"], "unknown hyperparameter learning_rat; did you mean learning_rate?"),
        (["range.yaml"], "bad search space for cnn: dropout: step must be > 0. Received: step=0"),
        (["cnn", "--labels", "0"], f"{LABELS_ACCEPTED} such as 0.1, got '0'"),
        (["cnn", "--labels", "1.5"], f"{LABELS_ACCEPTED} such as 0.1, got '1.5'"),
        (["cnn", "--labels", "0.0"], f"{LABELS_ACCEPTED} such as 0.1, got '0.0'"),
        (["cnn", "--labels", "-0.2"], f"{LABELS_ACCEPTED} such as 0.1, got '-0.2'"),
        (["cnn", "--dataset", "digits", "--labels", "5000"], "for labels=5000: class 0 has"),
        (["cnn", "--dataset", "no_such_data"], "unknown dataset 'no_such_data': not a local form"),
    ],
)  # fmt: skip
def test_bad_command_lines_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    Path("typo.yaml").write_text("model: cnn\nmax_trial: 3\n")
    Path("space.yaml").write_text("model: cnn\nspace:\n  learning_rat: [0.01]\n")
    Path("range.yaml").write_text("model: cnn\nspace:\n  dropout: {min: 0, max: 0.5, step: 0}\n")
    # Earlier searches where these commands would write by default.
    for name in ("cnn-fashion_mnist", "cnn-digits"):
        earlier = Path("tuning_runs", name)
        (earlier / "tuner").mkdir(parents=True)
        (earlier / "search.json").write_text('{"model": "cnn"}\n')
        (earlier / "results.csv").write_text("trial,status\n0,COMPLETED\n")
    before = _tree(tmp_path)
    assert tune.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kerassl: error: ") and err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err
    assert _tree(tmp_path) == before


def test_usage_errors_come_before_tensorflow_loads(tmp_path):
    (tmp_path / "typo.yaml").write_text("model: cnn\nmax_trial: 3\n")
    script = """
import sys
from kerassl import tune
for argv in (["densenet"], ["typo.yaml"], ["cnn", "--labels", "1.5"], ["cnn", "--tuner", "x"],
             ["missing.yaml"], ["simclr", "--max-trials", "ten"], ["dino"],
             ["vicreg", "--max-trials", "ten"]):
    code = tune.main(argv)
    assert code == 2, (argv, code)
print(sorted(m for m in ("tensorflow", "keras", "keras_tuner") if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
    assert result.stderr.count("kerassl: error: ") == 8
