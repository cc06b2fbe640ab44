"""Self-distillation on the unlabeled pool (SimCLRv2's third step).

Chen et al. 2020, "Big Self-Supervised Models are Strong Semi-Supervised Learners",
section 2: a teacher classifier, obtained from the pretrained network with the few labels,
labels every unlabeled image softly, and a student is trained on those soft labels

    L = −(1 − α) Σ_labeled log P_S(y | x) − α Σ_unlabeled Σ_y P_T(y | x; τ) log P_S(y | x; τ)

where P(y | x; τ) is the softmax of the logits divided by τ. Here:

- the teacher is the better, on the validation labels, of the linear probe and the
  fine-tuned network fitted on `split.labeled` (the `finetune` protocol's; its outcome is
  reused when the same cell ran it already). Without validation labels (1 label per
  class) nothing can compare them and the probe teaches, which is the more robust of the
  two at that budget (README table);
- the teacher labels the pool once, without augmentation ("offline" distillation: one
  forward pass per image instead of one per student step, which on a CPU is most of the
  cost); the student sees augmented views of those images (`label_augmenter`), so it is
  also trained to be invariant where the teacher was only asked once;
- the student has the teacher's architecture (self-distillation: SimCLRv2 found it
  improves on the teacher even at equal size) and starts from the pretrained encoder and
  the teacher's probe head (a random start would spend most of a CPU budget relearning
  the features);
- the pool never holds a validation image, so that the validation labels the stage
  selects on are images the student was not fitted to, labeled or not; test images are
  only classified at the end.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kerassl.evaluation.features import extract_features
from kerassl.evaluation.options import ProtocolOptions
from kerassl.evaluation.probes import fit_linear_probe
from kerassl.evaluation.protocols import (
    FeatureCache,
    Outcome,
    Task,
    copy_encoder,
    on_encoder,
    stopping,
    unlabeled_pool,
    validation_batches,
)
from kerassl.stopping import discounted_accuracy


def distill(
    task: Task, encoder: keras.Model, cache: FeatureCache, options: ProtocolOptions
) -> Outcome:
    """A student trained on the teacher's soft labels of the pool plus the labeled
    cross-entropy, early-stopped on the validation labels (`kerassl.stopping`, best epoch kept)."""
    from kerassl.supervised import label_augmenter

    split = task.split
    probe = fit_linear_probe(
        cache.train(split.labeled), task.y_train[split.labeled], task.num_classes, task.seed
    )
    teacher, teacher_name, teacher_accuracy = _teacher(task, encoder, cache, options, probe)
    pool = unlabeled_pool(task, options.distill_pool)
    soft = _soft_targets(extract_features(teacher, task.x_train[pool]), options.distill_temperature)

    keras.utils.set_random_seed(task.seed)
    student = Student(copy_encoder(encoder), probe.dense(), options)
    student.compile(
        optimizer=keras.optimizers.AdamW(options.learning_rate, weight_decay=1e-4),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
    augmenter = label_augmenter(flip=task.flip, seed=task.seed)
    data = _student_dataset(
        task.x_train[pool],
        soft,
        task.x_train[split.labeled],
        task.y_train[split.labeled],
        options,
        augmenter,
        task.seed,
    )
    validation = task.validation
    steps = max(1, len(pool) // min(options.distill_batch_size, len(pool)))
    fit = stopping(options, validation, epochs=options.distill_epochs, steps_per_epoch=steps)
    history = student.fit(
        data,
        epochs=fit.epochs,
        steps_per_epoch=steps,
        validation_data=validation_batches(validation, options.batch_size),
        callbacks=fit.callbacks,
        verbose=0,
    )
    classifier = student.inference_model()
    selected = {
        **fit.selected(history),
        "teacher": teacher_name,
        "teacher_validation_accuracy": teacher_accuracy,
        "pool": int(len(pool)),
        "temperature": options.distill_temperature,
        "alpha": options.distill_alpha,
    }
    if validation is not None:
        predicted = np.argmax(extract_features(classifier, validation[0]), axis=1)
        selected["validation_accuracy"] = float(np.mean(predicted == validation[1]))
    return Outcome(
        scores=np.asarray(extract_features(classifier, task.x_test), np.float64),
        schedule=f"teacher {teacher_name}, pool {len(pool)}; {fit.describe(history)}",
        selected=selected,
        classifier=classifier,
    )


def _teacher(task: Task, encoder, cache: FeatureCache, options: ProtocolOptions, probe):
    """(classifier, "finetune" | "linear", both validation accuracies or None): the
    better on the validation labels of the probe of `split.labeled` and the fine-tuned
    network, whose accuracy there is discounted by a standard error (it stopped on them:
    `kerassl.stopping.discounted_accuracy`); the probe without validation labels."""
    split = task.split
    probe_model = on_encoder(encoder, probe.dense())
    if not len(split.validation):
        return probe_model, "linear", None
    labels = task.y_train[split.validation]
    tuned = cache.outcome("finetune", task, options).classifier
    accuracy = {
        "linear": _accuracy(probe.scores(cache.train(split.validation)), labels),
        "finetune": _accuracy(extract_features(tuned, task.x_train[split.validation]), labels),
    }
    if discounted_accuracy(accuracy["finetune"], len(labels)) > accuracy["linear"]:
        return tuned, "finetune", accuracy
    return probe_model, "linear", accuracy


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def _soft_targets(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """P_T(y | x; τ): the teacher's softmax recomputed at temperature τ from its
    probabilities (log p = logits + const, so softmax(log p / τ) is exact)."""
    logits = np.log(np.clip(probabilities.astype(np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    soft = np.exp(logits)
    return (soft / soft.sum(axis=1, keepdims=True)).astype(np.float32)


def distillation_loss(soft_targets, student_logits, temperature: float):
    """Mean over the batch of −Σ_y P_T(y; τ) log softmax(logits / τ)_y, in float32."""
    log_p = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature, axis=-1)
    return -tf.reduce_mean(tf.reduce_sum(tf.cast(soft_targets, tf.float32) * log_p, axis=-1))


def _student_dataset(x_pool, soft, x_labeled, y_labeled, options, augmenter, seed):
    """Endless batches ((pool images, soft targets), (labeled images, labels)), both
    shuffled and augmented; a labeled batch is drawn beside every pool batch. The pool's
    "labels" are its row numbers, which pick the soft targets in the graph."""
    from kerassl.data.pipeline import labeled_dataset

    targets = tf.constant(soft)
    rows = np.arange(len(x_pool))
    batch = min(options.distill_batch_size, len(x_pool))
    unlabeled = labeled_dataset(x_pool, rows, batch, shuffle=True, seed=seed, drop_remainder=True)
    unlabeled = unlabeled.map(lambda images, index: (images, tf.gather(targets, index)))
    labeled = labeled_dataset(
        x_labeled,
        y_labeled,
        min(options.batch_size, len(x_labeled)),
        shuffle=True,
        seed=seed + 1,
        drop_remainder=True,
    )

    def augment(images, values):
        return augmenter(images, training=True), values

    if augmenter.layers:
        unlabeled, labeled = unlabeled.map(augment), labeled.map(augment)
    return tf.data.Dataset.zip(unlabeled.repeat(), labeled.repeat()).prefetch(2)


@keras.saving.register_keras_serializable(package="kerassl")
class Student(keras.Model):
    """encoder → Dense logits, trained on `((pool images, soft targets), (labeled
    images, labels))` batches with the SimCLRv2 loss above; called, it returns class
    probabilities (so `evaluate`/validation use the compiled sparse cross-entropy)."""

    def __init__(self, encoder: keras.Model, head: keras.layers.Dense, options: ProtocolOptions):
        super().__init__(name="student")
        self.encoder = encoder
        self.logits = keras.layers.Dense(head.units, name="logits")
        self.logits.build((None, encoder.output_shape[-1]))
        if head.built:  # the probe's weights, without its softmax
            self.logits.set_weights(head.get_weights())
        self.temperature = float(options.distill_temperature)
        self.alpha = float(options.distill_alpha)

    def call(self, images, training=False):
        return tf.nn.softmax(self.logits(self.encoder(images, training=training)))

    def train_step(self, data):
        (pool_images, soft), (images, labels) = data
        with tf.GradientTape() as tape:
            pool_logits = self.logits(self.encoder(pool_images, training=True))
            logits = self.logits(self.encoder(images, training=True))
            soft_loss = distillation_loss(soft, pool_logits, self.temperature)
            hard_loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    tf.cast(labels, tf.int32), tf.cast(logits, tf.float32)
                )
            )
            loss = (1.0 - self.alpha) * hard_loss + self.alpha * soft_loss
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(pool_images)[0])
        # The labeled batch's accuracy, as `accuracy` (the compiled metric).
        return self.compute_metrics(images, labels, tf.nn.softmax(logits))

    def inference_model(self) -> keras.Model:
        """A plain functional classifier ([0, 1] images → probabilities) sharing the
        student's weights."""
        inputs = keras.Input(self.encoder.input_shape[1:], name="images")
        features = self.encoder(inputs, training=False)
        outputs = keras.layers.Softmax(name="probabilities")(self.logits(features))
        return keras.Model(inputs, outputs, name="student_classifier")
