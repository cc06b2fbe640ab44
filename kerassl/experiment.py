"""One training run end to end: resolve once → pretrain → evaluate → run directory.

This is the layer the CLIs (`kerassl.train`, `kerassl.tune`) call. `prepare` validates a
`TrainConfig`, loads the data and resolves everything a run derives from its settings into
one `Plan` (split, unlabeled pool, augmentation preset, steps, replicas, XLA choice); the
builders and `pretrain` take plain values from it. Method names come from the registry
(`kerassl.methods`); the run directory's files are `kerassl.run_dir`'s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kerassl import checkpoint
from kerassl import run_dir as files
from kerassl.checkpoint import TrainingDiverged, TrainingState
from kerassl.checks import parse_duration, parse_every
from kerassl.config import TrainConfig
from kerassl.data.augment import make_augmenter
from kerassl.data.pipeline import pretrain_dataset, sampled_batches
from kerassl.data.presets import label_flip
from kerassl.data.preview import save_augmentation_grid
from kerassl.data.registry import ImageData, load_dataset
from kerassl.data.splits import Split, label_split, parse_labels
from kerassl.distribute import describe, is_chief, make_strategy
from kerassl.errors import RunFailed, UserError
from kerassl.evaluation.features import extract_features
from kerassl.evaluation.knn import KNNMonitor
from kerassl.evaluation.probes import linear_probe
from kerassl.methods import get_method
from kerassl.models.encoders import build_encoder
from kerassl.models.heads import build_head
from kerassl.optimizers import WarmupCosine, make_optimizer
from kerassl.resume import CONTINUE, DONE, Decision, decide
from kerassl.run_dir import RunDir, open_run

PROBE_BATCH = 64  # labeled images per step for the online probe (fewer when fewer exist)


@dataclass(frozen=True)
class Plan:
    """A run resolved once: the data and every value derived from the settings.

    Attributes:
        config: the validated settings.
        data: the dataset (uint8 arrays; the test split is only read by `evaluate`).
        split: the labeled / validation indices into `data.x_train`.
        pool: uint8 images used for pretraining (never test images).
        preset: the resolved augmentation preset (`--augment`, else the dataset's).
        label_flip: whether horizontal flips preserve labels under `preset` (the
            supervised baseline augments its labeled images with them).
        steps_per_epoch: pretraining steps per epoch.
        replicas: replicas of the strategy the run trains under.
        jit_compile: whether the whole train step is XLA-compiled.
    """

    config: TrainConfig
    data: ImageData
    split: Split
    pool: np.ndarray
    preset: str
    label_flip: bool
    steps_per_epoch: int
    replicas: int
    jit_compile: bool

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def sync_bn(self) -> bool:
        """Synchronised BatchNorm: statistics of the global batch under several replicas."""
        return self.replicas > 1

    def with_config(self, config: TrainConfig) -> Plan:
        """The same data, split and pool resolved for other settings (a tuner trial)."""
        return resolve(config, self.data, self.split, self.pool, self.replicas)


def unlabeled_pool(x_train: np.ndarray, max_unlabeled: int | None, seed: int) -> np.ndarray:
    """The pretraining images: all of `x_train`, or a seeded subsample of `max_unlabeled`."""
    if not max_unlabeled or max_unlabeled >= len(x_train):
        return x_train
    rng = np.random.default_rng(seed)
    return x_train[np.sort(rng.choice(len(x_train), max_unlabeled, replace=False))]


def step_jit_compile(setting: bool | str, replicas: int = 1) -> bool:
    """Whether to XLA-compile the whole train step. "auto": only on a GPU (on this project's
    2-core CPU machine XLA made the SimCLR step 1.35x slower). Never across replicas: XLA
    does not compile cross-replica collectives on CPU devices."""
    if replicas > 1:
        return False
    if setting == "auto":
        return bool(tf.config.list_logical_devices("GPU"))
    return bool(setting)


def resolve(
    config: TrainConfig, data: ImageData, split: Split, pool: np.ndarray, replicas: int = 1
) -> Plan:
    """Derives the plan's values from validated settings and loaded data."""
    if config.batch_size > len(pool):
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the {len(pool)} unlabeled images "
            f"of {config.dataset}; use at most {len(pool)}"
        )
    per_epoch = len(pool) // config.batch_size
    preset = config.augment or data.preset
    return Plan(
        config=config,
        data=data,
        split=split,
        pool=pool,
        preset=preset,
        label_flip=label_flip(preset),
        steps_per_epoch=min(config.steps_per_epoch or per_epoch, per_epoch),
        replicas=replicas,
        jit_compile=step_jit_compile(config.jit_compile, replicas),
    )


