"""Evaluation of frozen encoders: linear probe, weighted kNN and its training monitor."""

from kerassl.evaluation.knn import KNNMonitor, knn_accuracy, knn_predict
from kerassl.evaluation.probes import (
    ProbeResult,
    choose_c,
    extract_features,
    fold_into_dense,
    linear_probe,
)

__all__ = [
    "KNNMonitor",
    "ProbeResult",
    "choose_c",
    "extract_features",
    "fold_into_dense",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
]
