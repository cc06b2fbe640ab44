"""MoCo v2 (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation
Learning"; Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning")."""

from __future__ import annotations

import keras
from keras import layers, ops

from kerassl.checks import check
from kerassl.losses.info_nce import MOCO_TEMPERATURE, info_nce
from kerassl.losses.nt_xent import l2_normalize
from kerassl.models.base import SSLModel, all_gather, num_replicas, update_momentum


@keras.saving.register_keras_serializable(package="kerassl")
class BatchStatsNormalization(layers.BatchNormalization):
    """BatchNormalization that normalises with batch statistics in training mode even when
    frozen.

    Keras runs a frozen (`trainable=False`) BatchNormalization in inference mode. MoCo's key
    encoder is frozen (a moving average, never trained by gradient), yet in the paper it runs
    in training mode: its BatchNorm uses the statistics of the batch it sees, which is what
    Shuffling BN decorrelates from the queries'. Its moving statistics are left to
    `update_momentum` (they are moving averages of the query encoder's).
    """

    def call(self, inputs, training=None, mask=None):
        if not training or self.trainable or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, "float32")
        axis = self.axis % len(x.shape)
        reduce = [i for i in range(len(x.shape)) if i != axis]
        mean, variance = ops.moments(x, reduce, synchronized=self.synchronized)
        outputs = ops.batch_normalization(
            x,
            mean,
            variance,
            axis=axis,
            offset=ops.cast(self.beta, x.dtype) if self.center else None,
            scale=ops.cast(self.gamma, x.dtype) if self.scale else None,
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)


def momentum_copy(model: keras.Model) -> keras.Model:
    """A frozen copy of a Functional/Sequential `model` with the same weights: MoCo's key
    encoder/head. Nested models are copied too; its BatchNorm layers become
    `BatchStatsNormalization`, so they still use batch statistics in training mode."""

    def clone_layer(layer):
        if type(layer) is layers.BatchNormalization:
            return BatchStatsNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    for layer in _nested_layers(model):
        # A frozen copy of a BatchNorm subclass would normalise with its moving statistics
        # in training mode, silently: say so instead.
        if isinstance(layer, layers.BatchNormalization) and type(layer) not in (
            layers.BatchNormalization,
            BatchStatsNormalization,
        ):
            raise ValueError(
                "a momentum encoder (MoCo's key, BYOL's target) keeps batch statistics only "
                f"for keras.layers.BatchNormalization; layer {layer.name!r} is a "
                f"{type(layer).__name__}"
            )

    try:
        copy = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    except ValueError as error:
        raise ValueError(
            "a momentum encoder (MoCo's key, BYOL's target) is a clone of the encoder and head, "
            "which must be "
            f"Functional or Sequential models. Received: {type(model).__name__} ({error})"
        ) from None
    copy.set_weights(model.get_weights())
    copy.trainable = False
    return copy


def _nested_layers(model: keras.Layer):
    """Every layer of `model`, nested models' layers included."""
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from _nested_layers(layer)


def in_groups(fn, x, groups: int):
    """`fn` applied separately to `groups` interleaved groups of rows (row i in group
    i mod groups), rows returned in their original order. BatchNorm inside `fn` then sees
    the statistics of each group only, like the per-GPU BatchNorm of the paper."""
    if groups == 1:
        return fn(x)
    n = x.shape[0]
    if n is not None and n % groups:
        raise ValueError(
            f"the per-replica batch size must be a multiple of bn_groups. "
            f"Received: batch size {n}, bn_groups={groups}"
        )
    parts = [fn(x[g::groups]) for g in range(groups)]  # groups x [n/groups, d]
    return ops.reshape(ops.stack(parts, axis=1), (-1, parts[0].shape[-1]))  # [n, d]


def _unit_rows(seed):
    def initializer(shape, dtype=None):
        return l2_normalize(keras.random.normal(shape, seed=seed))

    return initializer


