"""Pretraining a planned method: build it, train it resumably, time its step.

`build_method` turns a `TrainConfig` into an SSL model through the method registry;
`pretrain` trains it on the plan's unlabeled pool, continuing from the run directory's
checkpoint (`kerassl.checkpoint`) when there is one; `measure_step_seconds` times
pretraining as `fit` runs it (steps after compilation, startup, epoch ends) and
`budget_steps` turns that into the step count of a `--time-budget`.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass

import keras
import numpy as np
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
from kerassl.models.base import dtype_policy, float32_outputs, loss_scaled
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
        config: the settings (method, encoder, head, optimiser, precision, the method's
            own).
        input_shape: (height, width, channels) of the images.
        preset: augmentation preset.
        total_steps: pretraining steps (the learning-rate schedule's length).
        num_classes: classes of the online probe when `config.online_probe`.
        sync_bn: synchronised BatchNorm (several replicas).
        jit_compile: XLA-compile the whole train step.
    """
    spec = get_method(config.method)
    # Every layer of the method (encoder, head, predictor, momentum copies, probe) takes
    # `--precision`'s policy; the process's own policy is left as it was.
    with dtype_policy(config.precision):
        encoder = float32_outputs(
            build_encoder(config.encoder, input_shape, weights=config.weights, sync_bn=sync_bn)
        )
        build_projector = spec.load_projector()
        if build_projector is not None:
            # The method's own projector (--projector-dims) takes the place of the --head options.
            head = build_projector(
                encoder.output_shape[-1], config.projector_widths, sync_bn=sync_bn
            )
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
    # The loss scaling is said here rather than left to `compile` (which wraps the optimizer
    # of a mixed_float16 model too), so that every builder of a method gets it the same way.
    model.compile(
        optimizer=loss_scaled(optimizer, config.precision),
        jit_compile=jit_compile,
        auto_scale_loss=False,
    )
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
    config, data = plan.config, plan.data
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
    callbacks, checkpointer = _callbacks(plan, state, run_dir if writing else None)
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


def _callbacks(
    plan: Plan, state: TrainingState, run_dir: RunDir | None
) -> tuple[list[keras.callbacks.Callback], checkpoint.Checkpointer]:
    """The callbacks of a pretraining `fit` (and its `Checkpointer`), writing into
    `run_dir` (checkpoints, history.csv, TensorBoard logs) unless it is None."""
    config, data, split = plan.config, plan.data, plan.split
    checkpointer = checkpoint.Checkpointer(
        run_dir / files.CHECKPOINTS if run_dir is not None else None,
        run_dir / files.HISTORY if run_dir is not None else None,
        parse_every(config.checkpoint_every),
        state,
    )
    # The guard first: nothing after it sees (or checkpoints) a non-finite loss.
    callbacks = [checkpoint.StopOnNonFinite(state.step)]
    if config.knn_every and len(split.validation):
        # kNN accuracy of the validation labels against the training labels: a label-free
        # training signal users can watch (the test split stays unseen). Without
        # validation labels there is none: the labeled images classified against
        # themselves would read 100 % at every epoch.
        callbacks.append(
            KNNMonitor(
                data.x_train[split.labeled],
                data.y_train[split.labeled],
                data.x_train[split.validation],
                data.y_train[split.validation],
                every=config.knn_every,
            )
        )
    callbacks.append(checkpointer)
    if run_dir is not None:
        # TensorBoard reads local values and runs no collective op: the chief's only.
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / files.LOGS), write_graph=False))
    return callbacks, checkpointer


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
    # No autotuning: deleting the iterator at the end of `fit` waits for the autotuner's
    # thread, which held pretraining's end up by 4-10 s in 4 of 6 fits on Fashion-MNIST
    # (none of 6 without it): time no --time-budget can plan. A batch is a gather of ~1 ms,
    # so the fixed parallelism it falls back to costs the step nothing.
    options.autotune.enabled = False
    return dataset.with_options(options)


