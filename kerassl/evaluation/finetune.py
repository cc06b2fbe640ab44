"""The `finetune` protocol: the whole network, from the pretrained encoder and the linear
probe's head, trained on the labeled examples (SimCLR's semi-supervised protocol).

`FineTuner` is the model it trains: encoder → head with two learning rates.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kerassl.evaluation.features import extract_features
from kerassl.evaluation.options import ProtocolOptions
from kerassl.evaluation.probes import fit_linear_probe
from kerassl.evaluation.protocols import FeatureCache, Outcome, Task, copy_encoder, stopping


def finetune(task: Task, encoder: keras.Model, cache: FeatureCache, options: ProtocolOptions):
    """The whole network from the encoder, trained on `split.labeled`, the encoder at
    `encoder_lr_scale` of the head's learning rate, early-stopped on the validation labels
    (SimCLR's semi-supervised protocol).

    The labeled images are not augmented. The baselines' label-set augmentation (Keras'
    rotation, shift and zoom layers, each resampling the image) moves an SSL encoder's
    features away from those of clean images: a probe that classified its own 80 training
    digits at 98 % got 25 % of their augmented copies right, and the head trained on such
    copies then misclassified clean test images. In a diagnostic run
    (`benchmarks/finetune_augment.py`: 100 epochs, 80 labels, 2,000 test images scored
    every 20 epochs) a fine-tuned Kannada-digit encoder fell from 67 % to 18 % within 20
    epochs with it and rose to 80 % without it (the probe: 76 %); on Fashion-MNIST it
    ended at 65.6 % with it, 75.1 % without (probe 71.9 %).

    The softmax head starts as the linear probe of the same labels (LP-FT: Kumar et al.
    2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-
    Distribution"): a randomly initialised head sends random gradients into the encoder
    during the first steps, and at 100 labels an epoch is a step or two, so a fresh head
    was still near chance when early stopping ended the run. BatchNorm layers keep their
    pretrained statistics (inference mode), which a hundred images could not re-estimate.
    """
    from kerassl.supervised import train_classifier

    split = task.split
    probe = fit_linear_probe(
        cache.train(split.labeled), task.y_train[split.labeled], task.num_classes, task.seed
    )
    keras.utils.set_random_seed(task.seed)
    model = FineTuner(copy_encoder(encoder), probe.dense(), options.encoder_lr_scale)
    validation = task.validation
    batch = min(options.batch_size, len(split.labeled))
    fit = stopping(options, validation, steps_per_epoch=len(split.labeled) // batch)
    history = train_classifier(
        model,
        task.x_train[split.labeled],
        task.y_train[split.labeled],
        validation=validation,
        epochs=fit.epochs,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        patience=fit.patience,
        seed=task.seed,
        start_from_epoch=fit.start,
    )
    classifier = model.inference_model()
    return Outcome(
        scores=np.asarray(extract_features(classifier, task.x_test), np.float64),
        schedule=fit.describe(history),
        selected=fit.selected(history),
        classifier=classifier,
    )


@keras.saving.register_keras_serializable(package="kerassl")
class FineTuner(keras.Model):
    """encoder → head, trained with two learning rates: the head's optimizer is the
    compiled one; the encoder's is an AdamW at `encoder_lr_scale` of its learning rate
    (following it when ReduceLROnPlateau lowers it). Adam is invariant to the scale of
    its gradients, so scaling the encoder's gradients instead would change nothing."""

    def __init__(
        self,
        encoder: keras.Model,
        head: keras.layers.Layer,
        encoder_lr_scale: float,
        name: str = "finetuned",
    ):
        super().__init__(name=name)
        self.encoder, self.head = encoder, head
        if not head.built:
            head.build((None, encoder.output_shape[-1]))
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.encoder_optimizer: keras.optimizers.Optimizer | None = None

    def build(self, input_shape=None):
        """Nothing to create: the encoder and the head are built in `__init__`."""
        self.built = True

    def call(self, images, training=False):
        return self.head(self.encoder(images, training=False))

    def compile(self, optimizer="adamw", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.encoder_optimizer = keras.optimizers.AdamW(
            float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)) * self.encoder_lr_scale,
            weight_decay=self.optimizer.weight_decay,
        )
        self.encoder_optimizer.build(self.encoder.trainable_variables)

    def train_step(self, data):
        images, labels = data
        encoder_variables = self.encoder.trainable_variables
        head_variables = self.head.trainable_variables
        with tf.GradientTape() as tape:
            probabilities = self(images, training=True)
            loss = self._compute_loss(x=images, y=labels, y_pred=probabilities, training=True)
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(images)[0])
        self.apply_two_rates(tape.gradient(loss, encoder_variables + head_variables))
        return self.compute_metrics(images, labels, probabilities)

    def apply_two_rates(self, gradients) -> None:
        """Applies the gradients of (encoder variables + head variables), in that order:
        the encoder's at `encoder_lr_scale` of the head's current learning rate."""
        encoder_variables = self.encoder.trainable_variables
        self.encoder_optimizer.learning_rate.assign(
            self.optimizer.learning_rate * self.encoder_lr_scale
        )
        if encoder_variables:  # (an encoder may have none: a fixed feature map)
            self.encoder_optimizer.apply_gradients(
                zip(gradients[: len(encoder_variables)], encoder_variables, strict=True)
            )
        self.optimizer.apply_gradients(
            zip(gradients[len(encoder_variables) :], self.head.trainable_variables, strict=True)
        )

    def inference_model(self) -> keras.Model:
        """A plain functional classifier sharing the fine-tuned weights."""
        inputs = keras.Input(self.encoder.input_shape[1:], name="images")
        outputs = self.head(self.encoder(inputs, training=False))
        return keras.Model(inputs, outputs, name=f"{self.name}_classifier")
