"""MultiWorkerMirroredStrategy (TF_CONFIG) gives the single-device result, and the train CLI
runs end to end on two workers.

Each test starts two local worker processes, one CPU device each, with a `TF_CONFIG` naming
a cluster of two workers on free ports of 127.0.0.1 (task index 0 and 1). Every wait has a
timeout, so a hung collective fails the test instead of blocking the suite.

- Equivalence: this file executed as a script (`python tests/test_multi_worker.py OUT
  METHOD…`) is one worker. Per method, both workers build the model of
  `kerassl.testing.method_contract.build_for_distribution` (with the `CONTRACT_KWARGS` of
  the method's test file) from the same initial weights, and train it on identical views
  (augmentation preset "none") for 2 steps of a global batch of 8, 4 images per worker, with
  synchronised BatchNorm; worker 0 also trains it on one device. Each worker saves its
  weights, losses and its share of the first global batch to OUT; the test compares them
  with the tolerances of the method contract's distributed check.
- CLI: `python -m kerassl.train … --strategy auto` on both workers; only the chief
  (worker 0) writes the run directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_distributed import contract_kwargs

from kerassl.methods import METHODS as REGISTERED_METHODS
from kerassl.testing.method_contract import GLOBAL_BATCH, STEPS, build_for_distribution

REPO = Path(__file__).resolve().parents[1]
METHODS = tuple(REGISTERED_METHODS)
WORKERS = 2
TIMEOUT = 300  # seconds per pair of workers (each alone takes ~30 s on 2 busy cores)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(argv: list[str], logs: Path, cwd: list[Path] | None = None) -> list[str]:
    """Runs `python argv…` as worker 0 and worker 1 of a local cluster; returns their stdout.

    Fails (after killing both) when a worker exits non-zero or the pair outlives TIMEOUT.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(WORKERS)]}
    base = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    base["CUDA_VISIBLE_DEVICES"] = ""  # one CPU device per worker, even on a GPU machine
    processes, outputs = [], []
    for index in range(WORKERS):
        task = {"type": "worker", "index": index}
        env = dict(base, TF_CONFIG=json.dumps({"cluster": cluster, "task": task}))
        stdout, stderr = logs / f"worker{index}.out", logs / f"worker{index}.err"
        outputs.append((stdout, stderr))
        with stdout.open("w") as out, stderr.open("w") as err:
            processes.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    stdout=out,
                    stderr=err,
                    env=env,
                    cwd=cwd[index] if cwd else None,
                )
            )
    # Until both are done, one fails (its peer would wait for it forever), or time is up.
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            codes = [process.poll() for process in processes]
            if all(code == 0 for code in codes) or any(code for code in codes):
                break
            time.sleep(0.2)
    finally:
        codes = [process.poll() for process in processes]
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    failures = [
        f"worker {index} "
        + ("was killed (timeout, or its peer failed)" if code is None else f"exited {code}")
        + f":\n{stderr.read_text()[-3000:]}"
        for index, (code, (_, stderr)) in enumerate(zip(codes, outputs, strict=True))
        if code != 0
    ]
    assert not failures, "\n".join(failures)
    return [stdout.read_text() for stdout, _ in outputs]


# ---------------------------------------------------------------- equivalence


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multi_worker")
    run_workers([__file__, str(out), *METHODS], out)
    return out


def _load(path: Path) -> dict:
    with np.load(path) as arrays:
        return dict(arrays)


