"""The few-label stopping rule (kerassl.stopping): which epoch it keeps, when it stops."""

import math

import keras
import numpy as np
import pytest

from kerassl.stopping import BestEpoch, best_epoch, epoch_scores


def _history(accuracy, loss):
    return {"val_accuracy": list(accuracy), "val_loss": list(loss), "loss": [1.0] * len(loss)}


def test_accuracy_wins_over_a_rising_validation_loss():
    # The 32-px colour failure: the loss is lowest at the first epoch, the accuracy climbs
    # while the network grows confident; the rule must not go back to epoch 1.
    history = _history([0.1, 0.15, 0.25, 0.3, 0.3, 0.3], [2.3, 2.6, 3.0, 3.4, 3.6, 3.8])
    assert best_epoch(history, validation=True) > 3
    assert best_epoch(history, validation=True, smoothing=0.0) == 4  # the first 0.3


def test_loss_breaks_ties_of_accuracy():
    history = _history([0.5, 0.5, 0.5], [1.0, 0.8, 0.9])
    assert best_epoch(history, validation=True, smoothing=0.0) == 2


def test_smoothing_prefers_a_sustained_level_to_a_single_lucky_epoch():
    accuracy = [0.2, 0.6, 0.2, 0.2, 0.5, 0.5, 0.5, 0.5]
    history = _history(accuracy, [1.0] * len(accuracy))
    assert best_epoch(history, validation=True, smoothing=0.0) == 2  # the spike
    assert best_epoch(history, validation=True) == 8  # the end of the good stretch
    # The moving average itself: a_t = 0.6 a_{t-1} + 0.4 x_t.
    expected, average = [], None
    for value in accuracy:
        average = value if average is None else 0.6 * average + 0.4 * value
        expected.append(average)
    scores = epoch_scores(history, validation=True)
    np.testing.assert_allclose([s[0] for s in scores], expected, atol=1e-9)


def test_without_validation_the_lowest_training_loss():
    assert best_epoch({"loss": [3.0, 1.0, 2.0, 1.0]}, validation=False) == 2


def test_a_non_finite_epoch_is_never_kept():
    history = _history([0.5, 0.9, 0.6], [1.0, math.nan, 1.0])
    assert epoch_scores(history, validation=True, smoothing=0.0)[1] == (-math.inf, -math.inf)
    assert best_epoch(history, validation=True, smoothing=0.0) == 3


@pytest.mark.parametrize("bad", [{"patience": 0}, {"smoothing": 1.0}, {"smoothing": -0.1}])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        BestEpoch(**{"patience": 3, "validation": True, **bad})


def test_callback_stops_after_patience_and_restores_the_kept_weights():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    stop = BestEpoch(patience=2, validation=True, smoothing=0.0)
    model.stop_training = False  # what fit sets before the first epoch
    stop.set_model(model)
    stop.on_train_begin()
    accuracy = [0.2, 0.7, 0.5, 0.4, 0.9]
    for epoch, acc in enumerate(accuracy):
        model.layers[0].kernel.assign([[float(epoch)]])
        stop.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0, "val_accuracy": acc})
        if model.stop_training:
            break
    assert epoch == 3 and stop.best_epoch == 2  # two epochs without a better one
    stop.on_train_end()
    assert float(model.layers[0].kernel.numpy()[0, 0]) == 1.0  # epoch 2's weights


def test_no_epoch_is_kept_before_start_from_epoch():
    # A probe-initialised network tops 20 validation images at the first epoch by luck.
    history = _history([0.9, 0.6, 0.7, 0.8, 0.75], [1.0] * 5)
    assert best_epoch(history, validation=True, smoothing=0.0) == 1
    assert best_epoch(history, validation=True, smoothing=0.0, start_from_epoch=2) == 4
    assert best_epoch(history, validation=True, smoothing=0.0, start_from_epoch=9) == 5  # last
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.stop_training = False
    stop = BestEpoch(patience=1, validation=True, smoothing=0.0, start_from_epoch=2)
    stop.set_model(model)
    stop.on_train_begin()
    for epoch, acc in enumerate([0.9, 0.6, 0.7, 0.8, 0.75, 0.7]):
        stop.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0, "val_accuracy": acc})
        if model.stop_training:
            break
    assert stop.best_epoch == 4 and epoch == 4  # patience counts from the kept epoch


def test_discounted_accuracy_is_less_one_standard_error():
    from kerassl.stopping import discounted_accuracy

    p = 17 / 22  # 16 of 20 right, Laplace-smoothed
    assert discounted_accuracy(0.8, 20) == pytest.approx(0.8 - math.sqrt(p * (1 - p) / 20))
    assert discounted_accuracy(1.0, 20) < 1.0  # a perfect score on 20 images is discounted
    assert discounted_accuracy(0.8, 2000) == pytest.approx(0.8, abs=0.01)  # many labels: ~none


def test_training_length_is_capped_in_steps():
    from kerassl.errors import UserError
    from kerassl.evaluation.options import ProtocolOptions
    from kerassl.evaluation.protocols import stopping
    from kerassl.stopping import epochs_within

    assert epochs_within(3000, 1, 200) == 200  # 100 labels: an epoch is a step
    assert epochs_within(3000, 750, 200) == 4  # 48,000 labels at 64: ceil(3000 / 750)
    assert epochs_within(10, 10_000, 200) == 1  # never none
    options = ProtocolOptions(max_steps=300)
    validation = (np.zeros((4, 2)), np.zeros(4))
    assert stopping(options, validation, steps_per_epoch=100).epochs == 3
    assert stopping(options, None, steps_per_epoch=100).epochs == 3  # the fixed schedule too
    assert stopping(options, validation, steps_per_epoch=1).epochs == options.max_epochs
    with pytest.raises(UserError, match="--min-steps"):
        ProtocolOptions(min_steps=500, max_steps=300)