@keras.saving.register_keras_serializable(package="kerassl")
class KeyQueue(layers.Layer):
    """MoCo's dictionary: a FIFO queue of `size` keys, the oldest overwritten first.

    "The dictionary is dynamic, the keys are randomly sampled, […] the current mini-batch
    is enqueued to the dictionary, and the oldest mini-batch in the queue is removed"
    (MoCo, section 3.2). Initialised, as in the official code, with random unit vectors.
    The keys and the pointer (the slot of the oldest key) are non-trainable weights, so
    they are saved with the model and restored by `BackupAndRestore`.

    Args:
        size: int K ≥ 1, number of keys; need not be a multiple of the batch size.
        dim: int, key dimension.
        seed: int or None, seed of the initial random keys.
    """

    def __init__(self, size: int, dim: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if int(size) != size or size < 1:
            raise ValueError(f"size must be an integer >= 1. Received: size={size}")
        self.size = int(size)
        self.dim = int(dim)
        self.seed = seed
        self.keys = self.add_weight(
            shape=(self.size, self.dim),
            initializer=_unit_rows(seed),
            trainable=False,
            name="keys",
        )
        self.pointer = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, name="pointer"
        )
        self.built = True

    def enqueue(self, keys) -> None:
        """Writes `keys` ([n, d], oldest first) over the oldest entries.

        Slot `(pointer + i) mod K` receives key i and the pointer advances by n mod K, so
        after any sequence of calls the queue, read from the pointer on, holds the last K
        keys in order. If n > K only the newest K keys are kept.
        """
        keys = ops.cast(keys, self.keys.dtype)
        size = self.size
        n = keys.shape[0] if keys.shape[0] is not None else ops.shape(keys)[0]
        start, count = self.pointer, n
        if isinstance(n, int) and n > size:
            keys, start, count = keys[n - size :], start + (n - size), size
        slots = (start + ops.arange(count, dtype="int32")) % size  # [count]
        self.keys.assign(ops.scatter_update(self.keys, slots[:, None], keys))
        self.pointer.assign((self.pointer + n) % size)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "dim": self.dim, "seed": self.seed}


