"""The sweep of bad inputs to `kerassl train` and `kerassl export`: each is one line on
stderr naming the value and what is accepted, exit code 2, no traceback, no run directory
left behind and no file of an earlier run changed. (`serve`'s are in tests/test_server.py
and tests/test_serving_hotswap.py, `tune`'s in tests/test_tune.py; data problems of the
loaders themselves in tests/test_corrupt_data.py.)

Most fail in validation, before TensorFlow loads; they run in-process through `main`.
"""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from kerassl import export, train

TRAIN_CASES = {
    # out-of-range and malformed numbers
    "epochs 0": (["--epochs", "0"], "--epochs must be an integer >= 1; got 0"),
    "epochs malformed": (["--epochs", "2.5"], "invalid int value: '2.5'"),
    "batch 1": (["--batch-size", "1"], "--batch-size must be an integer >= 2; got 1"),
    "batch over the pool": (["--batch-size", "5000"], "--batch-size 5000 is larger than"),
    "lr negative": (["--lr", "-0.1"], "--lr must be > 0; got -0.1"),
    "lr malformed": (["--lr", "1e-3x"], "invalid float value: '1e-3x'"),
    "labels 0": (["--labels", "0"], "got '0'"),
    "labels more than exist": (["--labels", "5000"], "labels=5000: class 0 has"),
    "labels fraction > 1": (["--labels", "1.5"], "got '1.5'"),
    "labels fraction <= 0": (["--labels", "-0.1"], "got '-0.1'"),
    "validation share": (["--validation", "1.0"], "--validation must be in [0, 1); got 1.0"),
    "temperature": (["--temperature", "0"], "--temperature must be > 0; got 0.0"),
    "bn groups": (
        ["moco", "--batch-size", "30", "--bn-groups", "4"],
        "--batch-size must be a multiple of --bn-groups (4) for moco; got 30",
    ),
    "projector dims": (["--projector-dims", "512,x"], "--projector-dims must be comma"),
    "image size": (["--image-size", "4"], "--image-size must be an integer >= 8; got 4"),
    "warmup": (["--epochs", "2", "--warmup-epochs", "3"], "--warmup-epochs must be in [0"),
    "momentum": (["moco", "--momentum", "1.0"], "--momentum must be in [0, 1); got 1.0"),
    "checkpoint period": (["--checkpoint-every", "5 min"], "--checkpoint-every must be"),
    # unknown names
    "method": (["swav"], "unknown method 'swav'; choose one of simclr"),
    "dataset": (["--dataset", "no_such_set"], "unknown dataset 'no_such_set'"),
    "encoder": (["--encoder", "vgg16"], "unknown encoder 'vgg16'; choose one of cnn"),
    "head": (["--head", "mlp3"], "unknown head 'mlp3'; choose one of linear"),
    "preset": (["--augment", "cifar"], "unknown augmentation preset 'cifar'"),
    "optimizer": (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'; choose one of"),
    "strategy": (["--strategy", "tpu"], "unknown strategy 'tpu'; choose one of auto"),
    "baseline": (["--baseline", "svm"], "unknown baseline 'svm'; choose one of cnn"),
    "weights": (["--weights", "imagenet21k"], "unknown weights 'imagenet21k'"),
    "weights of an encoder without them": (
        ["--weights", "imagenet"],
        "--encoder cnn has no pretrained weights",
    ),
    "xla": (["--xla", "sometimes"], "invalid choice: 'sometimes'"),
    "option": (["--epoch", "3"], "unrecognized arguments"),
    "resume a missing run": (["--resume", "{tmp}/nowhere"], "nowhere: no such run directory"),
    "resume and overwrite": (["--resume", "{earlier}", "--overwrite"], "exclude each other"),
    "resume with other settings": (
        ["--resume", "{earlier}", "--epochs", "7"],
        "--epochs cannot change on resume",
    ),
    "same name, other settings": (
        ["--run-name", "earlier", "--epochs", "7"],
        "--epochs 7 (the run has 1)",
    ),
    # data problems
    "folder with nothing readable": (["--dataset", "folder:{broken_folder}"], "no readable"),
    "idx header and length disagree": (["--dataset", "idx:{short_idx}"], "corrupt IDX file"),
    "idx image and label counts": (["--dataset", "idx:{miscounted_idx}"], "has 4 labels"),
    "npz without the keys": (["--dataset", "npz:{keyless_npz}"], "keys found: images"),
    "npz missing": (["--dataset", "npz:{tmp}/none.npz"], "no such file"),
}


def write_idx(path: Path, array: np.ndarray, cut: int = 0) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload[: len(payload) - cut]))


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """An output folder holding an earlier run, and broken datasets."""
    tmp = tmp_path_factory.mktemp("bad")
    from kerassl.config import TrainConfig
    from kerassl.testing.fake_run import make_run_dir

    earlier = make_run_dir(tmp / "runs" / "earlier")
    config = TrainConfig(dataset="digits", epochs=1, run_name="earlier", out=str(tmp / "runs"))
    import json

    recorded = json.loads((earlier / "config.json").read_text())
    recorded["settings"] = config.to_json()
    (earlier / "config.json").write_text(json.dumps(recorded))
    (earlier / "metrics.json").unlink()  # unfinished: resumable, and so at risk
    broken = tmp / "broken"
    for label in ("a", "b"):
        (broken / label).mkdir(parents=True)
        (broken / label / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    images = np.zeros((5, 4, 4), np.uint8)
    short, miscounted = tmp / "short", tmp / "miscounted"
    for folder, labels, cut in ((short, 5, 7), (miscounted, 4, 0)):
        folder.mkdir()
        write_idx(folder / "train-images-idx3-ubyte.gz", images, cut)
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(labels, np.uint8))
    keyless = tmp / "keyless.npz"
    np.savez(keyless, images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, np.uint8))
    return {
        "tmp": tmp,
        "runs": tmp / "runs",
        "earlier": earlier,
        "broken_folder": broken,
        "short_idx": short,
        "miscounted_idx": miscounted,
        "keyless_npz": keyless,
    }


