"""The `consistency` protocol: FixMatch-style consistency training from the pretrained
encoder (Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised Learning with
Consistency and Confidence", Algorithm 1).

Each step takes B labeled images and μB unlabeled ones from the pool:

    ℓ_s = 1/B Σ_b H(y_b, p(α(x_b)))
    ℓ_u = 1/(μB) Σ_b 1[max q_b ≥ τ] · H(argmax q_b, p(A(u_b))),   q_b = p(α(u_b)) (no gradient)
    loss = ℓ_s + λ_u ℓ_u

α is a weak augmentation, A a strong one. Here:

- the network starts as the linear probe on the pretrained encoder (as `finetune` does:
  FixMatch from scratch needs hundreds of thousands of steps; from an SSL encoder whose
  probe is already right on most images, its confident pseudo-labels are right from the
  first step), and the encoder learns at `encoder_lr_scale` of the head's rate with its
  BatchNorm statistics frozen (`FineTuner`);
- A is the encoder's own pretraining augmentation (`task.preset`): the views the encoder
  was trained to map together are the ones it is now asked to classify alike, and the
  preset knows what a label survives (no flips for digits). α is the same preset's
  geometry at its mildest — a crop of 85–100 % of the area, flips where the preset has
  them — without colour, blur or rotation. The baselines' label-set augmentation (Keras'
  resampling layers) is not used: `finetune` found it moves the features of an SSL
  encoder away from those of clean images;
- the pool never holds a validation image, and the epoch kept is chosen on the
  validation labels (`kerassl.stopping`); test images are only classified at the end.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kerassl.evaluation.features import extract_features
from kerassl.evaluation.finetune import FineTuner
from kerassl.evaluation.options import ProtocolOptions
from kerassl.evaluation.probes import fit_linear_probe
from kerassl.evaluation.protocols import (
    FeatureCache,
    Outcome,
    Task,
    copy_encoder,
    stopping,
    unlabeled_pool,
    validation_batches,
)

STEPS_PER_EPOCH = 50  # how often the validation labels are scored


def consistency(
    task: Task, encoder: keras.Model, cache: FeatureCache, options: ProtocolOptions
) -> Outcome:
    """The network trained with FixMatch's loss on the labels and the pool for at most
    `options.consistency_steps` steps, the epoch of the best smoothed validation accuracy
    kept (epochs of `STEPS_PER_EPOCH` steps)."""
    from kerassl.data.augment import make_augmenter

    split = task.split
    probe = fit_linear_probe(
        cache.train(split.labeled), task.y_train[split.labeled], task.num_classes, task.seed
    )
    keras.utils.set_random_seed(task.seed)
    strong = make_augmenter(task.preset, seed=task.seed)
    weak = make_augmenter(
        task.preset,
        seed=task.seed + 1,
        crop_scale=(0.85, 1.0),
        rotation=0.0,
        color_jitter_prob=0.0,
        grayscale_prob=0.0,
        blur_prob=0.0,
    )
    model = ConsistencyTrainer(
        copy_encoder(encoder),
        probe.dense(),
        options.encoder_lr_scale,
        weak,
        strong,
        threshold=options.consistency_threshold,
        weight=options.consistency_weight,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(options.learning_rate, weight_decay=1e-4),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
    pool = unlabeled_pool(task)
    batch = min(options.batch_size, len(split.labeled))
    data = _batches(
        task.x_train[split.labeled],
        task.y_train[split.labeled],
        task.x_train[pool],
        batch,
        min(options.consistency_ratio * batch, len(pool)),
        task.seed,
    )
    validation = task.validation
    epochs = max(1, options.consistency_steps // STEPS_PER_EPOCH)
    fit = stopping(options, validation, epochs=epochs, steps_per_epoch=STEPS_PER_EPOCH)
    history = model.fit(
        data,
        epochs=fit.epochs,
        steps_per_epoch=STEPS_PER_EPOCH,
        validation_data=validation_batches(validation, options.batch_size),
        callbacks=fit.callbacks,
        shuffle=False,  # the batches are shuffled by `_batches`
        verbose=0,
    )
    classifier = model.inference_model()
    selected = {
        **fit.selected(history),
        "threshold": options.consistency_threshold,
        "weight": options.consistency_weight,
        "ratio": options.consistency_ratio,
        "pool": int(len(pool)),
        # share of the last epoch's pool images above the threshold
        "mask_rate": float(history.history["mask_rate"][-1]),
    }
    return Outcome(
        scores=np.asarray(extract_features(classifier, task.x_test), np.float64),
        schedule=f"FixMatch, pool {len(pool)}, τ {options.consistency_threshold:g}; "
        f"{fit.describe(history)} (epochs of {STEPS_PER_EPOCH} steps)",
        selected=selected,
        classifier=classifier,
    )


def fixmatch_loss(
    labels, probabilities, weak_probabilities, strong_probabilities, threshold, weight
):
    """(loss, mask rate): ℓ_s + λ_u ℓ_u of the module docstring, in float32, from class
    probabilities (the head ends in a softmax). `weak_probabilities` are treated as
    constants; ℓ_u is averaged over every unlabeled image, masked or not (FixMatch)."""
    probabilities = tf.cast(probabilities, tf.float32)
    weak = tf.stop_gradient(tf.cast(weak_probabilities, tf.float32))
    strong = tf.cast(strong_probabilities, tf.float32)
    supervised = tf.reduce_mean(
        keras.losses.sparse_categorical_crossentropy(tf.cast(labels, tf.int32), probabilities)
    )
    mask = tf.cast(tf.reduce_max(weak, axis=-1) >= threshold, tf.float32)
    pseudo = tf.argmax(weak, axis=-1, output_type=tf.int32)
    unsupervised = tf.reduce_mean(
        mask * keras.losses.sparse_categorical_crossentropy(pseudo, strong)
    )
    return supervised + weight * unsupervised, tf.reduce_mean(mask)


def _batches(x_labeled, y_labeled, x_pool, batch, pool_batch, seed):
    """Endless ((labeled images, labels), pool images) batches, both shuffled, [0, 1]."""
    from kerassl.data.pipeline import labeled_dataset

    labeled = labeled_dataset(
        x_labeled, y_labeled, batch, shuffle=True, seed=seed, drop_remainder=True
    )
    pool = labeled_dataset(
        x_pool,
        np.zeros(len(x_pool), np.int64),
        pool_batch,
        shuffle=True,
        seed=seed + 1,
        drop_remainder=True,
    ).map(lambda images, _: images)
    return tf.data.Dataset.zip(labeled.repeat(), pool.repeat()).prefetch(2)


@keras.saving.register_keras_serializable(package="kerassl")
class ConsistencyTrainer(FineTuner):
    """`FineTuner` (encoder → head, two learning rates, frozen BatchNorm statistics)
    trained on `((labeled images, labels), pool images)` with `fixmatch_loss`."""

    def __init__(
        self,
        encoder: keras.Model,
        head: keras.layers.Layer,
        encoder_lr_scale: float,
        weak: keras.layers.Layer,
        strong: keras.layers.Layer,
        threshold: float,
        weight: float,
    ):
        super().__init__(encoder, head, encoder_lr_scale, name="fixmatch")
        self.weak, self.strong = weak, strong
        self.threshold, self.weight = float(threshold), float(weight)
        self.mask_rate = keras.metrics.Mean(name="mask_rate")

    def train_step(self, data):
        (images, labels), pool = data
        weak_pool = self(self.weak(pool, training=True), training=False)
        variables = self.encoder.trainable_variables + self.head.trainable_variables
        with tf.GradientTape() as tape:
            probabilities = self(self.weak(images, training=True), training=True)
            strong_pool = self(self.strong(pool, training=True), training=True)
            loss, mask_rate = fixmatch_loss(
                labels, probabilities, weak_pool, strong_pool, self.threshold, self.weight
            )
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(images)[0])
        self.apply_two_rates(tape.gradient(loss, variables))
        self.mask_rate.update_state(mask_rate)
        return {
            **self.compute_metrics(images, labels, probabilities),
            "mask_rate": self.mask_rate.result(),
        }

    @property
    def metrics(self):
        return [*super().metrics, self.mask_rate]
