"""Supervised fitting on the labeled examples: the baselines and the tuner's trials.

The opponent every self-supervised run is compared with is a classifier (architectures in
`kerassl.models.classifiers`) trained on the same few labels, made as strong as honesty
allows: label-set augmentation (small rotations, shifts, crops, and horizontal flips when
they preserve labels), the epoch kept by `kerassl.stopping` on a validation split carved
from the labeled examples, ReduceLROnPlateau on the training loss. `train_classifier` is
the one training loop, shared by `supervised_baseline`, the KerasTuner HyperModels and
the `finetune` protocol; it never sees the test split, which only `evaluate_classifier`
reads.

Images stay uint8 in memory and are scaled in the `tf.data` graph
(`kerassl.data.pipeline.labeled_dataset`), as for pretraining.

Example:
    >>> model = build_classifier("cnn", (28, 28, 1), num_classes=10)
    >>> history = fit_supervised(model, data.x_train, data.y_train, split, epochs=200)
    >>> evaluate_classifier(model, data.x_test, data.y_test)
    {'top1': 0.71, 'top5': 0.97}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from kerassl.checks import Rule, check
from kerassl.data.pipeline import labeled_dataset
from kerassl.evaluation.features import extract_features
from kerassl.evaluation.metrics import topk_accuracy
from kerassl.models.classifiers import build_classifier, has_transfer_base, unfreeze_top_blocks
from kerassl.stopping import BestEpoch, epochs_within

# Most training steps of a classifier on the labels: 300 epochs of 100 labels are 900 steps
# of 32, of 48,000 labels 450,000; 10,000 steps are 6.7 epochs of those.
MAX_STEPS = 10_000
# Steps before an epoch may be kept: at 40 labels an epoch is 3 steps of 16, and a tuned
# CNN whose first epochs topped its 10 validation images by luck was kept at epoch 1 and
# scored 10 % (chance) on the test split (label-budget benchmark, 50 labels, split 1).
MIN_STEPS = 100
# Strength of each label-set augmentation: a fraction of a turn, of the size, of the zoom.
_AUGMENT_STRENGTH = Rule(lambda v: 0 <= v < 0.5, "in [0, 0.5)")


def label_augmenter(
    rotation: float = 0.04,
    translation: float = 0.1,
    zoom: float = 0.1,
    flip: bool = False,
    seed: int = 0,
) -> keras.Sequential:
    """Augmentation of the labeled set: small rotations, shifts and crops (zoom-in).

    Runs in the `tf.data` pipeline (Keras' RandomRotation/RandomZoom have no XLA kernel on
    CPU, so it is kept out of any jit-compiled step).

    Args:
        rotation: maximum rotation as a fraction of a full turn (0.04 ≈ 15°).
        translation: maximum shift as a fraction of height and width.
        zoom: maximum zoom in or out as a fraction (zoom-in crops the image).
        flip: add random horizontal flips (only where they preserve labels: natural
            images, not digits).
        seed: seed of the layers' random generators.

    Returns:
        A `Sequential` of the enabled layers (empty when every strength is 0).
    """
    for name, value in (("rotation", rotation), ("translation", translation), ("zoom", zoom)):
        check(name, value, _AUGMENT_STRENGTH)
    stack: list[layers.Layer] = []
    if flip:
        stack.append(layers.RandomFlip("horizontal", seed=seed))
    if rotation:
        stack.append(layers.RandomRotation(rotation, fill_mode="constant", seed=seed + 1))
    if translation:
        stack.append(
            layers.RandomTranslation(translation, translation, fill_mode="constant", seed=seed + 2)
        )
    if zoom:
        stack.append(layers.RandomZoom((-zoom, zoom), fill_mode="constant", seed=seed + 3))
    return keras.Sequential(stack, name="label_augmenter")


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    augmenter: keras.Layer | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """Shuffled, batched, optionally augmented `(images, labels)` for one training.

    Batches are full (`min(batch_size, len(x))` images; the remainder is dropped and
    differs every epoch): no tiny last batch upsets BatchNorm, and one traced step
    shape serves the whole training.

    Args:
        x: uint8 images [N, H, W, C], N >= 1.
        y: [N] integer labels.
        batch_size: images per batch (at most N are used).
        augmenter: applied to every float batch in training mode (e.g. `label_augmenter`).
        seed: seed of the per-epoch reshuffle.

    Returns:
        A dataset of (float32 [B, H, W, C] in [0, 1], int64 [B]).
    """
    if len(x) == 0:
        raise ValueError("x must hold at least one image.")
    dataset = labeled_dataset(
        x, y, min(batch_size, len(x)), shuffle=True, seed=seed, drop_remainder=True
    )
    if augmenter is None or not augmenter.layers:
        return dataset
    # Sequential: the augmenter's random generators then draw in batch order (reproducible).
    dataset = dataset.map(lambda images, labels: (augmenter(images, training=True), labels))
    return dataset.prefetch(tf.data.AUTOTUNE)


def compile_classifier(
    model: keras.Model, learning_rate: float = 1e-3, weight_decay: float = 1e-4
) -> None:
    """Compiles with AdamW, sparse cross-entropy and accuracy (not jit-compiled: the
    small models gain nothing from XLA on CPU)."""
    check("learning_rate", learning_rate)
    check("weight_decay", weight_decay)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )


def train_classifier(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 300,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    augmenter: keras.Layer | None = None,
    patience: int = 60,
    fine_tune_blocks: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    seed: int = 0,
    verbose: int = 0,
    start_from_epoch: int = 0,
    max_steps: int = MAX_STEPS,
    min_steps: int = MIN_STEPS,
) -> keras.callbacks.History:
    """Trains `model` on `(x, y)` with early stopping and ReduceLROnPlateau.

    The epoch kept and the stop follow `kerassl.stopping.BestEpoch` (the smoothed
    validation accuracy when `validation` is given, else the training loss, as study A
    did); the learning rate halves when the training loss plateaus. With
    `fine_tune_blocks > 0` (transfer classifiers), the head is first trained with the base
    frozen for half the epochs, then the top blocks are unfrozen and training continues at
    a tenth of the learning rate.

    Args:
        model: a classifier from `build_classifier` (compiled here, once per phase).
        x: uint8 images [N, H, W, C] of the labeled training examples.
        y: [N] labels.
        validation: `(uint8 images, labels)` the callbacks select on, batched like `x`.
        epochs: last epoch (early stopping usually ends sooner).
        batch_size: labeled images per step.
        learning_rate: AdamW learning rate (halved on plateaus, down to a hundredth).
        weight_decay: AdamW decoupled weight decay.
        augmenter: applied to the training batches (see `label_augmenter`).
        patience: early-stopping patience in epochs (ReduceLROnPlateau uses a third).
        fine_tune_blocks: transfer classifiers: top blocks fine-tuned in a second phase.
        callbacks: more callbacks (e.g. KerasTuner's), after the two above.
        initial_epoch: epoch to start from (KerasTuner's Hyperband resumes trials).
        seed: seed of initialisation, shuffling and augmentation.
        verbose: Keras `fit` verbosity.
        start_from_epoch: epochs before the stopping rule may keep one (`BestEpoch`).
        max_steps: `epochs` is cut to fit this many steps (`kerassl.stopping.epochs_within`).
        min_steps: no epoch is kept before this many steps (nor before
            `start_from_epoch`), unless that would leave none.

    Returns:
        The `History` (of both phases when fine-tuning).
    """
    check("epochs", epochs)
    steps_per_epoch = -(-len(x) // batch_size)
    # (a resumed Hyperband trial still runs at least one epoch)
    epochs = max(epochs_within(max_steps, steps_per_epoch, epochs), initial_epoch + 1)
    start_from_epoch = min(max(start_from_epoch, -(-min_steps // steps_per_epoch)), epochs - 1)
    keras.utils.set_random_seed(seed)
    has_validation = validation is not None and len(validation[0]) > 0
    val_data = labeled_dataset(*validation, batch_size=batch_size) if has_validation else None
    data = train_dataset(x, y, batch_size, augmenter, seed)

    def run(lr: float, first: int, last: int) -> keras.callbacks.History:
        compile_classifier(model, lr, weight_decay)
        stop = BestEpoch(patience, validation=has_validation, start_from_epoch=start_from_epoch)
        # The rate follows the optimisation (training loss), not the few validation labels.
        plateau = keras.callbacks.ReduceLROnPlateau(
            "loss", factor=0.5, patience=max(patience // 3, 1), min_lr=lr / 100
        )
        return model.fit(
            data,
            validation_data=val_data,
            epochs=last,
            initial_epoch=first,
            callbacks=[stop, plateau, *callbacks],
            shuffle=False,  # the dataset reshuffles itself each epoch
            verbose=verbose,
        )

    if fine_tune_blocks <= 0 or not has_transfer_base(model):
        return run(learning_rate, initial_epoch, epochs)
    middle = max(initial_epoch, (initial_epoch + epochs) // 2)
    history = run(learning_rate, initial_epoch, middle) if middle > initial_epoch else None
    unfreeze_top_blocks(model, fine_tune_blocks)
    second = run(learning_rate / 10, middle, epochs)
    if history is None:
        return second
    for key, values in second.history.items():
        history.history.setdefault(key, []).extend(values)
    history.epoch.extend(second.epoch)
    return history


def fit_supervised(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    split: Any,
    epochs: int = 300,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    augment: bool = True,
    seed: int = 0,
    verbose: int = 0,
    weight_decay: float = 1e-4,
    patience: int = 60,
    flip: bool = False,
    fine_tune_blocks: int = 0,
) -> keras.callbacks.History:
    """Trains a classifier on `split.labeled`, selecting on `split.validation`.

    Args:
        model: a classifier from `build_classifier` (compiled here).
        x_train: uint8 [N, H, W, C] training pool (unlabeled images are ignored).
        y_train: int [N] labels (-1 = unlabeled).
        split: `Split` with index arrays `labeled` and `validation` into `x_train`.
        epochs: maximum epochs (early stopping usually ends sooner).
        batch_size: labeled images per step.
        learning_rate: AdamW learning rate (halved on plateaus).
        augment: augment the labeled set (rotation, shift, crop; see `label_augmenter`).
        seed: seed of shuffling, augmentation and initialisation.
        verbose: Keras `fit` verbosity.
        weight_decay: AdamW decoupled weight decay.
        patience: early-stopping patience in epochs (ReduceLROnPlateau uses a third).
        flip: add horizontal flips to the augmentation.
        fine_tune_blocks: transfer classifiers: top blocks fine-tuned in a second phase.

    Returns:
        The `History` of `train_classifier`.
    """
    labeled = np.asarray(split.labeled, dtype=np.int64)
    validation_index = np.asarray(getattr(split, "validation", ()), dtype=np.int64)
    if np.any(y_train[labeled] < 0) or np.any(y_train[validation_index] < 0):
        raise ValueError("split.labeled and split.validation must index labeled examples.")
    validation = None
    if len(validation_index):
        validation = (x_train[validation_index], y_train[validation_index])
    augmenter = label_augmenter(flip=flip, seed=seed) if augment else None
    return train_classifier(
        model,
        x_train[labeled],
        y_train[labeled],
        validation=validation,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        augmenter=augmenter,
        patience=patience,
        fine_tune_blocks=fine_tune_blocks,
        seed=seed,
        verbose=verbose,
    )


def evaluate_classifier(
    model: keras.Model, x_test: np.ndarray, y_test: np.ndarray, batch_size: int = 256
) -> dict[str, float]:
    """`topk_accuracy` of `model` on a labeled split: top-1, and top-5 when there are more
    than 5 classes. `x_test` stays uint8, scaled one batch at a time."""
    return topk_accuracy(extract_features(model, x_test, batch_size), y_test)


def supervised_baseline(
    data: Any,
    split: Any,
    *,
    flip: bool,
    model: str = "cnn",
    epochs: int = 300,
    seed: int = 0,
    verbose: int = 0,
    **hparams: Any,
) -> tuple[dict[str, Any], keras.Model]:
    """Builds, trains (labeled examples only) and tests a supervised baseline.

    Args:
        data: `ImageData` (uint8 arrays, `y_train` -1 for unlabeled).
        split: `Split` of labeled/validation indices into `data.x_train`.
        flip: add horizontal flips to the label-set augmentation. The caller decides it
            from the run's resolved augmentation (flips preserve labels of natural images,
            not of digits); nothing here reads the dataset's preset.
        model: classifier name (see `build_classifier`).
        epochs: maximum training epochs.
        seed: seed of initialisation, shuffling and augmentation.
        verbose: Keras `fit` verbosity.
        **hparams: builder arguments for `build_classifier`.

    Returns:
        `{"model", "top1", "top5" (> 5 classes), "epochs_run", "num_labeled"}` on the
        test split, and the trained classifier ([0, 1] images → class probabilities).
    """
    keras.utils.set_random_seed(seed)
    classifier = build_classifier(model, data.x_train.shape[1:], data.num_classes, **hparams)
    history = fit_supervised(
        classifier,
        data.x_train,
        data.y_train,
        split,
        epochs=epochs,
        seed=seed,
        verbose=verbose,
        flip=flip,
    )
    metrics = evaluate_classifier(classifier, data.x_test, data.y_test)
    return {
        "model": model,
        **metrics,
        "epochs_run": len(history.epoch),
        "num_labeled": len(split.all_labeled),
    }, classifier
