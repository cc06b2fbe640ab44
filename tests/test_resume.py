"""Runs that survive: kill and continue, what a re-run decides, NaN stops, determinism."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kerassl import checkpoint, resume
from kerassl.config import TrainConfig
from kerassl.train import main

STEPS_PER_EPOCH, EPOCHS = 6, 2
RUN = [
    "simclr",
    "--dataset",
    "digits",
    "--epochs",
    str(EPOCHS),
    "--steps-per-epoch",
    str(STEPS_PER_EPOCH),
    "--batch-size",
    "32",
    "--labels",
    "50",
    "--baseline-epochs",
    "15",
    "--deterministic",
    "--quiet",
]


def train_process(out: Path, name: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "kerassl.train", *RUN, "--out", str(out)]
    return subprocess.Popen(
        [*command, "--run-name", name, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILLs `process` as soon as `ready()` holds (it must still be running then)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out waiting to kill"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def weights(run: Path) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(run / "encoder.keras").weights]


def history_epochs(run: Path) -> list[int]:
    with open(run / "history.csv") as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted run, and the same command killed mid-epoch in pretraining,
    continued, killed during the baseline, and continued to the end (both in parallel:
    2 cores)."""
    out = tmp_path_factory.mktemp("runs")
    straight = train_process(out, "straight")
    killed = out / "killed"
    first = train_process(out, "killed", "--checkpoint-every", "3")
    kill_when(first, lambda: checkpoint.latest(killed / "checkpoints") is not None)
    killed_at = checkpoint.saved_step(killed / "checkpoints")
    second = train_process(out, "killed", "--checkpoint-every", "3")
    # The probe's classifier is written just before the baseline starts training.
    kill_when(second, (killed / "classifier.keras").is_file)
    in_baseline = not (killed / "metrics.json").exists()
    encoder_written = (killed / "encoder.keras").stat().st_mtime_ns
    third_stdout = finish(train_process(out, "killed", "--checkpoint-every", "3"))
    return {
        "straight_stdout": finish(straight),
        "out": out,
        "killed_at": killed_at,
        "in_baseline": in_baseline,
        "encoder_written": encoder_written,
        "third_stdout": third_stdout,
    }


def test_an_uninterrupted_run_writes_the_whole_run_directory(runs):
    assert "simclr + linear probe: top-1" in runs["straight_stdout"]
    assert "supervised cnn baseline: top-1" in runs["straight_stdout"]
    run = runs["out"] / "straight"
    for name in [
        "config.json",
        "split.json",
        "history.csv",
        "encoder.keras",
        "classifier.keras",
        "baseline.keras",
        "progress.json",
        "metrics.json",
        "report.md",
        "augmentations.png",
    ]:
        assert (run / name).is_file(), name
    assert any((run / "logs").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["linear_probe"]["top1"] > 0.3  # 10 classes: chance is 0.1
    assert 0.0 <= metrics["baseline"]["top1"] <= 1.0
    assert metrics["dataset"]["num_labeled"] == 50
    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] and config["image_size"] == 16 and config["channels"] == 1
    assert config["settings"]["deterministic"] and config["changes"] == []
    assert json.loads((run / "split.json").read_text())  # the labeled indices are recorded
    assert history_epochs(run) == list(range(EPOCHS))


def test_a_run_killed_mid_epoch_continues_to_the_uninterrupted_result(runs):
    out = runs["out"]
    assert 0 < runs["killed_at"] % STEPS_PER_EPOCH  # the kill came in the middle of an epoch
    assert history_epochs(out / "killed") == list(range(EPOCHS))
    for a, b in zip(weights(out / "straight"), weights(out / "killed"), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6)
    straight = json.loads((out / "straight" / "metrics.json").read_text())
    killed = json.loads((out / "killed" / "metrics.json").read_text())
    assert killed["linear_probe"] == straight["linear_probe"]
    assert not (out / "killed" / "checkpoints").exists()  # encoder.keras superseded it
    straight_history = (out / "straight" / "history.csv").read_text()
    assert (out / "killed" / "history.csv").read_text().splitlines()[0] == (
        straight_history.splitlines()[0]
    )


