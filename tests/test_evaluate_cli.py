"""`kerassl evaluate`: a run directory, an encoder file and a KerasHub preset end to end on
the digits; bad input is one line, exit 2, and writes nothing."""

import csv
import json

import numpy as np
import pytest

from kerassl.evaluate import main
from kerassl.testing.fake_run import make_run_dir
from kerassl.testing.png import read_png

DIGITS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run directory (untrained 16-px encoder) whose dataset is the digits."""
    path = make_run_dir(
        tmp_path_factory.mktemp("evaluate") / "run",
        image_size=16,
        num_classes=10,
        class_names=DIGITS,
    )
    config = json.loads((path / "config.json").read_text())
    config.update(dataset="digits", augment="digits", labels="100", validation=0.2)
    (path / "config.json").write_text(json.dumps(config))
    return path


def _listing(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def test_run_directory_end_to_end(run, tmp_path):
    out = tmp_path / "eval"
    argv = [str(run), "--protocol", "linear,knn", "--labels", "1/class,50", "--seeds", "0-1"]
    assert main([*argv, "--diagnostic-images", "64", "--out", str(out), "--quiet"]) == 0
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(r["protocol"], r["labels"], r["seed"]) for r in rows] == [
        (p, b, s) for p in ("linear", "knn") for b in ("1/class", "50") for s in ("0", "1")
    ]
    assert {r["num_labeled"] for r in rows if r["labels"] == "1/class"} == {"10"}
    assert all(0 <= float(r["top1"]) <= float(r["top5"]) <= 1 for r in rows)
    markdown = (out / "results.md").read_text()
    assert "| linear |" in markdown and "| knn |" in markdown and "(n=2)" in markdown
    assert "1/class labels" in markdown
    confusion = sorted(p.name for p in (out / "confusion").iterdir())
    assert confusion == sorted(
        f"{p}_{b}.{ext}"
        for p in ("linear", "knn")
        for b in ("1-per-class", "50")
        for ext in ("csv", "png")
    )
    with open(out / "confusion" / "knn_50.csv") as file:
        counts = np.array([row[1:] for row in list(csv.reader(file))[1:]], int)
    num_test = json.loads((out / "evaluation.json").read_text())["num_test"]
    assert counts.shape == (10, 10) and counts.sum() == 2 * num_test  # two seeds summed
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    assert set(diagnostics) >= {"intra", "inter", "gap", "uniformity", "alignment"}
    assert diagnostics["num_images"] == 64
    read_png(out / "tsne.png")
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # no temporary left behind


def test_encoder_file_with_dataset_default_out(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [str(run / "encoder.keras"), "--dataset", "digits", "--protocol", "1nn,mlp"]
    assert main([*argv, "--labels", "30", "--no-diagnostics", "--max-epochs", "3", "--quiet"]) == 0
    (out,) = (tmp_path / "evals").iterdir()
    assert out.name.startswith("encoder-")
    assert not (out / "diagnostics.json").exists()
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert [r["protocol"] for r in rows] == ["1nn", "mlp"]
    assert "early stopping on 10 validation labels" in rows[1]["schedule"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--protocol", "svm"], "unknown protocol 'svm'"),
        (["--seeds", "a"], "--seeds must be integers"),
        (["--seeds", "3-1"], "ends before it starts"),
        (["--labels", "0/class"], "labels must be"),
        (["--labels", "50,100000"], "too few labeled examples"),
        (["--validation", "1.5"], "--validation must be in [0, 1)"),
        (["--knn-k", "0"], "--knn-k must be an integer >= 1"),
        (["--encoder-lr-scale", "2"], "--encoder-lr-scale must be in (0, 1]"),
        (["--augment", "crp"], "unknown augmentation"),
        (["--diagnostic-images", "1"], "--diagnostic-images"),
        (["--image-size", "32"], "takes 16-px images"),
        (["--epochs", "3"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys, argv, message):
    before = _listing(run)
    assert main([str(run), *argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kerassl: error:") and "\n" not in err and message in err, err
    assert _listing(run) == before and not (tmp_path / "out").exists()


def test_config_file_with_command_line_override(run, tmp_path, capsys):
    config = tmp_path / "evaluate.yaml"
    config.write_text("protocol: knn,1nn\nlabels: 30\nseeds: 0-1\nknn_k: 3\nno_diagnostics: true\n")
    out = tmp_path / "eval"
    assert main([str(run), "--config", str(config), "--seeds", "4", "--out", str(out)]) == 0
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(r["protocol"], r["seed"]) for r in rows] == [("knn", "4"), ("1nn", "4")]
    assert json.loads(rows[0]["selected"])["k"] == 3 and not (out / "tsne.png").exists()
    config.write_text("protocols: knn\n")
    assert main([str(run), "--config", str(config), "--out", str(tmp_path / "x")]) == 2
    assert "did you mean protocol?" in capsys.readouterr().err


def test_bad_sources(run, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"method": "simclr"}))
    cases = [
        ([str(run / "encoder.keras")], "needs --dataset"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path / "missing.keras"), "--dataset", "digits"], "does not exist"),
        ([str(unfinished)], "has no encoder.keras"),
        ([str(run), "--out", str(tmp_path / "out")], "already exists"),
    ]
    for argv, message in cases:
        assert main([*argv, "--quiet"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "unfinished"]


def test_kerashub_preset_linear_protocol(tmp_path):
    """A tiny randomly initialised DINOv2 saved as a preset, evaluated on the digits."""
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=8,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(32, 32, 3),
        position_embedding_shape=(32, 32, 3),
    )
    converter = keras_hub.layers.DINOV2ImageConverter(image_size=(32, 32), scale=1 / 255.0)
    preset = tmp_path / "dinov2_tiny"
    backbone.save_to_preset(str(preset))
    converter.save_to_preset(str(preset))
    out = tmp_path / "eval"
    argv = [str(preset), "--dataset", "digits", "--image-size", "16", "--labels", "50"]
    assert main([*argv, "--no-diagnostics", "--out", str(out), "--quiet"]) == 0
    with open(out / "results.csv") as file:
        (row,) = csv.DictReader(file)
    assert row["protocol"] == "linear" and float(row["top1"]) > 0.1  # above chance
    assert json.loads((out / "evaluation.json").read_text())["kind"] == "hub"