def prepare(config: TrainConfig, replicas: int = 1) -> Plan:
    """Validates the config, loads the data and resolves the run; every user error
    surfaces here, before any file is written."""
    config.validate()
    data = load_dataset(config.dataset, config.data_dir, config.image_size, config.download)
    split = label_split(data.y_train, parse_labels(config.labels), config.seed, config.validation)
    pool = unlabeled_pool(data.x_train, config.max_unlabeled, config.seed)
    return resolve(config, data, split, pool, replicas)


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
    model, _ = _pretrain(plan, run_dir, verbose, strategy, writes)
    return model


def _pretrain(plan, run_dir, verbose, strategy, writes) -> tuple[keras.Model, TrainingState]:
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


def evaluate(plan: Plan, encoder: keras.Model) -> tuple[dict, keras.Model]:
    """Linear probe of the frozen encoder on all the labels of the split, scored once on
    the whole test split. Returns metrics and the classifier (encoder + probe)."""
    data, split = plan.data, plan.split
    labeled = split.all_labeled
    train_features = extract_features(encoder, data.x_train[labeled])
    test_features = extract_features(encoder, data.x_test)
    result, dense = linear_probe(
        train_features,
        data.y_train[labeled],
        test_features,
        data.y_test,
        num_classes=data.num_classes,
        seed=plan.config.seed,
    )
    inputs = keras.Input(data.image_shape, name="images")
    classifier = keras.Model(inputs, dense(encoder(inputs, training=False)), name="classifier")
    return {"linear_probe": dataclasses.asdict(result)}, classifier


def run(
    config: TrainConfig, decision: Decision | None = None, verbose="auto"
) -> tuple[Path | None, dict]:
    """The whole `kerassl train` job, continued where it stopped when its run directory
    has a part of it (`kerassl.resume`). Returns the run dir (None on a worker that is
    not the chief) and the metrics.

    The stages, each skipped when the run directory shows it done: pretraining (from
    its checkpoint; done once encoder.keras exists), the linear probe, the baseline, then
    metrics.json, written last, so that an interrupted run never looks finished. A
    `UserError` removes the run directory only if this invocation created it.

    Raises:
        UserError: bad settings or data, or settings other than the run directory's.
        RunFailed: the loss became NaN or Inf; the run stays resumable.
    """
    if decision is None:
        config, decision = decide(config)
    if decision.action == DONE:
        return decision.path, open_run(decision.path, finished=True).metrics
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()  # seeds: `keras.utils.set_random_seed`
    # The strategy first: a multi-worker strategy can only be made before TensorFlow runs
    # an op, and loading data runs some.
    strategy = make_strategy(config.strategy)
    plan = prepare(config, replicas=strategy.num_replicas_in_sync)
    chief = is_chief()
    run_dir, created = _open_run_dir(decision, chief)
    try:
        budget = None
        if config.time_budget is not None:
            plan, budget = _budgeted(plan, run_dir, decision, strategy)
        if chief:
            _write_run_header(run_dir, plan, strategy, decision, config.to_json(), budget)
        return run_dir.path if chief else None, _run_stages(plan, run_dir, chief, strategy, verbose)
    except UserError:
        if created:
            run_dir.remove()
        raise
    except TrainingDiverged as error:
        lower = f"{config.learning_rate / 10:g}"
        raise RunFailed(
            f"{error}. {run_dir} is left unfinished at its last good checkpoint; continue "
            f"it with a lower learning rate: kerassl train --resume {run_dir} --lr {lower}"
        ) from None


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