@dataclass(frozen=True)
class StepTiming:
    """What pretraining costs on this machine, measured on a throwaway model in a short
    `fit` run as the run's (`measure_step_seconds`); `budget_steps` plans with it.

    Attributes:
        step: seconds per step as `fit` runs it after compilation, the per-step work of
            the callbacks (the loss read, the checkpoint test) included.
        startup: seconds before the first step proper, which the run spends again:
            building the model, setting up `fit`, tracing and compiling the step.
        first_epoch_end: seconds of the first epoch's end (the kNN monitor's first
            embedding traces its function; the first checkpoint; TensorBoard's writer).
        epoch_end: seconds of every later epoch's end (kNN monitor, checkpoint,
            history.csv, TensorBoard).
        spent: seconds the measurement took in all.
    """

    step: float
    startup: float
    first_epoch_end: float
    epoch_end: float
    spent: float


class _StepClock(keras.callbacks.Callback):
    """Reads `clock` at every step's and epoch's end, after the callbacks before it."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.steps: list[list[float]] = []  # per epoch: each step's end
        self.epochs: list[float] = []  # each epoch's end

    def on_epoch_begin(self, epoch, logs=None):
        self.steps.append([])

    def on_train_batch_end(self, batch, logs=None):
        self.steps[-1].append(self.clock())

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(self.clock())


def measure_step_seconds(
    plan: Plan, strategy=None, steps: int = 4, clock=time.monotonic
) -> StepTiming:
    """Times pretraining as the run will do it: a throwaway model built as the run's,
    trained for 2 epochs of `steps` steps (>= 2) by `fit` with the run's callbacks
    (writing into a temporary directory), and `clock` read at each step's and epoch's
    end. The first step is the startup's; so is the time to the first one, and the
    second step (the compiled step's first run) is not averaged."""
    strategy = strategy or tf.distribute.get_strategy()
    started = clock()
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
    passes = math.ceil(2 * steps / plan.steps_per_epoch)  # enough batches for both epochs
    timer = _StepClock(clock)
    with tempfile.TemporaryDirectory(prefix="kerassl-timing-") as scratch:
        callbacks, _ = _callbacks(plan, TrainingState(), RunDir(scratch))
        model.fit(
            _pretrain_data(plan, 0, passes, 0),
            epochs=2,
            steps_per_epoch=steps,
            callbacks=[*callbacks, timer],  # the timer last: it sees the others' time
            verbose=0,
            shuffle=False,
        )
    first, later = timer.steps
    intervals = np.diff(first[1:]).tolist() + np.diff(later).tolist()  # [2 steps - 3]
    step = float(np.mean(intervals))
    return StepTiming(
        step=step,
        startup=max(first[0] - started - step, 0.0),
        first_epoch_end=max(later[0] - first[-1] - step, 0.0),  # with the next epoch's begin
        epoch_end=timer.epochs[1] - later[-1],
        spent=clock() - started,
    )


def budget_steps(seconds: float, timing: StepTiming, steps_per_pass: int) -> int:
    """The most steps (>= 1) a `--time-budget` of `seconds` holds when the run is planned
    as `Plan.with_steps` plans it (ceil(steps / steps_per_pass) epochs): its measurement,
    its startup, its steps and its epochs' ends.

    The time left after the measurement, the startup and the first epoch's extra end
    cost holds whole epochs of `steps_per_pass` steps plus one end each, then a partial
    epoch of what remains after its end."""
    room = seconds - timing.spent - timing.startup - (timing.first_epoch_end - timing.epoch_end)
    per_epoch = steps_per_pass * timing.step + timing.epoch_end
    epochs = max(_floor(room / per_epoch), 0)
    rest = room - epochs * per_epoch - timing.epoch_end
    return max(1, epochs * steps_per_pass + max(_floor(rest / timing.step), 0))


def _floor(x: float) -> int:
    """floor, forgiving rounding errors (50 / 0.1 = 499.99999999999994)."""
    return math.floor(x + 1e-9)
