"""One training run end to end: data → split → augment → pretrain → evaluate → run dir.

This is the layer the CLIs (`kerassl.train`, `kerassl.tune`) call; it turns a
`TrainConfig` into explicit constructor calls. It is the only library module that knows
method names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kerassl.config import TrainConfig
from kerassl.data.augment import make_augmenter, save_augmentation_grid
from kerassl.data.pipeline import labeled_dataset, pretrain_dataset
from kerassl.data.sources import ImageData, load_dataset
from kerassl.data.splits import Split, label_split, parse_labels
from kerassl.distribute import describe, is_chief, make_strategy
from kerassl.errors import UserError
from kerassl.evaluation.knn import KNNMonitor
from kerassl.evaluation.probes import extract_features, linear_probe
from kerassl.models.barlow_twins import BarlowTwins, build_projector
from kerassl.models.encoders import build_encoder
from kerassl.models.heads import build_head
from kerassl.models.moco import MoCo
from kerassl.models.simclr import SimCLR
from kerassl.optimizers import WarmupCosine, make_optimizer

PROBE_BATCH = 64  # labeled images per step for the online probe (fewer when fewer exist)


def _simclr(config: TrainConfig, encoder, head, augmenter, **common) -> SimCLR:
    return SimCLR(encoder, head, augmenter, temperature=config.temperature, name="simclr", **common)


def _moco(config: TrainConfig, encoder, head, augmenter, **common) -> MoCo:
    return MoCo(
        encoder,
        head,
        augmenter,
        temperature=config.temperature,
        momentum=config.momentum,
        queue_size=config.queue_size,
        symmetric=config.symmetric,
        bn_groups=config.bn_groups,
        seed=config.seed,
        name="moco",
        **common,
    )


def _barlow_twins(config: TrainConfig, encoder, head, augmenter, **common) -> BarlowTwins:
    # The paper's projector (--projector-dims) takes the place of the --head options.
    projector = build_projector(
        encoder.output_shape[-1],
        [int(width) for width in config.projector_dims.split(",")],
        sync_bn=tf.distribute.get_strategy().num_replicas_in_sync > 1,
    )
    return BarlowTwins(
        encoder, projector, augmenter, lambda_=config.bt_lambda, name="barlow_twins", **common
    )


# Method name → builder(config, encoder, head, augmenter, **SSLModel arguments) -> SSLModel.
METHODS = {"simclr": _simclr, "moco": _moco, "barlow_twins": _barlow_twins}


@dataclass
class Prepared:
    """What a run needs before training: the data, its split and the unlabeled pool."""

    data: ImageData
    split: Split
    pool: np.ndarray  # uint8 images used for pretraining (never test images)


def prepare(config: TrainConfig) -> Prepared:
    """Validates the config and loads data; every user error surfaces here, before any
    file is written."""
    config.validate()
    if config.method not in METHODS:
        raise UserError(f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")
    data = load_dataset(config.dataset, config.data_dir, config.image_size, config.download)
    split = label_split(data.y_train, parse_labels(config.labels), config.seed, config.validation)
    pool = data.x_train
    if config.max_unlabeled and config.max_unlabeled < len(pool):
        rng = np.random.default_rng(config.seed)
        pool = pool[np.sort(rng.choice(len(pool), config.max_unlabeled, replace=False))]
    if config.batch_size > len(pool):
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the {len(pool)} unlabeled images "
            f"of {config.dataset}; use at most {len(pool)}"
        )
    return Prepared(data, split, pool)


def build_method(
    config: TrainConfig, input_shape, augment_preset: str, steps: int, num_classes: int = 0
):
    """Builds and compiles the SSL model in the current strategy scope (with an online
    probe over `num_classes` classes when `config.online_probe`)."""
    sync_bn = tf.distribute.get_strategy().num_replicas_in_sync > 1
    encoder = build_encoder(config.encoder, input_shape, weights=config.weights, sync_bn=sync_bn)
    head = build_head(
        config.head,
        encoder.output_shape[-1],
        output_dim=config.projection_dim,
        hidden_dim=config.hidden_dim,
        sync_bn=sync_bn,
    )
    augmenter = make_augmenter(augment_preset, seed=config.seed)
    probe_classes = num_classes if config.online_probe else 0
    model = METHODS[config.method](config, encoder, head, augmenter, probe_classes=probe_classes)
    warmup = int(round(config.warmup_epochs / config.epochs * steps))
    schedule = WarmupCosine(config.learning_rate, total_steps=steps, warmup_steps=warmup)
    optimizer = make_optimizer(config.optimizer, schedule, weight_decay=config.weight_decay)
    model.compile(optimizer=optimizer, jit_compile=step_jit_compile(config.jit_compile))
    return model


def step_jit_compile(setting: bool | str) -> bool:
    """Whether to XLA-compile the whole train step. "auto": only on a GPU (on this project's
    2-core CPU machine XLA made the SimCLR step 1.35x slower). Never across replicas: XLA
    does not compile cross-replica collectives on CPU devices."""
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        return False
    if setting == "auto":
        return bool(tf.config.list_logical_devices("GPU"))
    return bool(setting)


def pretrain(
    config: TrainConfig,
    prepared: Prepared,
    run_dir: Path | None = None,
    verbose="auto",
    strategy: tf.distribute.Strategy | None = None,
):
    """Pretrains the configured method on the unlabeled pool; returns the SSL model.

    `strategy` defaults to `make_strategy(config.strategy)`; a multi-worker strategy must
    have been made before any TensorFlow op ran (`run` makes it first).
    """
    keras.utils.set_random_seed(config.seed)
    data, split = prepared.data, prepared.split
    if strategy is None:
        strategy = make_strategy(config.strategy)
    per_epoch = len(prepared.pool) // config.batch_size
    steps_per_epoch = min(config.steps_per_epoch or per_epoch, per_epoch)
    preset = config.augment or data.preset
    with strategy.scope():
        model = build_method(
            config, data.image_shape, preset, steps_per_epoch * config.epochs, data.num_classes
        )
    dataset = pretrain_dataset(prepared.pool, config.batch_size, seed=config.seed)
    if config.online_probe:
        # Each step also gets a batch of the labeled training examples (never validation
        # or test images) for the online probe; `(images, (labeled_images, labels))`.
        x, y = data.x_train[split.labeled], data.y_train[split.labeled]
        size = min(PROBE_BATCH, len(x))
        labeled = labeled_dataset(x, y, size, shuffle=True, seed=config.seed, drop_remainder=True)
        dataset = tf.data.Dataset.zip(dataset, labeled.repeat())
    # Several workers: every worker runs the same seeded pipeline, and DATA sharding (after
    # Keras splits each global batch into per-replica batches) gives worker i the i-th slice
    # of every global batch. Said explicitly: the pool is a tensor, not files, so AUTO would
    # try FILE sharding first and fall back to DATA with a warning.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    callbacks = []
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
    if run_dir is not None:
        # The chief's only, also under several workers: Keras 3's BackupAndRestore (unlike
        # tf.keras 2's, which other workers had to run too, into temporary directories),
        # CSVLogger and TensorBoard read local values and run no collective op. Resuming is
        # not an issue: a run directory is always new, so there is never a backup to restore.
        callbacks += [
            keras.callbacks.BackupAndRestore(str(run_dir / "checkpoints")),
            keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
            keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
        ]
    model.fit(
        dataset.repeat(),
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the dataset shuffles itself, seeded
    )
    return model


def evaluate(
    config: TrainConfig, prepared: Prepared, encoder: keras.Model
) -> tuple[dict, keras.Model]:
    """Linear probe of the frozen encoder on all the labels of the split, scored once on
    the whole test split. Returns metrics and the classifier (encoder + probe)."""
    data, split = prepared.data, prepared.split
    labeled = split.all_labeled
    train_features = extract_features(encoder, data.x_train[labeled])
    test_features = extract_features(encoder, data.x_test)
    result, dense = linear_probe(
        train_features,
        data.y_train[labeled],
        test_features,
        data.y_test,
        num_classes=data.num_classes,
        seed=config.seed,
    )
    inputs = keras.Input(data.image_shape, name="images")
    classifier = keras.Model(inputs, dense(encoder(inputs, training=False)), name="classifier")
    return {"linear_probe": dataclasses.asdict(result)}, classifier


def new_run_dir(config: TrainConfig) -> Path:
    """Creates `<out>/<method>-<dataset>-<timestamp>/`; UserError when not writable."""
    dataset = config.dataset.replace(":", "-").replace("/", "_").strip("_-")[-40:]
    name = config.run_name or f"{config.method}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(config.out) / name
    try:
        path.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise UserError(f"run directory {path} already exists; choose another --run-name") from None
    except OSError as error:
        raise UserError(
            f"cannot create run directory under {config.out}: {error.strerror}"
        ) from None
    return path


def _write_json(path: Path, values) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(values, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run(config: TrainConfig, verbose="auto") -> tuple[Path, dict]:
    """The whole `kerassl train` job. Returns the run dir and the metrics.

    A user error raised after the run dir was created removes it; metrics.json is
    written last, so an interrupted run never looks finished.
    """
    # The strategy first: a multi-worker strategy can only be made before TensorFlow runs
    # an op, and loading data runs some.
    strategy = make_strategy(config.strategy)
    prepared = prepare(config)
    data = prepared.data
    chief = is_chief()
    run_dir = new_run_dir(config) if chief else None
    try:
        started = time.time()
        if run_dir is not None:
            _write_run_header(run_dir, config, prepared, strategy)
        model = pretrain(config, prepared, run_dir, verbose=verbose, strategy=strategy)
        pretrain_seconds = time.time() - started
        metrics, classifier = evaluate(config, prepared, model.encoder)
        metrics["pretrain_seconds"] = round(pretrain_seconds, 1)
        metrics["pretrain_images_per_second"] = round(
            config.epochs
            * (model.history.params.get("steps") or 0)
            * config.batch_size
            / pretrain_seconds,
            1,
        )
        if config.baseline != "none":
            from kerassl.models.supervised import supervised_baseline

            metrics["baseline"], baseline = supervised_baseline(
                data,
                prepared.split,
                model=config.baseline,
                epochs=config.baseline_epochs,
                seed=config.seed,
            )
        metrics["dataset"] = {
            "name": data.name,
            "num_classes": data.num_classes,
            "num_unlabeled": int(len(prepared.pool)),
            "num_labeled": len(prepared.split.all_labeled),
            "num_test": int(len(data.x_test)),
        }
        if run_dir is not None:
            model.encoder.save(run_dir / "encoder.keras")
            classifier.save(run_dir / "classifier.keras")
            if config.baseline != "none":
                baseline.save(run_dir / "baseline.keras")
            (run_dir / "report.md").write_text(report(config, metrics))
            _write_json(run_dir / "metrics.json", metrics)
        return run_dir, metrics
    except UserError:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _write_run_header(
    run_dir: Path, config: TrainConfig, prepared: Prepared, strategy: tf.distribute.Strategy
) -> None:
    data = prepared.data
    resolved = config.to_json() | {
        "image_size": int(data.image_shape[0]),
        "channels": int(data.image_shape[-1]),
        "class_names": list(data.class_names),
        "augment": config.augment or data.preset,
        "source": data.source,
        "distribution": describe(strategy),  # what --strategy resolved to
        "versions": {
            "kerassl": __import__("kerassl").__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
    }
    _write_json(run_dir / "config.json", resolved)
    _write_json(run_dir / "split.json", prepared.split.to_json(data.y_train, data.class_names))
    augmenter = make_augmenter(config.augment or data.preset, seed=config.seed)
    save_augmentation_grid(augmenter, prepared.pool[:8], str(run_dir / "augmentations.png"))


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