def snapshot(folder: Path) -> dict:
    """Every file (its bytes) and folder (None) under `folder`."""
    return {
        p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")
    }


def check_one_line(code: int, err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_rejects(case, places, capsys):
    argv, expected = TRAIN_CASES[case]
    argv = [arg.format(**places) for arg in argv]
    if argv[0].startswith("-"):
        argv = ["simclr", *argv]
    if "--dataset" not in argv and "--resume" not in argv:
        argv += ["--dataset", "digits"]
    before = snapshot(places["runs"])
    code = train.main([*argv, "--out", str(places["runs"]), "--quiet"])
    check_one_line(code, capsys.readouterr().err, expected.format(**places))
    assert snapshot(places["runs"]) == before  # nothing written, nothing of the earlier run


EXPORT_CASES = {
    "unfinished run": (["{earlier}", "--name", "m"], "the run is unfinished"),
    "no run": (["{tmp}/nowhere", "--name", "m"], "does not exist"),
    "no name": (["{finished}"], "--name is required"),
    "bad name": (["{finished}", "--name", "a b"], "model name 'a b' is not accepted"),
    "no baseline": (["{finished}", "--name", "m", "--model", "baseline"], "no baseline.keras"),
    "unknown model": (["{finished}", "--name", "m", "--model", "probe"], "invalid choice"),
    "version 0": (["{finished}", "--name", "m", "--version", "0"], "--version must be"),
    "top-k 0": (["{finished}", "--name", "m", "--top-k", "0"], "--top-k must be >= 1, got 0"),
    "verify a non-export": (["--verify", "{tmp}"], "is not a SavedModel version directory"),
}


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_export_rejects(case, places, capsys, tmp_path):
    from kerassl.testing.fake_run import make_run_dir

    finished = places["tmp"] / "finished"
    if not finished.exists():
        make_run_dir(finished)
    argv, expected = EXPORT_CASES[case]
    argv = [arg.format(finished=finished, **places) for arg in argv]
    before = snapshot(places["runs"])
    code = export.main([*argv, "--out", str(tmp_path / "export")])
    check_one_line(code, capsys.readouterr().err, expected)
    assert not (tmp_path / "export").exists()
    assert snapshot(places["runs"]) == before


def test_the_sweep_covers_at_least_30_kinds():
    assert len(TRAIN_CASES) + len(EXPORT_CASES) >= 30