@keras.saving.register_keras_serializable(package="kerassl")
class MoCo(SSLModel):
    """MoCo v2: a query encoder trained by InfoNCE against a momentum key encoder and a
    queue of negative keys.

    Per Algorithm 1 of MoCo: for a minibatch x, q = g_q(f_q(aug(x))) with the query encoder
    + head, k = g_k(f_k(aug(x))) with the key encoder + head (no gradient), InfoNCE of q
    against [k₊, queue] at temperature τ, SGD on the query networks, then the momentum
    update θ_k ← m·θ_k + (1 − m)·θ_q and the enqueue of k, the oldest keys dropping out.
    MoCo v2 adds the MLP head, stronger augmentation and τ = 0.2.

    BatchNorm leakage: the paper's Shuffling BN. Queries are encoded in `bn_groups`
    interleaved groups of the global batch and keys in `bn_groups` groups of a randomly
    shuffled copy of it (under a strategy the key images are all-gathered, shuffled
    identically on every replica, and the keys all-gathered back), so a query and its
    positive key never share batch statistics, which would let the model recognise its
    positive without learning a good representation. With synchronised BatchNorm (what
    `kerassl.experiment` builds under a strategy) a group's statistics are those of the
    whole global group, so results do not depend on the number of replicas; with per-replica
    BatchNorm and `bn_groups=1` this is exactly the paper's Shuffling BN across GPUs.
    `bn_groups=1` on one device leaves plain BatchNorm (no remedy).

    Under a strategy every replica enqueues the all-gathered keys of the global batch in
    replica order, so the queue is identical on every replica.

    Args:
        encoder: query encoder f_q (`keras.Model` from [0, 1] images to features).
        head: query head g_q (the MLP head of MoCo v2).
        augmenter: view generator (`kerassl.data.augment.Augmenter`).
        temperature: float > 0, τ (0.07 in MoCo v1, 0.2 in v2).
        momentum: float in [0, 1), m of the key encoder's moving average (0.999 in the
            paper's 800-epoch ImageNet runs; 0.99 suits short runs on small datasets).
        queue_size: int K ≥ 1, negative keys kept (65536 in the paper; 4096 for small
            datasets). Need not be a multiple of the batch size.
        symmetric: also contrast the second view's queries with the first view's keys
            and add the two losses (both key sets are enqueued), as in MoCo v3.
        bn_groups: int ≥ 1, BatchNorm groups of Shuffling BN; the per-replica batch size
            must be a multiple of it.
        seed: int or None, seed of the queue's initialisation and of the key shuffle.

    Example:
    ```python
    model = MoCo(encoder, build_head("mlp", 128), make_augmenter("digits"), queue_size=4096)
    model.compile(optimizer="adam", jit_compile=True)
    model.fit(unlabeled_images, epochs=10)
    ```
    """

    def __init__(
        self,
        encoder,
        head,
        augmenter,
        temperature: float = MOCO_TEMPERATURE,
        momentum: float = 0.99,
        queue_size: int = 4096,
        symmetric: bool = False,
        bn_groups: int = 4,
        seed: int | None = None,
        **kwargs,
    ):
        for name, value in (
            ("temperature", temperature),
            ("momentum", momentum),
            ("queue_size", queue_size),
            ("bn_groups", bn_groups),
        ):
            check(name, value)
        # Method state is created before the base initialiser, which builds the model.
        self.temperature = temperature
        self.momentum = momentum
        self.queue_size = int(queue_size)
        self.symmetric = bool(symmetric)
        self.bn_groups = int(bn_groups)
        self.seed = seed
        self.key_encoder = momentum_copy(encoder)
        self.key_head = momentum_copy(head)
        self.queue = KeyQueue(self.queue_size, head.output_shape[-1], seed=seed, name="queue")
        self.shuffle_seed = keras.random.SeedGenerator(seed)
        super().__init__(encoder, head, augmenter, **kwargs)

    def compute_ssl_loss(self, view1, view2, training=True):
        if self.symmetric:
            loss_12, logits_12, labels_12, k2 = self.contrast(view1, view2, training)
            loss_21, logits_21, labels_21, k1 = self.contrast(view2, view1, training)
            loss = loss_12 + loss_21
            logits = ops.concatenate([logits_12, logits_21], axis=0)
            labels = ops.concatenate([labels_12, labels_21], axis=0)
            keys = ops.concatenate([k1, k2], axis=0)
        else:
            loss, logits, labels, keys = self.contrast(view1, view2, training)
        if training:
            # Enqueue after the loss has read the queue. Done here rather than in
            # `after_step`: replicas trace this concurrently, so the keys cannot wait on
            # `self`.
            self.queue.enqueue(keys)
        return loss, logits, labels

    def contrast(self, query_images, key_images, training=True):
        """InfoNCE of this replica's queries against their keys and the queue.

        Returns `(loss, logits, labels, keys)`, `keys` being the [N, d] normalised keys of
        the global batch (what is enqueued). The mean of the per-replica losses is the
        loss of the global batch.
        """
        groups = self.bn_groups if training else 1
        q = in_groups(lambda x: self.project(x, training=training), query_images, groups)
        keys, offset = self.momentum_keys(key_images, training)
        keys = ops.stop_gradient(l2_normalize(keys))  # [N, d] global batch
        k = ops.slice(keys, (offset, 0), ops.shape(q))  # [n, d] this replica's positives
        loss, logits, labels = info_nce(q, k, self.queue.keys, self.temperature)
        return loss, logits, labels, keys

    def momentum_keys(self, images, training=True):
        """k = g_k(f_k(x)) of the global batch with Shuffling BN.

        Returns the [N, d] keys in batch order and the row of this replica's first image.
        """

        def key_net(x):
            return self.key_head(self.key_encoder(x, training=training), training=training)

        if not training or (self.bn_groups == 1 and num_replicas() == 1):
            return all_gather(key_net(images))
        all_images, offset = all_gather(images)  # [N, H, W, C]
        noise = keras.random.uniform(ops.shape(all_images)[:1], seed=self.shuffle_seed)
        order = ops.argsort(noise)  # the same permutation on every replica
        mine = ops.take(all_images, ops.slice(order, (offset,), ops.shape(images)[:1]), axis=0)
        shuffled_keys, _ = all_gather(in_groups(key_net, mine, self.bn_groups))
        return ops.take(shuffled_keys, ops.argsort(order), axis=0), offset  # unshuffled

    def after_step(self):
        update_momentum(self.encoder, self.key_encoder, self.momentum)
        update_momentum(self.head, self.key_head, self.momentum)

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "momentum": self.momentum,
            "queue_size": self.queue_size,
            "symmetric": self.symmetric,
            "bn_groups": self.bn_groups,
            "seed": self.seed,
        }
