"""Weighted k-nearest-neighbour evaluation of frozen features, and its training monitor.

Reference: Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR 2018, §3.4 (weighted kNN with exp(s/τ) votes, τ = 0.07), as used
by the kNN monitors of SimCLR/MoCo/DINO code bases.
"""

from __future__ import annotations

import keras
import numpy as np

from kerassl.evaluation.features import extract_features
from kerassl.evaluation.metrics import topk_accuracy


def _check(k: int, temperature: float) -> None:
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"k must be an integer >= 1. Received: k={k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")


def _normalize(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def knn_scores(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Class scores of a cosine-similarity weighted kNN vote.

    Each query takes its k most similar bank vectors (cosine similarity sᵢ) and class c
    scores Σ_{i ∈ top-k, yᵢ = c} exp(sᵢ / τ) (scaled by a constant per query). k = 1 is
    the plain 1-NN classifier. k larger than the bank uses the whole bank.

    Args:
        train_features: [M, D] bank features.
        train_labels: [M] integer labels >= 0.
        test_features: [Q, D] query features.
        k: neighbours per query (>= 1).
        temperature: τ > 0 of the exp(s/τ) votes.
        chunk_size: queries per similarity block (bounds memory to chunk_size × M floats).

    Returns:
        float64 [Q, C] votes, C = largest bank label + 1.
    """
    _check(k, temperature)
    labels = np.asarray(train_labels).astype(np.int64).ravel()
    if len(labels) == 0 or len(labels) != len(train_features):
        raise ValueError(
            "train_features and train_labels must have the same, non-zero length. Received: "
            f"{len(train_features)} features, {len(labels)} labels"
        )
    if labels.min() < 0:
        raise ValueError(f"train_labels must be >= 0. Received: min label {labels.min()}")
    bank = _normalize(train_features)  # [M, D]
    queries = _normalize(test_features)  # [Q, D]
    k = min(int(k), len(bank))
    scores = np.zeros((len(queries), int(labels.max()) + 1))
    for start in range(0, len(queries), chunk_size):
        similarity = queries[start : start + chunk_size] @ bank.T  # [q, M] cosine
        if k < len(bank):
            top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]  # [q, k] unordered
        else:
            top = np.broadcast_to(np.arange(len(bank)), similarity.shape)
        top_similarity = np.take_along_axis(similarity, top, axis=1).astype(np.float64)
        # exp((s − 1)/τ) ∝ exp(s/τ) per query, without overflow for small τ.
        weights = np.exp((top_similarity - 1.0) / temperature)  # [q, k]
        rows = start + np.arange(len(top))[:, None]
        np.add.at(scores, (rows, labels[top]), weights)
    return scores


def knn_predict(
    train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, **options
) -> np.ndarray:
    """[Q] int64 best classes of the `knn_scores` vote (the smallest label on a tie);
    `options` are those of `knn_scores` (k, temperature, chunk_size)."""
    return np.argmax(knn_scores(train_features, train_labels, test_features, **options), axis=1)


def knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of the `knn_scores` vote on labeled queries (fraction in [0, 1])."""
    scores = knn_scores(train_features, train_labels, test_features, k, temperature)
    return topk_accuracy(scores, test_labels, ks=(1,))["top1"]


class KNNMonitor(keras.callbacks.Callback):
    """Logs the kNN accuracy of the model's encoder during (pre)training.

    Every `every` epochs (and at the first epoch of each `fit`, so the column exists in
    `CSVLogger` files) it embeds a small labeled bank and a labeled query set with
    `model.encoder` (the model itself if it has no `encoder`), and writes
    `logs[name] = knn_accuracy(...)`. Place it before `CSVLogger`/`TensorBoard` in the
    callback list so that they record the value; epochs without it show as "NA".

    Use labels from the training split only (e.g. the labeled set as bank and the
    validation set as queries): the test split stays unseen.

    Args:
        x_bank: uint8 images [M, H, W, C] of the bank.
        y_bank: [M] labels.
        x_query: uint8 images [Q, H, W, C] to classify.
        y_query: [Q] labels.
        k: neighbours (>= 1).
        temperature: τ > 0 of the votes.
        every: period in epochs (>= 1).
        batch_size: embedding batch size.
        name: key written into the logs.
    """

    def __init__(
        self,
        x_bank: np.ndarray,
        y_bank: np.ndarray,
        x_query: np.ndarray,
        y_query: np.ndarray,
        k: int = 20,
        temperature: float = 0.07,
        every: int = 1,
        batch_size: int = 256,
        name: str = "knn_accuracy",
    ):
        super().__init__()
        _check(k, temperature)
        if not (isinstance(every, (int, np.integer)) and every >= 1):
            raise ValueError(f"every must be an integer >= 1. Received: every={every}")
        self.x_bank, self.y_bank = x_bank, np.asarray(y_bank)
        self.x_query, self.y_query = x_query, np.asarray(y_query)
        self.k = k
        self.temperature = temperature
        self.every = every
        self.batch_size = batch_size
        self.name = name
        self._first_epoch = True

    def on_train_begin(self, logs=None):
        self._first_epoch = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not (self._first_epoch or (epoch + 1) % self.every == 0):
            return
        self._first_epoch = False
        encoder = getattr(self.model, "encoder", None)
        if encoder is None:
            encoder = self.model
        bank = extract_features(encoder, self.x_bank, self.batch_size)
        query = extract_features(encoder, self.x_query, self.batch_size)
        logs[self.name] = knn_accuracy(
            bank, self.y_bank, query, self.y_query, self.k, self.temperature
        )
