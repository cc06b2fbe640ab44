"""One evaluation cell — a protocol × label budget × split seed on one encoder — as a row.

`kerassl evaluate` and `kerassl benchmark` are loops over cells. A cell draws its label
split (`draw_split`: the seed varies the split only; the encoder stays the same), runs the
protocol on a `Task` that holds no test label, and only then scores the test predictions
(`score`), once.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from kerassl.data.registry import ImageData
from kerassl.data.splits import LabelBudget, Split, label_split
from kerassl.evaluation.metrics import confusion_matrix, per_class_accuracy, topk_accuracy
from kerassl.evaluation.options import ProtocolOptions, budget_name
from kerassl.evaluation.protocols import FeatureCache, Outcome, Task, run_protocol

TOP_K = (1, 2, 3, 4, 5)


def draw_split(data: ImageData, budget: LabelBudget, seed: int, validation: float = 0.2) -> Split:
    """The stratified label split of a cell (`kerassl.data.splits.label_split`)."""
    return label_split(data.y_train, budget, seed, validation)


def feature_cache(encoder: keras.Model, data: ImageData, batch_size: int = 256) -> FeatureCache:
    """A `FeatureCache` of `encoder` over `data`: share it between the cells of one encoder."""
    return FeatureCache(encoder, data.x_train, data.x_test, batch_size)


def score(scores: np.ndarray, y_test: np.ndarray, num_classes: int, ks=TOP_K) -> dict:
    """Top-k for each of `ks` below K, per-class accuracy and the confusion matrix of
    [T, K] test scores, JSON-ready."""
    y_test = np.asarray(y_test).astype(np.int64)
    confusion = confusion_matrix(y_test, np.argmax(scores, axis=1), num_classes)
    per_class = [None if np.isnan(v) else float(v) for v in per_class_accuracy(confusion)]
    return {
        **topk_accuracy(scores, y_test, ks=ks),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def evaluate_cell(protocol: str, encoder: keras.Model, data: ImageData, split: Split, **kwargs):
    """The row of `run_cell` (same arguments)."""
    return run_cell(protocol, encoder, data, split, **kwargs)[0]


def run_cell(
    protocol: str,
    encoder: keras.Model,
    data: ImageData,
    split: Split,
    *,
    preset: str,
    seed: int,
    options: ProtocolOptions | None = None,
    cache: FeatureCache | None = None,
) -> tuple[dict, Outcome]:
    """Runs `protocol` on `split` and scores it on the whole test split.

    Args:
        protocol: a name of `kerassl.evaluation.options.PROTOCOLS`.
        encoder: [0, 1] images → features (fine-tuning works on a copy).
        data: the dataset; the protocol sees its test images, never its test labels.
        split: labeled / validation indices into `data.x_train` (`draw_split`).
        preset: the encoder's augmentation preset (whether flips preserve labels; the
            strong views of `consistency`).
        seed: seed of the protocol's own random choices (initialisation, shuffling).
        options: the protocols' settings.
        cache: features of `encoder` (`feature_cache`), shared between cells.

    Returns:
        `(row, outcome)`: the JSON-ready row — protocol, labels, seed, num_labeled,
        num_validation, top1…top5, schedule, selected, seconds, per_class, confusion —
        and the protocol's `Outcome` (its scores and classifier).
    """
    task = Task.of(data, split, preset, seed)
    start = time.perf_counter()
    outcome = run_protocol(protocol, task, encoder, cache, options)
    seconds = time.perf_counter() - start
    row = {
        "protocol": protocol,
        "labels": budget_name(split.labels) if split.labels is not None else None,
        "seed": split.seed,
        "num_labeled": int(len(split.all_labeled)),
        "num_validation": int(len(split.validation)),
        **score(outcome.scores, data.y_test, data.num_classes, TOP_K if outcome.ranked else (1,)),
        "schedule": outcome.schedule,
        "selected": outcome.selected,
        "seconds": round(seconds, 2),
    }
    return row, outcome
