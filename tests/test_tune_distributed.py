"""Distributed tuning (KerasTuner's chief/worker mode under `KERASTUNER_*`).

The end-to-end test runs `python -m kerassl.tune` as a chief and two workers on a free
port of 127.0.0.1 (a 4-trial, 1-epoch CNN search on digits), SIGKILLs the chief once a
trial has finished and both workers run others, and restarts it with the same command
while the workers keep going: the search finishes, every trial completes, and no trial
that had finished is run again.
The rest are in-process: the environment checks, and the repairs that make a killed
process resumable.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import grpc
import pandas as pd
import pytest

from kerassl import tune
from kerassl.tuning import distributed

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds for the whole search (about 60 s on 2 busy cores)
SEARCH_YAML = """model: cnn
dataset: digits
labels: 50
validation: 0.4
epochs: 1
max_trials: 4
space:
  base_filters: [8]
  convs_per_block: 1
  dense_units: [0, 32]
  batch_size: 16
"""
TRIAL_LINE = re.compile(r"^trial (\d+) \((tuner\d)\): val_accuracy=", re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Cluster:
    """`python -m kerassl.tune search.yaml --out out` processes sharing one oracle port."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "search.yaml").write_text(SEARCH_YAML)
        self.env = dict(
            os.environ,
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=str(_free_port()),
            TF_CPP_MIN_LOG_LEVEL="3",
            CUDA_VISIBLE_DEVICES="",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, tuner_id: str, name: str | None = None) -> subprocess.Popen:
        name = name or tuner_id
        with (
            open(self.folder / f"{name}.out", "w") as out,
            open(self.folder / f"{name}.err", "w") as err,
        ):
            process = subprocess.Popen(
                [sys.executable, "-m", "kerassl.tune", "search.yaml", "--out", "out"],
                cwd=self.folder,
                env=dict(self.env, KERASTUNER_TUNER_ID=tuner_id),
                stdout=out,
                stderr=err,
            )
        self.processes[name] = process
        return process

    def output(self, name: str) -> str:
        return (self.folder / f"{name}.out").read_text()

    def logs(self) -> str:
        """The tail of every process's output, for failure messages."""
        tails = []
        for name in self.processes:
            for kind in ("out", "err"):
                text = (self.folder / f"{name}.{kind}").read_text()
                tails.append(f"--- {name}.{kind}\n{text[-1500:]}")
        return "\n".join(tails)

    def wait_until(self, condition, deadline: float, what: str):
        """Polls `condition()` until it returns something truthy; fails on a process that
        exits non-zero, or at `deadline`."""
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            failed = {n: p.returncode for n, p in self.processes.items() if p.poll()}
            assert not failed, f"{failed} exited while waiting for {what}\n{self.logs()}"
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}\n{self.logs()}")

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _trial_files(out: Path) -> dict[str, dict]:
    """trial id → {"status", "text"} of its trial.json (files being written are skipped)."""
    trials = {}
    for path in out.glob("tuner/trial_*/trial.json"):
        try:
            text = path.read_text()
            trials[path.parent.name.removeprefix("trial_")] = {
                "status": json.loads(text)["status"],
                "text": text,
            }
        except (OSError, ValueError):
            pass
    return trials


def _mid_search(out: Path) -> dict[str, str] | None:
    """The finished trials (id → trial.json text) once a trial has finished and both
    workers run another one, else None."""
    trials = _trial_files(out)
    finished = {t: trial["text"] for t, trial in trials.items() if trial["status"] == "COMPLETED"}
    running = [t for t, trial in trials.items() if trial["status"] == "RUNNING"]
    return finished if finished and len(running) == 2 else None


