"""Pretraining a planned method: build it, train it resumably, time its step.

`build_method` turns a `TrainConfig` into an SSL model through the method registry;
`pretrain` trains it on the plan's unlabeled pool, continuing from the run directory's
checkpoint (`kerassl.checkpoint`) when there is one; `measure_step_seconds` times a step
after compilation (`--time-budget`).
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf

from kerassl import checkpoint
from kerassl import run_dir as files
from kerassl.checkpoint import TrainingDiverged, TrainingState
from kerassl.checks import parse_every
from kerassl.config import TrainConfig
from kerassl.data.augment import make_augmenter
from kerassl.data.pipeline import pretrain_dataset, sampled_batches
from kerassl.evaluation.knn import KNNMonitor
from kerassl.methods import get_method
from kerassl.models.encoders import build_encoder
from kerassl.models.heads import build_head
from kerassl.optimizers import WarmupCosine, make_optimizer
from kerassl.plan import Plan
from kerassl.run_dir import RunDir

PROBE_BATCH = 64  # labeled images per step for the online probe (fewer when fewer exist)


def build_method(
    config: TrainConfig,
    input_shape,
    preset: str,
    total_steps: int,
    num_classes: int = 0,
    sync_bn: bool = False,
    jit_compile: bool = False,
):
    """Builds and compiles the configured SSL method in the current strategy scope.

    Args:
        config: the settings (method, encoder, head, optimiser, the method's own).
        input_shape: (height, width, channels) of the images.
        preset: augmentation preset.
        total_steps: pretraining steps (the learning-rate schedule's length).
        num_classes: classes of the online probe when `config.online_probe`.
        sync_bn: synchronised BatchNorm (several replicas).
        jit_compile: XLA-compile the whole train step.
    """
    spec = get_method(config.method)
    encoder = build_encoder(config.encoder, input_shape, weights=config.weights, sync_bn=sync_bn)
    build_projector = spec.load_projector()
    if build_projector is not None:
        # The method's own projector (--projector-dims) takes the place of the --head options.
        head = build_projector(encoder.output_shape[-1], config.projector_widths, sync_bn=sync_bn)
    else:
        head = build_head(
            config.head,
            encoder.output_shape[-1],
            output_dim=config.projection_dim,
            hidden_dim=config.hidden_dim,
            sync_bn=sync_bn,
        )
    arguments = {argument: getattr(config, name) for name, argument in spec.arguments.items()}
    model = spec.load()(
        encoder,
        head,
        make_augmenter(preset, seed=config.seed),
        probe_classes=num_classes if config.online_probe else 0,
        name=spec.name,
        **arguments,
    )
    warmup = int(round(config.warmup_epochs / config.epochs * total_steps))
    schedule = WarmupCosine(config.learning_rate, total_steps=total_steps, warmup_steps=warmup)
    optimizer = make_optimizer(config.optimizer, schedule, weight_decay=config.weight_decay)
    model.compile(optimizer=optimizer, jit_compile=jit_compile)
    return model


def pretrain(
    plan: Plan,
    run_dir: RunDir | None = None,
    verbose="auto",
    strategy: tf.distribute.Strategy | None = None,
    writes: bool = True,
) -> keras.Model:
    """Pretrains the planned method on the unlabeled pool; returns the SSL model.

    With a `run_dir`, pretraining continues from its checkpoint when there is one (step
    exact: weights, optimizer, schedule, queue, seed states, data order) and, when
    `writes`, checkpoints every `--checkpoint-every` and at each epoch's end and keeps
    history.csv (`kerassl.checkpoint`). `writes=False` (workers other than the chief)
    restores from the chief's directory but writes nothing.

    `strategy` defaults to the current one; a multi-worker strategy must have been made
    before any TensorFlow op ran (`run` makes it first), and `plan.replicas` must be its
    replica count.

    Raises:
        TrainingDiverged: the loss became NaN or Inf (the last good checkpoint stays).
    """
    model, _ = pretrain_with_state(plan, run_dir, verbose, strategy, writes)
    return model


def pretrain_with_state(
    plan: Plan,
    run_dir: RunDir | None = None,
    verbose="auto",
    strategy: tf.distribute.Strategy | None = None,
    writes: bool = True,
) -> tuple[keras.Model, TrainingState]:
    """`pretrain`, also returning where training stands (steps, history, seconds)."""
    config, data, split = plan.config, plan.data, plan.split
    keras.utils.set_random_seed(config.seed)
    strategy = strategy or tf.distribute.get_strategy()
    saved = None if run_dir is None else checkpoint.latest(run_dir / files.CHECKPOINTS)
    with strategy.scope():
        model = build_method(
            config,
            data.image_shape,
            plan.preset,
            plan.total_steps,
            num_classes=data.num_classes,
            sync_bn=plan.sync_bn,
            jit_compile=plan.jit_compile,
        )
        state = checkpoint.restore(model, saved) if saved is not None else TrainingState()
    writing = run_dir is not None and writes
    checkpointer = checkpoint.Checkpointer(
        run_dir / files.CHECKPOINTS if writing else None,
        run_dir / files.HISTORY if writing else None,
        parse_every(config.checkpoint_every),
        state,
    )
    # The guard first: nothing after it sees (or checkpoints) a non-finite loss.
    callbacks = [checkpoint.StopOnNonFinite(state.step)]
    if config.knn_every:
        # kNN accuracy of the validation labels against the training labels: a label-free
        # training signal users can watch (the test split stays unseen).
        query = split.validation if len(split.validation) else split.labeled
        callbacks.append(
            KNNMonitor(
                data.x_train[split.labeled],
                data.y_train[split.labeled],
                data.x_train[query],
                data.y_train[query],
                every=config.knn_every,
            )
        )
    callbacks.append(checkpointer)
    if writing:
        # TensorBoard reads local values and runs no collective op: the chief's only.
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / files.LOGS), write_graph=False))
    # (first epoch, last epoch, steps of the first already done): an epoch resumed
    # mid-way first finishes its remaining steps in a `fit` of its own.
    epoch, done = divmod(state.step, plan.steps_per_epoch)
    segments = [(epoch, epoch + 1, done), (epoch + 1, config.epochs, 0)]
    try:
        for first, last, skip in segments if done else [(epoch, config.epochs, 0)]:
            if first >= last:
                continue
            model.fit(
                _pretrain_data(plan, first, last, skip),
                initial_epoch=first,
                epochs=last,
                steps_per_epoch=plan.steps_per_epoch - skip,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # the dataset orders itself, from (seed, epoch)
            )
    except TrainingDiverged:
        checkpointer.discard_pending()
        raise
    return model, state


def _pretrain_data(plan: Plan, first: int, last: int, skip: int) -> tf.data.Dataset:
    """The batches of epochs [first, last), without the first `skip` of `first`."""
    config, data, split = plan.config, plan.data, plan.split
    steps = plan.steps_per_epoch
    dataset = pretrain_dataset(
        plan.pool, config.batch_size, config.seed, (first, last), steps, skip
    )
    if config.online_probe:
        # Each step also gets a batch of the labeled training examples (never validation
        # or test images) for the online probe; `(images, (labeled_images, labels))`.
        x, y = data.x_train[split.labeled], data.y_train[split.labeled]
        size = min(PROBE_BATCH, len(x))
        labeled = sampled_batches(x, y, size, config.seed, first_step=first * steps + skip)
        dataset = tf.data.Dataset.zip(dataset, labeled)
    # Several workers: every worker runs the same seeded pipeline, and DATA sharding (after
    # Keras splits each global batch into per-replica batches) gives worker i the i-th slice
    # of every global batch. Said explicitly: the pool is a tensor, not files, so AUTO would
    # try FILE sharding first and fall back to DATA with a warning.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def measure_step_seconds(plan: Plan, strategy=None, steps: int = 5) -> tuple[float, float, float]:
    """Seconds per pretraining step after compilation, on a throwaway model built as the
    run's; the seconds of its first step (tracing and compilation, which the run's own
    model spends again); and the seconds the measurement took in all."""
    strategy = strategy or tf.distribute.get_strategy()
    started = time.monotonic()
    keras.utils.set_random_seed(plan.config.seed)
    with strategy.scope():
        model = build_method(
            plan.config,
            plan.data.image_shape,
            plan.preset,
            plan.total_steps,
            num_classes=plan.data.num_classes,
            sync_bn=plan.sync_bn,
            jit_compile=plan.jit_compile,
        )
    batches = iter(_pretrain_data(plan, 0, 1, 0).repeat())

    def step():
        batch = next(batches)
        if isinstance(batch, tuple):  # (images, (labeled images, labels)): the online probe
            model.train_on_batch(*batch)
        else:
            model.train_on_batch(batch)

    first = time.monotonic()
    step()  # tracing and compilation
    compiled = time.monotonic()
    step()  # a first run of the compiled step
    timed = time.monotonic()
    for _ in range(steps):
        step()
    now = time.monotonic()
    return (now - timed) / steps, compiled - first, now - started
