"""The evaluation and benchmark figures, one PNG per function.

Every function draws on its own `matplotlib.figure.Figure` rendered by the Agg canvas
(pyplot is never imported: no global figure registry to close, no display, no backend
switch for the rest of the process) and writes the PNG atomically (a temporary file in the
same directory, then renamed), as every file of a run directory is written. The parent
directory must exist. Accuracies are given as fractions and drawn as percentages.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, NullLocator

from kerassl.errors import UserError

CONFUSION_TEXT_MAX_CLASSES = 20  # counts are written in the cells up to this many classes
CONFUSION_NAMES_MAX_CLASSES = 40  # class names label the axes up to this many classes
CURVE_COLUMNS = ("epoch", "loss", "knn_accuracy")  # what `read_history` returns


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    """Renders `figure` as a PNG and writes it to `path` atomically."""
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def class_colors(num_classes: int) -> np.ndarray:
    """[K, 4] RGBA colours, one per class: tab10 up to 10 classes, tab20 up to 20, then
    evenly spaced hues (neighbouring classes alternate light and dark)."""
    if num_classes <= 10:
        return colormaps["tab10"](np.arange(num_classes))
    if num_classes <= 20:
        return colormaps["tab20"](np.arange(num_classes))
    hues = colormaps["hsv"](np.arange(num_classes) / num_classes)
    hues[1::2, :3] *= 0.6  # darker every other class
    return hues


def confusion_png(
    confusion: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """A confusion matrix as a heat map, each row normalised by its class size.

    Colour = fraction of the true class predicted as the column's class (the row of a class
    without examples is grey); the counts are written in the cells for K ≤ 20. Rows are
    true classes, columns predicted ones.

    Args:
        confusion: int [K, K] counts (`metrics.confusion_matrix`).
        class_names: K names.
        path: the PNG to write.
        title: defaults to the number of examples and the accuracy.

    Returns:
        `path` as a `Path`.
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or not len(confusion):
        raise ValueError(f"confusion must be [K, K] with K >= 1. Received: shape={confusion.shape}")
    k = len(confusion)
    if len(class_names) != k:
        raise ValueError(f"class_names must hold {k} names. Received: {len(class_names)} names")
    support = confusion.sum(axis=1, keepdims=True)  # [K, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(support > 0, confusion / np.maximum(support, 1), np.nan)  # [K, K]
    total = int(confusion.sum())
    if title is None:
        accuracy = np.trace(confusion) / total if total else math.nan
        title = f"confusion matrix: {total} images, accuracy {100 * accuracy:.1f} %"

    side = min(max(4.5, 0.45 * k + 2.5), 18.0)
    figure = _new_figure(side + 1.2, side)
    axes = figure.add_subplot()
    blues = colormaps["Blues"].with_extremes(bad="0.85")  # grey: a class without examples
    image = axes.imshow(fractions, cmap=blues, vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    axes.set_title(title)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if k <= CONFUSION_NAMES_MAX_CLASSES:
        axes.set_xticks(range(k), [str(name) for name in class_names], rotation=45, ha="right")
        axes.set_yticks(range(k), [str(name) for name in class_names])
    if k <= CONFUSION_TEXT_MAX_CLASSES:
        # Cell borders, and the counts in dark or light text for contrast.
        axes.set_xticks(np.arange(k + 1) - 0.5, minor=True)
        axes.set_yticks(np.arange(k + 1) - 0.5, minor=True)
        axes.grid(which="minor", color="white", linewidth=1)
        axes.tick_params(which="minor", length=0)
        for i in range(k):
            for j in range(k):
                dark = np.nan_to_num(fractions[i, j]) > 0.5
                axes.text(
                    j,
                    i,
                    str(int(confusion[i, j])),
                    ha="center",
                    va="center",
                    fontsize=8 if k > 10 else 10,
                    color="white" if dark else "black",
                )
    return _save(figure, path)


def accuracy_vs_labels_png(
    points: Iterable[Mapping], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Top-1 accuracy against the number of labeled images, one line per series.

    Args:
        points: dicts `{"series": "simclr + linear", "labels": 100, "mean": 0.72,
            "std": 0.01}` (`labels` = labeled images, `mean`/`std` = fractions over seeds;
            a missing or NaN `std` draws no error bar, a NaN `mean` no point). Series are
            drawn in the order they first appear, each sorted by `labels`.
        path: the PNG to write.
        title: defaults to "accuracy vs labeled images".

    Returns:
        `path` as a `Path`.
    """
    series: dict[str, list[tuple[float, float, float]]] = {}
    for point in points:
        missing = {"series", "labels", "mean"} - set(point)
        if missing:
            raise ValueError(f"every point needs series, labels, mean. Received: {dict(point)}")
        if not point["labels"] > 0:
            raise ValueError(f"labels must be > 0 (log axis). Received: {dict(point)}")
        std = point.get("std")
        series.setdefault(str(point["series"]), []).append(
            (float(point["labels"]), float(point["mean"]), math.nan if std is None else float(std))
        )
    if not series:
        raise ValueError("points is empty: nothing to draw")

    figure = _new_figure(7.0, 4.8)
    axes = figure.add_subplot()
    counts = set()
    colors = class_colors(len(series))  # distinct beyond matplotlib's 10-colour cycle
    for color, (name, rows) in zip(colors, series.items(), strict=True):
        labels, mean, std = np.array(sorted(rows)).T  # [P] each
        drawn = np.isfinite(mean)
        counts.update(labels[drawn].tolist())
        errors = np.where(np.isfinite(std), 100 * std, 0.0)[drawn]
        axes.errorbar(
            labels[drawn],
            100 * mean[drawn],
            yerr=errors,
            marker="o",
            capsize=3,
            label=name,
            color=color,
        )
    axes.set_xscale("log")
    if counts:  # ticks at the label budgets, written as plain numbers
        axes.set_xticks(sorted(counts), [f"{c:g}" for c in sorted(counts)])
        axes.xaxis.set_minor_locator(NullLocator())
        axes.xaxis.set_minor_formatter(NullFormatter())
        low, high = min(counts), max(counts)
        axes.set_xlim(low / 1.5, high * 1.5)
    axes.set_xlabel("labeled images")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(title or "accuracy vs labeled images")
    axes.grid(True, which="major", alpha=0.4)
    axes.legend(loc="best", fontsize="small")
    return _save(figure, path)


def curves_png(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Pretraining curves: the loss and the kNN accuracy per epoch, one line per series.

    Args:
        curves: `{series: {"epoch": [...], "loss": [...], "knn_accuracy": [...]}}` (as
            from `read_history`); kNN epochs that are NaN (not evaluated) are skipped, a
            missing "loss" or "knn_accuracy" leaves the series out of that panel. A series
            keeps its colour in both panels.
        path: the PNG to write.
        title: the figure's title, defaults to "pretraining".

    Returns:
        `path` as a `Path`.
    """
    if not curves:
        raise ValueError("curves is empty: nothing to draw")
    figure = _new_figure(11.0, 4.4)
    loss_axes, knn_axes = figure.subplots(1, 2)
    colors = class_colors(len(curves))
    drawn = {"loss": 0, "knn_accuracy": 0}
    for color, (name, curve) in zip(colors, curves.items(), strict=True):
        if "epoch" not in curve:
            raise ValueError(f"curve {name!r} has no 'epoch'. Received keys: {sorted(curve)}")
        epoch = np.asarray(curve["epoch"], np.float64)  # [E]
        for key, axes, scale in (("loss", loss_axes, 1.0), ("knn_accuracy", knn_axes, 100.0)):
            if key not in curve:
                continue
            values = np.asarray(curve[key], np.float64)  # [E]
            if values.shape != epoch.shape:
                raise ValueError(
                    f"curve {name!r}: {key} and epoch differ in length "
                    f"({len(values)} vs {len(epoch)})"
                )
            kept = np.isfinite(values)
            if kept.any():
                axes.plot(epoch[kept], scale * values[kept], marker=".", color=color, label=name)
                drawn[key] += 1
    for key, axes, ylabel, what in (
        ("loss", loss_axes, "pretraining loss", "pretraining loss"),
        ("knn_accuracy", knn_axes, "kNN top-1 accuracy (%)", "kNN accuracy"),
    ):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(ylabel)
        axes.set_title(what)
        axes.grid(True, alpha=0.4)
        if drawn[key]:
            axes.legend(loc="best", fontsize="small")
        else:
            axes.text(
                0.5,
                0.5,
                f"no {what} recorded",
                ha="center",
                va="center",
                transform=axes.transAxes,
                color="gray",
            )
    figure.suptitle(title or "pretraining")
    return _save(figure, path)


def embedding_png(
    points: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """A 2-D scatter of embedded examples, one colour per class, with a legend.

    Args:
        points: [N, 2] coordinates (e.g. a t-SNE map).
        labels: [N] classes in [0, len(class_names)).
        class_names: the name of each class; classes absent from `labels` are left out
            of the legend.
        path: the PNG to write.
        title: defaults to "embedding".

    Returns:
        `path` as a `Path`.
    """
    points = np.asarray(points, np.float64)
    labels = np.asarray(labels).astype(np.int64).ravel()
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise ValueError(
            f"points must be [N, 2] and labels [N]. Received: points.shape={points.shape}, "
            f"labels.shape={labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"labels must be in [0, {len(class_names)}) (one class name each). Received: "
            f"values in [{labels.min()}, {labels.max()}]"
        )
    present = np.unique(labels)
    columns = max(1, math.ceil(len(present) / 25))
    figure = _new_figure(7.0 + 1.6 * columns, 6.0)
    axes = figure.add_subplot()
    colors = class_colors(len(class_names))
    size = 24 if len(points) <= 500 else 8
    for label in present:
        chosen = labels == label
        axes.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=size,
            color=colors[label],
            alpha=0.8,
            linewidths=0,
            label=str(class_names[label]),
        )
    axes.set_title(title or "embedding")
    axes.set_xlabel("dimension 1")
    axes.set_ylabel("dimension 2")
    axes.grid(True, alpha=0.3)
    axes.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        ncols=columns,
        markerscale=1.5,
        frameon=False,
        title="class",
    )
    return _save(figure, path)


def read_history(path: str | os.PathLike) -> dict[str, list[float]]:
    """A run's pretraining history in `curves_png`'s form.

    Args:
        path: a run directory or its history.csv (`kerassl.checkpoint.write_history`: one
            row per epoch, "NA" where an epoch has no value).

    Returns:
        `{"epoch": [...], "loss": [...], "knn_accuracy": [...]}` as floats (NaN for NA);
        a column the file lacks is omitted, other columns are ignored.

    Raises:
        UserError: the file is missing or is not a history CSV with an "epoch" column.
    """
    import pandas as pd

    from kerassl.run_dir import HISTORY

    path = Path(path)
    if path.is_dir():
        path = path / HISTORY
    if not path.is_file():
        raise UserError(f"no pretraining history at {path}")
    try:
        table = pd.read_csv(path, na_values=["NA"])
    except (ValueError, pd.errors.ParserError) as error:
        raise UserError(f"{path} is not a history CSV: {error}") from None
    if "epoch" not in table.columns:
        raise UserError(f"{path} is not a history CSV: it has no 'epoch' column")
    try:
        return {
            column: table[column].astype(np.float64).tolist()
            for column in CURVE_COLUMNS
            if column in table.columns
        }
    except ValueError as error:
        raise UserError(f"{path} is not a history CSV: {error}") from None
