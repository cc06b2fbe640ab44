"""The shared shape of every self-supervised method: augmenter + encoder + head + train_step."""

from __future__ import annotations

import contextlib
import copy

import keras
import tensorflow as tf
from keras import ops

from kerassl.data.augment import Augmenter


def num_replicas() -> int:
    """Replicas taking part in the current step (1 outside a distribution strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_gather(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Concatenates `x` from every replica along axis 0, in replica order.

    Returns the global tensor and the offset of this replica's rows in it. Gradients flow
    back to each replica's own rows (TensorFlow sums the incoming gradients across replicas
    and slices), so a loss computed on the global batch trains every replica correctly.
    Outside a strategy this is the identity with offset 0.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x, tf.constant(0, tf.int32)
    gathered = context.all_gather(x, axis=0)
    offset = tf.cast(context.replica_id_in_sync_group, tf.int32) * tf.shape(x)[0]
    return gathered, offset


def _step_logs(metrics) -> dict:
    """The results a train/test step returns to `fit`/`evaluate`.

    Under MultiWorkerMirroredStrategy across several workers Keras 3 (3.15) reduces the
    step's outputs with `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars
    ("Invalid reduction dimension 0 for input with 0 dimensions", tensorflow#72388). There
    the results go out as [1] vectors, which that reduction turns back into the scalars
    (the same on every replica: the trackers see global-batch values). The condition is
    Keras' own (`keras/src/backend/tensorflow/trainer.py`, `_collective_all_reduce_multi_worker`).
    """
    logs = {m.name: m.result() for m in metrics}
    strategy = tf.distribute.get_strategy()
    if (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    ):
        logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def _unpack(data) -> tuple:
    """`(images, (labeled_images, labels) or None)` of a step's data: `images`, `(images,)`,
    `(images, labels)` (labels ignored) or `(images, (labeled_images, labels))`."""
    if not isinstance(data, (tuple, list)):
        return data, None
    labeled = data[1] if len(data) > 1 else None
    return data[0], (labeled if isinstance(labeled, (tuple, list)) else None)


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Within it, layers are built under the Keras dtype policy `precision` (one of
    `kerassl.catalog.PRECISIONS`); the previous policy is restored on the way out, so that
    nothing built later in the process inherits it.

    A layer keeps the policy it was built with (and its `.keras` config records it), so a
    method built here computes in 16 bits wherever it is called. Under `mixed_bfloat16` and
    `mixed_float16` variables stay float32 (BatchNorm normalises in float32); what must
    also stay float32 is the losses (every loss in `kerassl.losses` casts its inputs),
    the online probe's logits, and the encoder's features (`float32_outputs`).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_outputs(model: keras.Model) -> keras.Model:
    """`model` if its output is float32, else the same layers (shared, same weights and
    names) followed by a float32 identity `Activation` named "float32_features".

    Applied to the encoder under a mixed policy, so that whatever consumes its features
    (the heads, probes, kNN, the `.keras` encoder of a run directory, the exported
    SavedModel) receives float32."""
    if keras.backend.standardize_dtype(model.output.dtype) == "float32":
        return model
    cast = keras.layers.Activation("linear", dtype="float32", name="float32_features")
    return keras.Model(model.input, cast(model.output), name=model.name)


def loss_scaled(optimizer: keras.optimizers.Optimizer, precision: str):
    """`optimizer` wrapped in a `keras.optimizers.LossScaleOptimizer` (dynamic scaling)
    under `mixed_float16`, whose gradients underflow without it; `optimizer` itself
    otherwise (bfloat16 has float32's exponent range)."""
    if precision == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def update_momentum(source: keras.Model, target: keras.Model, momentum: float) -> None:
    """Moving average θ_target ← m·θ_target + (1 − m)·θ_source over all weights.

    Trainable weights and BatchNorm statistics alike (MoCo, BYOL). `source` and `target`
    must have the same architecture.
    """
    for source_weight, target_weight in zip(source.weights, target.weights, strict=True):
        target_weight.assign(momentum * target_weight + (1.0 - momentum) * source_weight)


class SSLModel(keras.Model):
    """Base class of the self-supervised methods.

    A method owns an augmenter, an encoder and a projection head. Its `train_step` has
    one shape for every method: unpack the images → two augmented views → under a tape,
    `compute_ssl_loss` (the method's paper, in a few lines) (+ the online probe's loss) →
    gradients on the trainable variables → `after_step` (e.g. MoCo's momentum update and
    enqueue) → trackers. Subclasses implement `compute_ssl_loss` and add their
    constructor arguments to `get_config`.

    Optional online probe (`probe_classes > 0`, as in the Keras SimCLR example): a linear
    classifier on the encoder's features of labeled images, trained in the same step on
    stop-gradient features (it never shapes the encoder), so `probe_accuracy` shows how
    linearly separable the labels are while pretraining runs. Its batches come with the
    data: each element is `(images, (labeled_images, labels))` instead of `images`.

    Under a distribution strategy `compute_ssl_loss` returns the loss of the *global*
    batch (methods all-gather what they need); the step scales it by 1/replicas because
    the optimizer sums gradients across replicas.

    Args:
        encoder: `keras.Model` mapping [0, 1] images to feature vectors.
        head: `keras.Model` mapping features to the loss space.
        augmenter: layer making one random view of a batch per call.
        probe_classes: classes of the online probe; 0 (default) for none.
    """

    def __init__(
        self,
        encoder: keras.Model,
        head: keras.Model,
        augmenter: Augmenter,
        probe_classes: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.head = head
        self.augmenter = augmenter
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="contrastive_accuracy")
        self.probe_classes = int(probe_classes)
        self.probe = None
        if self.probe_classes:
            self.probe = keras.layers.Dense(self.probe_classes, name="online_probe")
            self.probe.build(encoder.output_shape)
            self.probe_loss_tracker = keras.metrics.Mean(name="probe_loss")
            self.probe_accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(
                name="probe_accuracy"
            )
        # The views are one XLA cluster even when the step is not XLA-compiled: gathers and
        # elementwise ops fuse ~5x faster than op-by-op (benchmarks/throughput.py).
        self._two_views = tf.function(self.make_views, jit_compile=True)
        # Encoder and head are built functional models, so the method is built from the
        # start: BackupAndRestore and save/load need built models before `fit`.
        self.build(encoder.input_shape)

    def build(self, input_shape):
        if not self.augmenter.built:
            self.augmenter.build(input_shape)
        self.built = True

    @property
    def metrics(self):
        trackers = [self.loss_tracker]
        if self.reports_accuracy:
            trackers.append(self.accuracy_tracker)
        if self.probe is not None:
            trackers += [self.probe_loss_tracker, self.probe_accuracy_tracker]
        return trackers

    # Methods whose loss is a classification of the positive pair report its top-1 accuracy.
    reports_accuracy = True

    def call(self, images, training=False):
        """Embeds images with the encoder (what downstream tasks use)."""
        return self.encoder(images, training=training)

    def project(self, views, training=True):
        """Encoder then head: the embeddings the loss sees."""
        return self.head(self.encoder(views, training=training), training=training)

    def make_views(self, images):
        """Two independent random views of a batch."""
        return self.augmenter(images, training=True), self.augmenter(images, training=True)

    def compute_ssl_loss(self, view1, view2, training=True):
        """Returns `(loss, logits, labels)` of the global batch; logits/labels may be None."""
        raise NotImplementedError

    def after_step(self):
        """Runs after the gradient update (momentum encoders, queues)."""

    def probe_loss(self, labeled_images, labels):
        """Returns `(loss, logits)` of the online probe on stop-gradient features."""
        features = ops.stop_gradient(self.encoder(labeled_images, training=False))
        logits = ops.cast(self.probe(features), "float32")  # float16 under mixed_float16
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return ops.mean(loss), logits

    def train_step(self, data):
        images, labeled = _unpack(data)
        view1, view2 = self._two_views(images)
        with tf.GradientTape() as tape:
            loss, logits, labels = self.compute_ssl_loss(view1, view2)
            total = loss
            if self.probe is not None and labeled is not None:
                probe_loss, probe_logits = self.probe_loss(*labeled)
                total = total + probe_loss  # a per-replica mean, like the scaled SSL loss
            # `scale_loss` is the identity but for a `LossScaleOptimizer` (mixed_float16),
            # whose `apply_gradients` divides the gradients by the same scale again (and
            # skips the update, halving the scale, when one is not finite).
            scaled_loss = self.optimizer.scale_loss(total / num_replicas())
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        self.after_step()
        self.loss_tracker.update_state(loss)
        if self.reports_accuracy and logits is not None:
            self.accuracy_tracker.update_state(labels, logits)
        if self.probe is not None and labeled is not None:
            self.probe_loss_tracker.update_state(probe_loss)
            self.probe_accuracy_tracker.update_state(labeled[1], probe_logits)
        return _step_logs(self.metrics)

    def test_step(self, data):
        images, _ = _unpack(data)  # the online probe trains only
        view1, view2 = self._two_views(images)
        loss, logits, labels = self.compute_ssl_loss(view1, view2, training=False)
        self.loss_tracker.update_state(loss)
        if self.reports_accuracy and logits is not None:
            self.accuracy_tracker.update_state(labels, logits)
        return _step_logs(self.metrics)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "head": keras.saving.serialize_keras_object(self.head),
                "augmenter": keras.saving.serialize_keras_object(self.augmenter),
                "probe_classes": self.probe_classes,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # A deep copy: deserialising the nested Functional models consumes their configs.
        config = copy.deepcopy(config)
        for key in ("encoder", "head", "augmenter"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
