"""Evaluation of frozen and fine-tuned encoders.

- `options`: what to evaluate (protocols, label budgets, seeds, `ProtocolOptions`); no
  TensorFlow, so that a bad value fails before TensorFlow loads.
- `features`: `extract_features`, a frozen model run over uint8 images batch by batch.
- `metrics`: `topk_accuracy`, the one scoring rule of everything below; confusion matrix.
- `probes`: the linear probe (`fit_linear_probe`, `linear_probe`, `choose_c`,
  `fold_into_dense`).
- `knn`: the weighted kNN (`knn_scores`, `knn_predict`, `knn_accuracy`) and `KNNMonitor`.
- `protocols`: linear, mlp, knn, 1nn and finetune on a `Task` that holds no test label.
- `cells`: one protocol × label budget × seed, drawn, run and scored (`run_cell`).
- `diagnostics`, `figures`: embedding diagnostics and the PNGs of evaluations.
- `hub`: KerasHub vision backbones as encoders (needs `kerassl[hub]`).

The names below are imported on first use, so that `import kerassl.evaluation.options`
does not load TensorFlow.
"""

import importlib

_EXPORTS = {
    "KNNMonitor": "knn",
    "knn_accuracy": "knn",
    "knn_predict": "knn",
    "knn_scores": "knn",
    "ProbeResult": "probes",
    "choose_c": "probes",
    "fit_linear_probe": "probes",
    "fold_into_dense": "probes",
    "linear_probe": "probes",
    "extract_features": "features",
    "topk_accuracy": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"kerassl.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'kerassl.evaluation' has no attribute {name!r}")
