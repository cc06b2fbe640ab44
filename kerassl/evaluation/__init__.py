"""Evaluation of frozen encoders and classifiers.

- `features`: `extract_features`, a frozen model run over uint8 images batch by batch.
- `metrics`: `topk_accuracy`, the one scoring rule of everything below.
- `probes`: the linear probe (`linear_probe`, `choose_c`, `fold_into_dense`).
- `knn`: the weighted kNN (`knn_scores`, `knn_predict`, `knn_accuracy`) and `KNNMonitor`.
"""

from kerassl.evaluation.features import extract_features
from kerassl.evaluation.knn import KNNMonitor, knn_accuracy, knn_predict, knn_scores
from kerassl.evaluation.metrics import topk_accuracy
from kerassl.evaluation.probes import ProbeResult, choose_c, fold_into_dense, linear_probe

__all__ = [
    "KNNMonitor",
    "ProbeResult",
    "choose_c",
    "extract_features",
    "fold_into_dense",
    "knn_accuracy",
    "knn_predict",
    "knn_scores",
    "linear_probe",
    "topk_accuracy",
]