def _budgeted(plan: Plan, run_dir: RunDir, decision: Decision, strategy) -> tuple[Plan, dict]:
    """The plan of a `--time-budget` run: as many steps as the budget holds at the measured
    step time, less the measurement's own time and a second compilation, in epochs of at
    most one pass; a continued run keeps the step count its config.json records."""
    recorded = run_dir.read_json(files.CONFIG, {}) if decision.action == CONTINUE else {}
    budget = recorded.get("time_budget")
    if budget is None:
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise UserError(
                "--time-budget is not supported on several workers yet (each would measure "
                "its own step time); give --epochs"
            )
        seconds = parse_duration(plan.config.time_budget)
        step_seconds, compile_seconds, spent = measure_step_seconds(plan, strategy)
        budget = {
            "seconds": seconds,
            "step_seconds": round(step_seconds, 4),
            "compile_seconds": round(compile_seconds, 1),
            "measurement_seconds": round(spent, 1),
            "steps": max(1, int((seconds - spent - compile_seconds) / step_seconds)),
        }
    steps, per_pass = budget["steps"], plan.steps_per_epoch
    epochs = math.ceil(steps / per_pass)  # so that an epoch is at most one pass
    config = dataclasses.replace(
        plan.config,
        epochs=epochs,
        steps_per_epoch=max(1, steps // epochs),
        warmup_epochs=min(plan.config.warmup_epochs, epochs),
    )
    return plan.with_config(config), budget


def _open_run_dir(decision: Decision, chief: bool) -> tuple[RunDir, bool]:
    """The run directory and whether this invocation created it (only the chief does)."""
    path = decision.path
    if not chief or decision.action == CONTINUE:
        return RunDir(path), False
    existed = path.exists() and not decision.overwrite
    if decision.overwrite:
        RunDir(path).remove()
    return (RunDir(path) if existed else RunDir.create(path.parent, path.name)), not existed


def _run_stages(plan: Plan, run_dir: RunDir, chief: bool, strategy, verbose) -> dict:
    config, data = plan.config, plan.data
    progress = run_dir.read_json(files.PROGRESS, {})

    def done(stage: str, values, name: str | None = None, model=None) -> None:
        progress[stage] = values
        if chief:
            if model is not None:
                run_dir.save_model(name, model)
            run_dir.write_json(files.PROGRESS, progress)

    if run_dir.has(files.ENCODER) and "pretrain" in progress:
        encoder = open_run(run_dir.path).load("encoder")
    else:
        model, state = _pretrain(plan, run_dir, verbose, strategy, writes=chief)
        if chief:
            # Views from the model's own augmenter, drawn after training so that drawing
            # them does not move its random stream.
            save_augmentation_grid(
                model.augmenter, plan.pool[:8], str(run_dir / files.AUGMENTATIONS)
            )
        seconds = max(state.seconds, 1e-9)
        done(
            "pretrain",
            {
                "seconds": round(seconds, 1),
                "images_per_second": round(plan.total_steps * config.batch_size / seconds, 1),
            },
            files.ENCODER,
            model.encoder,
        )
        if chief:
            RunDir(run_dir / files.CHECKPOINTS).remove()  # encoder.keras supersedes it
        encoder = model.encoder
    if "linear_probe" not in progress:
        probe, classifier = evaluate(plan, encoder)
        done("linear_probe", probe["linear_probe"], files.CLASSIFIER, classifier)
    if config.baseline != "none" and "baseline" not in progress:
        from kerassl.supervised import supervised_baseline

        result, baseline = supervised_baseline(
            data,
            plan.split,
            model=config.baseline,
            epochs=config.baseline_epochs,
            flip=plan.label_flip,
            seed=config.seed,
        )
        done("baseline", result, files.BASELINE, baseline)
    metrics = {
        "linear_probe": progress["linear_probe"],
        "pretrain_seconds": progress["pretrain"]["seconds"],
        "pretrain_images_per_second": progress["pretrain"]["images_per_second"],
    }
    if "baseline" in progress:
        metrics["baseline"] = progress["baseline"]
    metrics["dataset"] = {
        "name": data.name,
        "num_classes": data.num_classes,
        "num_unlabeled": int(len(plan.pool)),
        "num_labeled": len(plan.split.all_labeled),
        "num_test": int(len(data.x_test)),
    }
    if chief:
        run_dir.write_text(files.REPORT, report(config, metrics))
        run_dir.write_json(files.METRICS, metrics)
    return metrics


def _write_run_header(
    run_dir: RunDir,
    plan: Plan,
    strategy: tf.distribute.Strategy,
    decision: Decision,
    settings: dict,
    budget: dict | None,
) -> None:
    """config.json and split.json of a new run; for a continued one, checks that the data
    still splits as it did, and records settings changed on `--resume`. `settings` are
    the settings as given; `plan.config` the resolved ones (a `--time-budget` run's epochs
    and steps per epoch)."""
    config, data = plan.config, plan.data
    split = plan.split.to_json(data.y_train, data.class_names)
    if decision.action == CONTINUE:
        if run_dir.read_json(files.SPLIT) != json.loads(json.dumps(split)):
            raise UserError(
                f"the data of {config.dataset} no longer splits as it did when {run_dir} "
                "started (files added or removed?); start a new run"
            )
        if not decision.changes:
            return
    previous = run_dir.read_json(files.CONFIG, {})
    changes = previous.get("changes", [])
    at_step = _steps_done(run_dir, plan)
    changes += [
        {"setting": name, "from": old, "to": new, "step": at_step}
        for name, old, new in decision.changes
    ]
    resolved = config.to_json() | {
        "image_size": int(data.image_shape[0]),
        "channels": int(data.image_shape[-1]),
        "class_names": list(data.class_names),
        "augment": plan.preset,
        "source": data.source,
        "skipped_files": list(data.skipped),
        "distribution": describe(strategy),  # what --strategy resolved to
        "versions": {
            "kerassl": __import__("kerassl").__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
        "settings": settings,
        "changes": changes,
        "time_budget": budget,
    }
    run_dir.write_json(files.CONFIG, resolved)
    run_dir.write_json(files.SPLIT, split)


def _steps_done(run_dir: RunDir, plan: Plan) -> int:
    """Pretraining steps a run directory holds: all once encoder.keras exists, else its
    checkpoint's."""
    if run_dir.has(files.ENCODER):
        return plan.total_steps
    return checkpoint.saved_step(run_dir / files.CHECKPOINTS)


def report(config: TrainConfig, metrics: dict) -> str:
    """The run's Markdown summary."""
    probe = metrics["linear_probe"]
    lines = [
        f"# {config.method} on {config.dataset}",
        "",
        f"{metrics['dataset']['num_labeled']} labels, {metrics['dataset']['num_unlabeled']} "
        f"unlabeled images, {config.epochs} epochs of {config.encoder} + {config.head} head, "
        f"{metrics['pretrain_seconds']} s of pretraining.",
        "",
        "| classifier | top-1 | top-5 |",
        "|---|---|---|",
        f"| {config.method} + linear probe | {_pct(probe['top1'])} | {_pct(probe.get('top5'))} |",
    ]
    if "baseline" in metrics:
        base = metrics["baseline"]
        name = f"supervised {config.baseline} (same labels)"
        lines.append(f"| {name} | {_pct(base['top1'])} | {_pct(base.get('top5'))} |")
    lines += ["", "Augmented pairs: ![augmentations](augmentations.png)", ""]
    return "\n".join(lines)


def _pct(value) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.1f} %"
    )