def test_a_run_killed_in_the_baseline_does_only_the_baseline_again(runs):
    out = runs["out"]
    assert runs["in_baseline"]
    run = out / "killed"
    assert (run / "encoder.keras").stat().st_mtime_ns == runs["encoder_written"]
    assert "supervised cnn baseline: top-1" in runs["third_stdout"]
    straight = json.loads((out / "straight" / "metrics.json").read_text())
    killed = json.loads((run / "metrics.json").read_text())
    assert killed["baseline"] == straight["baseline"]  # --deterministic


def test_a_finished_run_is_not_run_again(runs, capsys):
    run = runs["out"] / "straight"
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main([*RUN, "--out", str(runs["out"]), "--run-name", "straight"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"run {run} is finished (it has metrics.json): nothing to do"
    )
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_other_settings_name_each_difference_and_change_nothing(runs, capsys):
    run = runs["out"] / "straight"
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    argv = [*RUN, "--out", str(runs["out"]), "--run-name", "straight", "--seed", "4"]
    argv[argv.index("--epochs") + 1] = "5"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--epochs 5 (the run has {EPOCHS})" in err and "--seed 4 (the run has 0)" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_sigterm_checkpoints_at_the_end_of_the_step_and_exits_130(tmp_path):
    """SLURM's preemption notice: nothing since the last checkpoint is lost."""
    process = train_process(tmp_path, "r", "--checkpoint-every", "1000", "--baseline", "none")
    checkpoints = tmp_path / "r" / "checkpoints"
    # The first checkpoint is the end of epoch 0; the next periodic one would be far off.
    while checkpoint.latest(checkpoints) is None:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    step = checkpoint.saved_step(checkpoints)
    assert step > STEPS_PER_EPOCH and step % STEPS_PER_EPOCH  # saved by the SIGTERM
    assert stderr.strip().splitlines()[-1] == (
        f"kerassl: interrupted (stopped at step {step}, checkpoint saved)"
    )
    assert not (tmp_path / "r" / "metrics.json").exists()


# ----------------------------------------------------------------- the decision, TF-free


def header(path: Path, config: TrainConfig, **files) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"settings": config.to_json()}))
    for name, text in files.items():
        (path / name.replace("_", ".")).write_text(text)


def test_a_new_name_starts_and_the_same_settings_continue(tmp_path):
    config = TrainConfig(dataset="digits", out=str(tmp_path), run_name="r")
    _, decision = resume.decide(config)
    assert (decision.action, decision.path) == (resume.START, tmp_path / "r")
    header(tmp_path / "r", config)
    quiet = TrainConfig(
        dataset="digits", out=str(tmp_path), run_name="r", checkpoint_every="10"
    )  # does not change what is computed
    assert resume.decide(quiet)[1].action == resume.CONTINUE