def test_killed_chief_resumes_and_no_finished_trial_runs_twice(tmp_path):
    cluster = _Cluster(tmp_path)
    out = tmp_path / "out"
    deadline = time.monotonic() + TIMEOUT
    try:
        chief = cluster.start("chief", "chief1")
        workers = [cluster.start(f"tuner{i}") for i in range(2)]
        finished = cluster.wait_until(lambda: _mid_search(out), deadline, "mid-search")
        # Killed while both workers train (the chief idle): a chief killed while writing
        # KerasTuner's oracle.json would leave it truncated, which no restart can read.
        time.sleep(0.5)
        chief.send_signal(signal.SIGKILL)
        chief.wait()
        assert not (out / "results.csv").exists()  # no worker wrote results
        del cluster.processes["chief1"]  # its exit code is the kill's

        chief = cluster.start("chief", "chief2")
        done = [chief, *workers]
        cluster.wait_until(lambda: all(p.poll() == 0 for p in done), deadline, "the end")
    finally:
        cluster.stop_all()

    # Every trial completed; the restarted chief wrote the results and the test score.
    table = pd.read_csv(out / "results.csv")
    assert table["trial"].tolist() == [0, 1, 2, 3]
    assert (table["status"] == "COMPLETED").all()
    assert table["val_accuracy"].between(0, 1).all()
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["val_accuracy"] == pytest.approx(table["val_accuracy"].max(), abs=1e-4)
    assert (out / "best_model.keras").exists()
    assert "resuming out:" in cluster.output("chief2")
    assert "best model (cnn, 4 trials)" in cluster.output("chief2")

    # The workers ran all the trials between them and wrote no results; a trial that had
    # finished when the chief died was neither run again nor changed.
    runs = Counter()
    for name in ("tuner0", "tuner1"):
        text = cluster.output(name)
        assert "best model" not in text and "| trial |" not in text
        runs.update(trial for trial, _ in TRIAL_LINE.findall(text))
    assert sorted(runs) == ["0", "1", "2", "3"]
    assert all(runs[trial] == 1 for trial in finished), runs
    assert all(count <= 2 for count in runs.values()), runs  # in flight at the kill: may rerun
    for trial, text in finished.items():
        assert (out / "tuner" / f"trial_{trial}" / "trial.json").read_text() == text
    # Each trial's folder holds its model; each worker's own state is apart.
    assert all((out / "tuner" / f"trial_{t}" / "checkpoint.weights.h5").exists() for t in runs)
    assert (out / "tuner" / "worker-tuner0.json").exists()
    assert (out / "tuner" / "worker-tuner1.json").exists()


BAD_PORT = "KERASTUNER_ORACLE_PORT must be a port number in 1-65535; got"


