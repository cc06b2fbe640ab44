"""The one rule for choosing an epoch on a few held-out labels (`BestEpoch`,
`best_epoch`), and what an accuracy on those labels is worth afterwards
(`discounted_accuracy`).

Every classifier kerassl trains on the labeled examples (the supervised baselines and the
tuner's trials, the `mlp`, `finetune` and `distill` protocols) keeps the weights of the
epoch this rule picks and stops when it has not improved for `patience` epochs.

With validation labels it picks the epoch of the best *smoothed validation accuracy*, the
smoothed validation loss breaking ties; without them, the lowest training loss. Why not
the validation loss, as Keras' `EarlyStopping` is usually set: on a handful of validation
images the loss rises as soon as the network grows confident on its training images,
while the accuracy is still climbing. On a 32-px colour set at 100 labels (80 training, 20
validation images) the loss was lowest within the first two epochs of every split, and
the restored weights scored at chance (`benchmarks/stopping.py`; the issue that reported
it: a natural-image CNN baseline at 13.5 % after 62 epochs, best epoch + patience 60).
And why smoothed: accuracy on 20 images
moves in steps of 5 %, so a single lucky epoch would win; an exponential moving average
over epochs picks the epoch at the end of a consistently good stretch instead.
"""

from __future__ import annotations

import math

import keras

from kerassl.checks import UNIT_INTERVAL_OPEN, check, integer_at_least

SMOOTHING = 0.6  # weight of the previous average in the moving averages


def epoch_scores(
    history: dict[str, list[float]], validation: bool, smoothing: float = SMOOTHING
) -> list[tuple[float, float]]:
    """Each epoch's score under the rule, larger is better: (smoothed validation accuracy,
    −smoothed validation loss) with validation, else (0, −training loss); an epoch with a
    non-finite value scores (−inf, −inf).

    Args:
        history: Keras `History.history` (`val_accuracy`, `val_loss`, `loss` lists).
        validation: select on the validation metrics (else on the training loss).
        smoothing: weight of the previous average in the exponential moving averages.
    """
    check("smoothing", smoothing, UNIT_INTERVAL_OPEN)
    worst = (-math.inf, -math.inf)
    if not validation:
        return [(0.0, -loss) if math.isfinite(loss) else worst for loss in history["loss"]]
    scores, accuracy, loss = [], None, None
    for acc, val_loss in zip(history["val_accuracy"], history["val_loss"], strict=True):
        if not (math.isfinite(acc) and math.isfinite(val_loss)):
            scores.append(worst)  # and the averages go on without it
            continue
        accuracy = acc if accuracy is None else smoothing * accuracy + (1 - smoothing) * acc
        loss = val_loss if loss is None else smoothing * loss + (1 - smoothing) * val_loss
        # Accuracy to 1e-9, so that float noise in the average cannot outrank the loss.
        scores.append((round(float(accuracy), 9), -float(loss)))
    return scores


def best_epoch(
    history: dict[str, list[float]],
    validation: bool,
    smoothing: float = SMOOTHING,
    start_from_epoch: int = 0,
) -> int:
    """The 1-based epoch the rule keeps: the first of the best `epoch_scores` after the
    first `start_from_epoch` epochs (the last epoch while there is none after them)."""
    scores = epoch_scores(history, validation, smoothing)
    if len(scores) <= start_from_epoch:
        return len(scores)
    later = range(start_from_epoch, len(scores))
    return max(later, key=lambda i: (scores[i], -i)) + 1


class BestEpoch(keras.callbacks.Callback):
    """Keeps the weights of the epoch the rule picks (`best_epoch`), stops after
    `patience` epochs without a better one, and restores them when training ends.

    Args:
        patience: epochs without improvement before training stops.
        validation: whether `fit` is given validation data (select on it) or not (select
            on the training loss).
        smoothing: weight of the previous average in the exponential moving averages of
            the validation accuracy and loss (0 = no smoothing).
        start_from_epoch: epochs trained before any may be kept (and patience counts):
            a network started from a good point (a fine-tuned encoder's probe head) can
            score its best on 20 images at the first epoch by luck alone.

    Attributes:
        best_epoch: 1-based epoch (of this `fit`) whose weights were kept.

    Example:
        >>> stop = BestEpoch(patience=20, validation=True)
        >>> model.fit(x, y, validation_data=(xv, yv), epochs=200, callbacks=[stop])
        >>> stop.best_epoch
        37
    """

    def __init__(
        self,
        patience: int,
        validation: bool,
        smoothing: float = SMOOTHING,
        start_from_epoch: int = 0,
    ):
        super().__init__()
        check("patience", patience, integer_at_least(1))
        check("smoothing", smoothing, UNIT_INTERVAL_OPEN)
        check("start_from_epoch", start_from_epoch, integer_at_least(0))
        self.patience = int(patience)
        self.validation = bool(validation)
        self.smoothing = float(smoothing)
        self.start_from_epoch = int(start_from_epoch)
        self.best_epoch = 0
        self._record: dict[str, list[float]] = {}
        self._best_weights = None

    def on_train_begin(self, logs=None) -> None:
        self._record = {}
        self._best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        for name in ("loss", "val_loss", "val_accuracy"):
            if name in (logs or {}):
                self._record.setdefault(name, []).append(float(logs[name]))
        seen = len(self._record["loss"])
        best = best_epoch(self._record, self.validation, self.smoothing, self.start_from_epoch)
        self.best_epoch = best
        if seen <= self.start_from_epoch:
            return  # nothing kept yet: a fit that ends here ends with the last weights
        if best == seen:
            self._best_weights = self.model.get_weights()
        elif seen - best >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None) -> None:
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)


def epochs_within(max_steps: int, steps_per_epoch: int, epochs: int) -> int:
    """`epochs`, or fewer if `epochs × steps_per_epoch` would exceed `max_steps` (at least
    one): the training length of a classifier is capped in steps, so that a 100 %-label
    budget trains for a few epochs where 100 labels train for hundreds."""
    check("max_steps", max_steps, integer_at_least(1))
    return max(1, min(epochs, -(-max_steps // max(1, steps_per_epoch))))


def discounted_accuracy(accuracy: float, num_validation: int) -> float:
    """A classifier's accuracy on the `num_validation` labels it chose its epoch on, less
    one standard error √(p(1 − p)/n), p = (correct + 1)/(n + 2): that figure is optimistic
    (the epoch was picked for scoring well on them), so it is discounted before it is
    compared with an estimate that was not selected on those labels."""
    p = (accuracy * num_validation + 1) / (num_validation + 2)
    return accuracy - math.sqrt(p * (1 - p) / num_validation)