def test_slurm_job_id_names_the_run_so_a_requeued_job_continues(tmp_path):
    config = TrainConfig(dataset="digits", out=str(tmp_path))
    environ = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0"}
    named, decision = resume.decide(config, environ=environ)
    assert decision.path.name == "simclr-digits-slurm4242" == named.run_name
    header(decision.path, named)
    assert resume.decide(config, environ=environ)[1].action == resume.CONTINUE
    array = {"SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "9"}
    assert resume.decide(config, environ=array)[1].path.name.endswith("slurm7_3")


def test_resume_may_lower_the_learning_rate_only(tmp_path):
    config = TrainConfig(dataset="digits", out=str(tmp_path), run_name="r", learning_rate=1.0)
    header(tmp_path / "r", config)
    other = TrainConfig(learning_rate=1e-3, epochs=4)
    resumed, decision = resume.decide(other, resume=str(tmp_path / "r"), given={"learning_rate"})
    assert resumed.learning_rate == 1e-3 and resumed.dataset == "digits"
    assert resumed.epochs == config.epochs  # not given: the run's own
    assert decision.changes == (("learning_rate", 1.0, 1e-3),)
    with pytest.raises(resume.UserError, match="--epochs cannot change on resume"):
        resume.decide(other, resume=str(tmp_path / "r"), given={"learning_rate", "epochs"})


def test_overwrite_is_decided_but_deletes_nothing_yet(tmp_path):
    config = TrainConfig(dataset="digits", out=str(tmp_path), run_name="r")
    header(tmp_path / "r", TrainConfig(dataset="digits", epochs=99))
    _, decision = resume.decide(config, overwrite=True)
    assert decision.action == resume.START and decision.overwrite
    assert (tmp_path / "r" / "config.json").is_file()


def test_a_directory_that_is_no_run_is_never_taken(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    config = TrainConfig(dataset="digits", out=str(tmp_path), run_name="r")
    with pytest.raises(resume.UserError, match="not a kerassl run directory"):
        resume.decide(config)


def test_a_user_error_of_a_continued_run_keeps_its_directory(tmp_path, capsys):
    """The data no longer splits as when the run started: exit 2, and the earlier run's
    files stay as they were."""
    from PIL import Image

    folder = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    options = ["--batch-size", "4", "--labels", "4", "--out", str(tmp_path), "--quiet"]
    config = TrainConfig(dataset=f"folder:{folder}", batch_size=4, labels="4")
    header(tmp_path / "r", config, split_json='{"labeled": {}}', progress_json="{}")
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    assert main(["simclr", "--dataset", f"folder:{folder}", *options, "--run-name", "r"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no longer splits" in err, err
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before


# ------------------------------------------------------------------------------- NaN / Inf


def test_a_loss_that_diverges_stops_with_exit_1_and_the_run_goes_on_with_a_lower_lr(
    tmp_path, capsys
):
    argv = [
        "simclr",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--steps-per-epoch",
        "4",
        "--batch-size",
        "32",
        "--labels",
        "50",
        "--baseline",
        "none",
        "--knn-every",
        "0",
        "--optimizer",
        "sgd",
        "--checkpoint-every",
        "1",
        "--out",
        str(tmp_path),
        "--run-name",
        "r",
        "--quiet",
    ]
    # The warmup starts at 0, so step 1 changes nothing and is a good checkpoint; step 2
    # overflows.
    assert main([*argv, "--lr", "1e38"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "NaN or Inf at step" in err or "the loss became" in err
    assert f"--resume {tmp_path / 'r'} --lr 1e+37" in err
    run = tmp_path / "r"
    assert not (run / "metrics.json").exists() and not (run / "encoder.keras").exists()
    assert not (run / "checkpoints" / checkpoint.PENDING).exists()  # its next loss was NaN
    with np.load(run / "checkpoints" / checkpoint.STATE) as saved:
        stopped_at = json.loads(str(saved["__meta__"]))["step"]
        assert stopped_at >= 1
        for key in saved.files:
            if saved[key].dtype.kind == "f":
                assert np.isfinite(saved[key]).all(), key
    assert main(["--resume", str(run), "--lr", "1e-3", "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["learning_rate"] == 1e-3
    assert config["changes"] == [
        {"setting": "learning_rate", "from": 1e38, "to": 1e-3, "step": stopped_at}
    ]
    assert (run / "metrics.json").is_file()
    assert os.listdir(run).count("checkpoints") == 0


# ------------------------------------------------------------------------ --config FILE


def test_a_run_repeats_from_its_own_config_json(runs, capsys):
    """A run's config.json as --config: the same settings (not the name); the command
    line wins; the derived keys beside "settings" are ignored."""
    from kerassl.train import build_parser, given_settings, settings_of

    path = runs["out"] / "straight" / "config.json"
    stored = TrainConfig.from_json(json.loads(path.read_text())["settings"])

    def config(*argv):
        argv = ["--config", str(path), *argv]
        return settings_of(build_parser().parse_args(argv), given_settings(build_parser(), argv))

    assert config() == dataclasses.replace(stored, run_name=None)
    assert config("--epochs", "7", "--offline").epochs == 7
    assert config("--offline").download is False and config().download is True


def test_config_file_errors_are_one_line(tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("dataset: digits\nepoch: 3\n")
    assert main(["--config", str(typo)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kerassl: error: unknown setting 'epoch' in {typo}; did you mean epochs?"
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert main(["--config", str(tmp_path / "list.yaml")]) == 2
    assert "must hold a mapping of settings" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_yaml_config_reads_exponents_as_numbers(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("dataset: digits\nlearning_rate: 3e-4\nweight_decay: 1e-6\n")
    values = TrainConfig.load_settings(str(path))
    assert values == {"dataset": "digits", "learning_rate": 3e-4, "weight_decay": 1e-6}
