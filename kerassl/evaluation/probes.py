"""The linear probe: logistic regression on a frozen encoder's features.

The linear evaluation protocol of SimCLR (Chen et al. 2020, §4 / B.5): a multinomial
logistic regression on frozen features, here fitted with L-BFGS on standardised features,
its L2 strength chosen by cross-validation on the labeled training examples only.

At 100 labels one 5-fold split scores each C on 100 held-out predictions, so the fold
assignment alone can decide C: on a MoCo encoder it picked C = 1e-3, 5.3 points below the
best C on test, where C = 0.1 … 10 differ by at most 2.3. The folds are therefore repeated
with fresh shuffles until each C is scored on at least `MIN_CV_PREDICTIONS` held-out
predictions (at most `MAX_CV_REPEATS` times). Over 18 Fashion-MNIST encoders this left the
mean test top-1 unchanged and cut the worst loss to the best C from 5.3 to 3.5 points
(`benchmarks/probe_c.py`); what remains is the noise of the 100 examples themselves.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import keras
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from kerassl.errors import UserError
from kerassl.evaluation.metrics import topk_accuracy

# Inverse L2 strengths tried by cross-validation (a log grid, as in SimCLR's linear eval).
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
# Cross-validation is repeated until each C is scored on this many held-out predictions...
MIN_CV_PREDICTIONS = 500
# ... but at most this many times (5 x 5 folds at 100 labels; one 5-fold from 500 labels).
MAX_CV_REPEATS = 5
# Logit of a class absent from the probe's training labels: probability 0.
_ABSENT_CLASS_LOGIT = -1e9
# Below this many training feature values, BLAS/OpenMP run single-threaded: on small probes
# their thread pools only spin against TensorFlow's (measured 10x slower on 2 busy cores).
_SINGLE_THREAD_BELOW = 2_000_000


@dataclass
class ProbeResult:
    """Scores of a linear probe on the test split (fractions in [0, 1]).

    Attributes:
        top1: top-1 accuracy on the whole test split.
        top5: top-5 accuracy, or None when there are 5 classes or fewer.
        num_train: labeled training examples the probe saw.
        num_test: test examples scored.
        c: chosen inverse L2 strength C of the logistic regression.
        cv_accuracy: mean cross-validation accuracy of `c` on the training examples, or
            None when a class has a single example (then `c` is the default).
        cv_folds: number of stratified folds (0 without cross-validation).
        cv_repeats: times the k-fold split was repeated with a fresh shuffle.
        converged: whether the final L-BFGS fit converged within its iteration budget.
    """

    top1: float
    top5: float | None
    num_train: int
    num_test: int
    c: float
    cv_accuracy: float | None
    cv_folds: int
    cv_repeats: int
    converged: bool


def _probe_pipeline(c: float, max_iter: int) -> Pipeline:
    return Pipeline(
        [("scale", StandardScaler()), ("logreg", LogisticRegression(C=c, max_iter=max_iter))]
    )


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    labels = np.asarray(labels).astype(np.int64).ravel()
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise UserError(
            f"{what} labels must be in [0, {num_classes}); got {int(bad[0])} "
            "(unlabeled examples, -1, cannot train or score a probe)"
        )
    return labels


def choose_c(
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    c_grid=C_GRID,
    default_c: float = 1.0,
    max_iter: int = 1000,
) -> tuple[float, float | None, int, int]:
    """Chooses C by repeated stratified k-fold cross-validation on labeled training features.

    k = min(5, examples in the smallest class), repeated with fresh shuffles until each C
    is scored on `MIN_CV_PREDICTIONS` held-out predictions (at most `MAX_CV_REPEATS`
    times); with a class of one example no split is possible and `default_c` is returned.
    Scaling is fitted inside each fold.

    Returns:
        `(c, mean_cv_accuracy or None, folds, repeats)`; ties go to the smaller C
        (stronger regularisation).
    """
    counts = np.unique(labels, return_counts=True)[1]
    folds = int(min(5, counts.min()))
    if folds < 2:
        return float(default_c), None, 0, 0
    repeats = min(MAX_CV_REPEATS, math.ceil(MIN_CV_PREDICTIONS / len(labels)))
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    best_c, best_score = float(default_c), -1.0
    for c in sorted(c_grid):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            score = float(
                np.mean(
                    cross_val_score(_probe_pipeline(c, max_iter), features, labels, cv=splitter)
                )
            )
        if score > best_score:
            best_c, best_score = float(c), score
    return best_c, best_score, folds, repeats


def fold_into_dense(
    mean: np.ndarray,
    scale: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    classes: np.ndarray,
    num_classes: int,
) -> keras.layers.Dense:
    """A softmax `Dense` equal to standardisation + logistic regression.

    With x' = (x − μ)/σ and logits x'W + b: W' = W/σ (row-wise), b' = b − (μ/σ)·W. A binary
    scikit-learn model (one coefficient row w, P(class 1) = sigmoid(x'w + b)) becomes the
    two logits ∓(x'w + b)/2, whose softmax is the same probability. Classes never seen in
    training get logit −1e9 (probability 0).
    """
    coef = np.asarray(coef, np.float64)
    intercept = np.asarray(intercept, np.float64)
    if len(classes) == 2 and coef.shape[0] == 1:
        coef = np.concatenate([-coef / 2, coef / 2])  # [2, D]
        intercept = np.concatenate([-intercept / 2, intercept / 2])  # [2]
    weights_present = coef.T / scale[:, None]  # [D, C'] W/σ
    bias_present = intercept - (mean / scale) @ coef.T  # [C'] b − μ·W/σ
    kernel = np.zeros((len(mean), num_classes))
    bias = np.full(num_classes, _ABSENT_CLASS_LOGIT)
    kernel[:, classes] = weights_present
    bias[classes] = bias_present
    dense = keras.layers.Dense(num_classes, activation="softmax", name="linear_probe")
    dense.build((None, len(mean)))
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return dense


@dataclass
class FittedProbe:
    """A fitted linear probe: standardisation + logistic regression, and how C was chosen.

    Attributes:
        pipeline: the fitted scikit-learn `Pipeline` (scale, logreg).
        num_classes: number of classes of the dataset.
        c, cv_accuracy, cv_folds, cv_repeats, converged: as in `ProbeResult`.
        num_train: labeled examples it was fitted on.
    """

    pipeline: Pipeline
    num_classes: int
    c: float
    cv_accuracy: float | None
    cv_folds: int
    cv_repeats: int
    converged: bool
    num_train: int

    def scores(self, features: np.ndarray) -> np.ndarray:
        """float64 [N, num_classes] class probabilities (0 for classes absent in training)."""
        features = np.asarray(features, np.float64)
        probabilities = np.zeros((len(features), self.num_classes))
        if len(features):
            classes = self.pipeline.named_steps["logreg"].classes_
            probabilities[:, classes] = self.pipeline.predict_proba(features)
        return probabilities

    def dense(self) -> keras.layers.Dense:
        """The probe as a softmax `Dense(num_classes)` on raw features (`fold_into_dense`)."""
        scaler, logreg = self.pipeline.named_steps["scale"], self.pipeline.named_steps["logreg"]
        return fold_into_dense(
            scaler.mean_,
            scaler.scale_,
            logreg.coef_,
            logreg.intercept_,
            logreg.classes_,
            self.num_classes,
        )


def fit_linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    seed: int = 0,
    c_grid=C_GRID,
    default_c: float = 1.0,
    max_iter: int = 1000,
) -> FittedProbe:
    """Fits the probe on labeled training features only (C by `choose_c`); see
    `linear_probe` for the arguments. No test data enters: score with `.scores`.

    Raises:
        UserError: labels outside [0, num_classes) or fewer than 2 classes.
    """
    train_features = np.asarray(train_features, np.float64)
    train_labels = _check_labels(train_labels, num_classes, "training")
    if len(np.unique(train_labels)) < 2:
        raise UserError(
            "a linear probe needs labeled examples of at least 2 classes; got "
            f"{len(train_labels)} example(s) of class(es) {sorted(set(train_labels.tolist()))}"
        )
    threads = 1 if train_features.size < _SINGLE_THREAD_BELOW else None
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        c, cv_accuracy, folds, repeats = choose_c(
            train_features, train_labels, seed, c_grid, default_c, max_iter
        )
        pipeline = _probe_pipeline(c, max_iter)
        pipeline.fit(train_features, train_labels)
    return FittedProbe(
        pipeline=pipeline,
        num_classes=num_classes,
        c=c,
        cv_accuracy=cv_accuracy,
        cv_folds=folds,
        cv_repeats=repeats,
        converged=bool(np.all(pipeline.named_steps["logreg"].n_iter_ < max_iter)),
        num_train=len(train_labels),
    )


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    seed: int = 0,
    c_grid=C_GRID,
    default_c: float = 1.0,
    max_iter: int = 1000,
) -> tuple[ProbeResult, keras.layers.Dense]:
    """Linear evaluation of frozen features: logistic regression, scored once on test.

    Features are standardised with the training statistics; a multinomial logistic
    regression (L-BFGS, L2) is fitted on all training features with C chosen by
    `choose_c` (cross-validation on the training labels only); the test split is used
    once, to score. Top-5 is reported when `num_classes > 5`.

    Args:
        train_features: [N, D] features of the labeled training examples.
        train_labels: [N] labels in [0, num_classes), at least two distinct classes.
        test_features: [T, D] features of the test split.
        test_labels: [T] labels in [0, num_classes).
        num_classes: number of classes of the dataset (width of the returned layer).
        seed: seed of the cross-validation folds.
        c_grid: candidate inverse L2 strengths.
        default_c: C used when some class has a single example (no cross-validation).
        max_iter: L-BFGS iteration budget.

    Returns:
        `(result, dense)`: a `ProbeResult` and a `Dense(num_classes, "softmax")` whose
        weights fold the standardisation into the regression, so that
        `dense(encoder(images))` reproduces the probe's `predict_proba`.
    """
    test_labels = _check_labels(test_labels, num_classes, "test")
    probe = fit_linear_probe(
        train_features, train_labels, num_classes, seed, c_grid, default_c, max_iter
    )
    accuracy = topk_accuracy(probe.scores(test_features), test_labels, ks=(1, 5))
    result = ProbeResult(
        top1=accuracy["top1"],
        top5=accuracy.get("top5"),
        num_train=probe.num_train,
        num_test=len(test_labels),
        c=probe.c,
        cv_accuracy=probe.cv_accuracy,
        cv_folds=probe.cv_folds,
        cv_repeats=probe.cv_repeats,
        converged=probe.converged,
    )
    return result, probe.dense()