def _weights(arrays: dict, prefix: str) -> list[np.ndarray]:
    count = sum(key.startswith(prefix) for key in arrays)
    return [arrays[f"{prefix}{i}"] for i in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_two_workers_match_one_device(saved, method):
    workers = [_load(saved / f"{method}-worker{i}.npz") for i in range(WORKERS)]
    single = _weights(workers[0], "w_single_")
    multi = [_weights(w, "w_multi_") for w in workers]
    # Each worker fed its own half of the global batch, in replica order:
    # worker i the images [4i, 4i + 4) of the single-device batch.
    per_worker = GLOBAL_BATCH // WORKERS
    for index, worker in enumerate(workers):
        expected = workers[0]["images"][index * per_worker : (index + 1) * per_worker]
        np.testing.assert_array_equal(worker["first_local_batch"], expected)
    # Training happened, and the two-worker run reproduced it: losses of the global batch,
    # every weight (BatchNorm statistics included) identical on both workers.
    moved = max(
        float(np.abs(a - b).max())
        for a, b, kernel in zip(
            single, _weights(workers[0], "w_initial_"), workers[0]["kernels"], strict=True
        )
        if kernel
    )
    assert moved > 1e-3
    single_losses = workers[0]["single_losses"]
    for worker in workers:
        assert worker["multi_losses"] == pytest.approx(single_losses, abs=1e-5)
    assert max(float(np.abs(a - b).max()) for a, b in zip(single, multi[0], strict=True)) < 2e-5
    for a, b in zip(*multi, strict=True):
        np.testing.assert_array_equal(a, b)
    # Probe/kNN features of the distributed encoder: one row per image, computed locally.
    features = workers[0]["single_features"]
    for worker in workers:
        assert worker["multi_features"].shape == features.shape
        assert float(np.abs(worker["multi_features"] - features).max()) < 2e-4
    if method == "moco":
        # Keys of both workers enter the queue in global-batch order, on every worker.
        queue = workers[0]["single_queue"]
        assert float(np.abs(queue - workers[0]["multi_queue"]).max()) < 2e-5
        np.testing.assert_array_equal(workers[0]["multi_queue"], workers[1]["multi_queue"])
        pointers = [int(workers[0]["single_pointer"])] + [int(w["multi_pointer"]) for w in workers]
        queue_size = contract_kwargs("moco")["queue_size"]
        assert pointers == [(STEPS * GLOBAL_BATCH) % queue_size] * 3


def worker_main(out: Path, methods: list[str]) -> None:
    """One worker of the equivalence test: trains `methods` and saves results to `out`."""
    from kerassl.distribute import is_chief, make_strategy

    # Before any TensorFlow op: the strategy configures the process's collective ops.
    strategy = make_strategy("multi_worker")
    assert make_strategy("auto") is strategy  # TF_CONFIG with two workers → multi-worker
    assert strategy.num_replicas_in_sync == WORKERS
    assert len(strategy.extended.worker_devices) == 1

    import keras
    import tensorflow as tf

    from kerassl.evaluation.features import extract_features
    from kerassl.testing.synthetic import tiny_images

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    pixels = tiny_images(GLOBAL_BATCH, 16)[0]
    images = pixels.astype("float32") / 255

    def dataset():
        # The global batch; Keras splits it into per-replica batches and DATA sharding gives
        # worker i the i-th (as kerassl.pretraining.pretrain does).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return tf.data.Dataset.from_tensor_slices(images).batch(GLOBAL_BATCH).with_options(options)

    def train(model):
        history = model.fit(dataset().repeat(), epochs=STEPS, steps_per_epoch=1, verbose=0)
        return np.asarray(history.history["loss"], np.float64)

    # What this worker receives of the first global batch, through the distribution Keras
    # applies (`experimental_distribute_dataset`).
    local = next(iter(strategy.experimental_distribute_dataset(dataset())))
    first_local_batch = strategy.experimental_local_results(local)[0].numpy()

    for method in methods:
        keras.utils.set_random_seed(0)
        single = build_for_distribution(method, contract_kwargs(method), sync_bn=False)
        initial = [w.numpy() for w in single.weights]
        with strategy.scope():
            multi = build_for_distribution(method, contract_kwargs(method), sync_bn=True)
            for weight, value in zip(multi.weights, initial, strict=True):
                weight.assign(value)
        arrays = {
            "images": images,
            "first_local_batch": first_local_batch,
            "multi_losses": train(multi),
            "kernels": np.array([w.path.endswith("kernel") for w in single.weights]),
        }
        arrays |= {f"w_multi_{i}": w.numpy() for i, w in enumerate(multi.weights)}
        arrays["multi_features"] = extract_features(multi.encoder, pixels)  # no collective
        if method == "moco":
            arrays["multi_queue"] = multi.queue.keys.numpy()
            arrays["multi_pointer"] = multi.queue.pointer.numpy()
        if is_chief():  # the single-device reference, once
            arrays["single_losses"] = train(single)
            arrays |= {f"w_single_{i}": w.numpy() for i, w in enumerate(single.weights)}
            arrays |= {f"w_initial_{i}": value for i, value in enumerate(initial)}
            arrays["single_features"] = extract_features(single.encoder, pixels)
            if method == "moco":
                arrays["single_queue"] = single.queue.keys.numpy()
                arrays["single_pointer"] = single.queue.pointer.numpy()
        np.savez(out / f"{method}-worker{index}.npz", **arrays)


# ---------------------------------------------------------------- CLI


@pytest.mark.slow
def test_train_cli_on_two_workers(tmp_path):
    out = tmp_path / "runs"
    cwd = [tmp_path / f"cwd{i}" for i in range(WORKERS)]
    for directory in cwd:
        directory.mkdir()
    stdout = run_workers(
        [
            "-m", "kerassl.train", "simclr", "--dataset", "digits", "--labels", "50",
            "--max-unlabeled", "256", "--batch-size", "32", "--epochs", "1",
            "--baseline", "none", "--quiet", "--out", str(out), "--run-name", "run",
        ],
        tmp_path,
        cwd=cwd,
    )  # fmt: skip
    # Only the chief wrote, and only its run directory; the other worker wrote nothing.
    assert [p.name for p in out.iterdir()] == ["run"]
    assert not any(any(directory.iterdir()) for directory in cwd)
    run = out / "run"
    files = ["config.json", "split.json", "history.csv", "encoder.keras", "classifier.keras"]
    for name in [*files, "metrics.json", "report.md"]:
        assert (run / name).is_file(), name
    assert not (run / "checkpoints").exists()  # BackupAndRestore removed its backup
    # `--strategy auto` resolved to multi-worker: one replica on each of the two workers.
    config = json.loads((run / "config.json").read_text())
    assert config["distribution"] == {"strategy": "multi_worker", "replicas": 2}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["linear_probe"]["top1"] > 0.3  # 10 classes: chance is 0.1
    assert (run / "history.csv").read_text().count("\n") == 2  # header + 1 epoch
    # Both workers hold the same encoder: the same probe accuracy.
    accuracies = [text.splitlines()[0] for text in stdout]
    assert accuracies[0] == accuracies[1] and accuracies[0].startswith("simclr + linear probe")


if __name__ == "__main__":
    worker_main(Path(sys.argv[1]), sys.argv[2:])
