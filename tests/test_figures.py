"""Each figure writes one valid PNG, for ordinary and edge inputs; read_history reads a
history.csv as `kerassl.checkpoint.write_history` writes it."""

import math

import numpy as np
import pandas as pd
import pytest

from kerassl.errors import UserError
from kerassl.evaluation.figures import (
    accuracy_vs_labels_png,
    confusion_png,
    curves_png,
    embedding_png,
    read_history,
)
from kerassl.testing.png import read_png


@pytest.mark.parametrize("k", [2, 25])
def test_confusion_png(tmp_path, k):
    rng = np.random.default_rng(k)
    confusion = rng.integers(0, 30, (k, k)) + np.diag(np.full(k, 50))
    confusion[-1] = 0  # a class without examples
    names = [f"class {i}" for i in range(k)]
    path = confusion_png(confusion, names, tmp_path / "confusion.png", title=f"K = {k}")
    assert path == tmp_path / "confusion.png"
    pixels = read_png(path)
    assert min(pixels.shape[:2]) >= 400
    assert pixels.std() > 0  # something was drawn
    with pytest.raises(ValueError, match="class_names"):
        confusion_png(confusion, names[:-1], tmp_path / "bad.png")


def test_accuracy_vs_labels_png(tmp_path):
    points = [
        {"series": "simclr + linear", "labels": labels, "mean": mean, "std": 0.01}
        for labels, mean in ((1000, 0.9), (100, 0.72), (10, 0.4))
    ]
    points += [
        {"series": "supervised", "labels": 100, "mean": 0.6, "std": float("nan")},
        {"series": "supervised", "labels": 1000, "mean": 0.85},  # no std
        {"series": "supervised", "labels": 10, "mean": float("nan"), "std": 0.0},  # skipped
    ]
    read_png(accuracy_vs_labels_png(points, tmp_path / "many.png"))
    one = [{"series": "knn", "labels": 40, "mean": 0.5, "std": 0.0}]
    read_png(accuracy_vs_labels_png(one, tmp_path / "one.png", title="one point"))
    with pytest.raises(ValueError, match="empty"):
        accuracy_vs_labels_png([], tmp_path / "none.png")
    with pytest.raises(ValueError, match="needs series, labels, mean"):
        accuracy_vs_labels_png([{"series": "x", "mean": 0.5}], tmp_path / "bad.png")


def test_curves_png(tmp_path):
    nan = float("nan")
    curves = {
        "simclr": {
            "epoch": [0, 1, 2, 3],
            "loss": [5.0, 4.2, 3.9, 3.7],
            "knn_accuracy": [0.3, nan, 0.5, nan],
        },
        "moco": {"epoch": [0, 1], "loss": [7.0, 6.5]},  # no kNN column
    }
    read_png(curves_png(curves, tmp_path / "curves.png", title="digits"))
    no_knn = {"barlow_twins": {"epoch": [0], "loss": [100.0], "knn_accuracy": [nan]}}
    read_png(curves_png(no_knn, tmp_path / "one.png"))
    with pytest.raises(ValueError, match="differ in length"):
        curves_png({"x": {"epoch": [0, 1], "loss": [1.0]}}, tmp_path / "bad.png")


def test_read_history(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # As checkpoint.write_history writes it: epoch first, then the sorted keys, NA gaps.
    (run / "history.csv").write_text(
        "epoch,knn_accuracy,learning_rate,loss\n0,0.25,0.1,5.5\n1,NA,0.1,4.25\n2,0.5,0.05,4\n"
    )
    columns = pd.read_csv(run / "history.csv").columns.tolist()
    assert columns == ["epoch", "knn_accuracy", "learning_rate", "loss"]
    history = read_history(run)
    assert list(history) == ["epoch", "loss", "knn_accuracy"]
    assert history["epoch"] == [0.0, 1.0, 2.0] and history["loss"] == [5.5, 4.25, 4.0]
    assert history["knn_accuracy"][0] == 0.25 and math.isnan(history["knn_accuracy"][1])
    from_file = read_history(run / "history.csv")
    assert list(from_file) == list(history)
    for column in history:
        np.testing.assert_array_equal(from_file[column], history[column])  # NaN == NaN here
    read_png(curves_png({"run": history}, tmp_path / "curves.png"))

    (run / "history.csv").write_text("epoch,loss\n0,3.5\n")
    assert read_history(run) == {"epoch": [0.0], "loss": [3.5]}
    with pytest.raises(UserError, match="no pretraining history"):
        read_history(tmp_path / "elsewhere")
    (run / "history.csv").write_text("step,loss\n0,3.5\n")
    with pytest.raises(UserError, match="no 'epoch' column"):
        read_history(run)


def test_embedding_png_legend_for_many_classes(tmp_path):
    rng = np.random.default_rng(5)
    labels = np.arange(60) % 30
    points = rng.normal(size=(60, 2)) + labels[:, None]
    names = [f"c{i}" for i in range(31)]  # class 30 absent
    read_png(embedding_png(points, labels, names, tmp_path / "map.png"))