@pytest.mark.parametrize(
    "tuner_id, ip, port, message",
    [
        ("tuner0", "127.0.0.1", None, "KERASTUNER_ORACLE_PORT is not set (set all three, or none)"),
        (None, None, "8000", "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP are not set"),
        ("chief", "h", "http", f"{BAD_PORT} 'http'"),
        ("chief", "h", "70000", f"{BAD_PORT} '70000'"),
        (" ", "h", "1", "KERASTUNER_TUNER_ID must be chief or a worker ID such as tuner0; got ''"),
        ("tuner0", "", "1", "KERASTUNER_ORACLE_IP must be the chief's address"),
    ],
)  # fmt: skip
def test_half_set_environment_is_one_line_exit_2(
    tmp_path, capsys, monkeypatch, tuner_id, ip, port, message
):
    for name, value in zip(distributed.ENV_VARS, (tuner_id, ip, port), strict=True):
        monkeypatch.delenv(name, raising=False)
        if value is not None:
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert tune.main(["cnn", "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kerassl: error: ") and err.count("\n") == 1
    assert message in err
    assert list(tmp_path.iterdir()) == []  # no tuning_runs/ folder


def test_roles_follow_kerastuner():
    assert distributed.tuner_role({}) == distributed.Role("alone")
    env = {"KERASTUNER_ORACLE_IP": "10.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}
    chief = distributed.tuner_role({**env, "KERASTUNER_TUNER_ID": "chief"})
    assert chief == distributed.Role("chief", "chief", "10.0.0.1:8000")
    assert distributed.tuner_role({**env, "KERASTUNER_TUNER_ID": "tuner1"}).kind == "worker"


def _trial(trial_id: str, status: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status)


def test_requeue_unfinished_after_a_kill():
    # What a reloaded oracle holds after a kill: KerasTuner queued the trials that were
    # running (2 ended since, 3 was saved as over but still running), 1 waits for a retry,
    # 5 was being created (saved, never listed), 4 is held by a tuner of this oracle.
    trials = {
        "0": _trial("0", "COMPLETED"),
        "1": _trial("1", "INVALID"),
        "2": _trial("2", "COMPLETED"),
        "3": _trial("3", "FAILED"),
        "4": _trial("4", "RUNNING"),
        "5": _trial("5", "RUNNING"),
        "6": _trial("6", "RUNNING"),
    }
    oracle = SimpleNamespace(
        trials=trials, ongoing_trials={"tuner0": trials["4"]}, _retry_queue=["1", "2", "3", "6"]
    )
    distributed.requeue_unfinished(oracle)
    assert oracle._retry_queue == ["1", "6", "5"]
    distributed.requeue_unfinished(oracle)  # idempotent: no trial queued twice
    assert oracle._retry_queue == ["1", "6", "5"]


class _Lost(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code


def test_patient_client_retries_calls_the_chief_died_during():
    calls = []

    class Client:
        objective = "val_accuracy"

        def create_trial(self, tuner_id):
            calls.append(tuner_id)
            if len(calls) < 3:
                raise _Lost(grpc.StatusCode.UNAVAILABLE)
            return "trial"

        def get_trial(self, trial_id):
            raise _Lost(grpc.StatusCode.NOT_FOUND)

    client = distributed.PatientClient(Client(), patience_seconds=60, retry_seconds=0)
    assert client.objective == "val_accuracy"
    assert client.create_trial("tuner0") == "trial" and calls == ["tuner0"] * 3
    with pytest.raises(grpc.RpcError):  # any other error is not the chief's absence
        client.get_trial("0")
    calls.clear()
    impatient = distributed.PatientClient(Client(), patience_seconds=0, retry_seconds=0)
    with pytest.raises(grpc.RpcError):
        impatient.create_trial("tuner0")
    assert calls == ["tuner0"]  # no patience: gives up at the first loss


def test_best_trial_without_its_files_is_a_user_error(tmp_path):
    # What the chief finds when the workers wrote their trials to another folder.
    from kerassl.errors import UserError
    from kerassl.tuning.search import _load_best

    (tmp_path / "trial.json").write_text("{}")
    tuner = SimpleNamespace(get_trial_dir=lambda trial_id: str(tmp_path), load_model=print)
    with pytest.raises(UserError, match=f"best trial 0 left no model in {tmp_path}; distributed"):
        _load_best(tuner, _trial("0", "COMPLETED"))
    (tmp_path / "checkpoint.weights.h5").write_text("")
    tuner.load_model = lambda trial: f"model {trial.trial_id}"
    assert _load_best(tuner, _trial("0", "COMPLETED")) == "model 0"


def test_worker_refuses_a_search_with_other_settings(tmp_path, monkeypatch):
    from kerassl.errors import UserError
    from kerassl.tuning import search
    from kerassl.tuning.config import SearchConfig

    out = tmp_path / "out"
    out.mkdir()
    chief = SearchConfig(model="cnn", dataset="digits", out=str(out))
    (out / "search.json").write_text(json.dumps(chief.identity()))  # what the chief records
    searched = []
    tuner = SimpleNamespace(
        oracle=SimpleNamespace(get_space=lambda: None), search=lambda *a, **k: searched.append(1)
    )
    monkeypatch.setattr(search, "make_tuner", lambda *args, **kwargs: tuner)
    role = distributed.Role("worker", "tuner3", "10.0.0.1:8000")
    worker = SearchConfig(model="cnn", dataset="digits", out=str(out), seed=1)
    with pytest.raises(UserError, match="worker tuner3: the chief's search in .* has other seed"):
        search._work(worker, None, (), {}, role, print)
    assert searched == []
    tuner.trials_run = 0
    search._work(chief, None, (), {}, role, print)
    assert searched == [1]


def test_chief_refuses_a_port_in_use():
    from kerassl.errors import UserError

    with socket.socket() as busy:
        # Like a running chief's gRPC server, which KerasTuner's would share the port with.
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(UserError, match=f"cannot serve the tuning oracle on {address}"):
            distributed.serve_oracle(None, address, print)
