"""A run resolved once: the settings, the data and every value derived from them (`Plan`).

`prepare` validates a `TrainConfig`, loads the data, draws the split and the unlabeled pool
and `resolve`s the rest (augmentation preset, steps, replicas, XLA choice), so that every
builder and loop downstream takes plain values from one frozen object.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from kerassl.config import TrainConfig
from kerassl.data.presets import label_flip
from kerassl.data.registry import ImageData, load_dataset
from kerassl.data.splits import Split, label_split, parse_labels
from kerassl.errors import UserError


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
        jit_compile: whether the whole train step is XLA-compiled: `resolve` applies the
            fixed rule (`step_jit_compile`); `kerassl.experiment.run` then sets the
            measured choice of `--xla auto` (`kerassl.xla_choice`, `with_jit_compile`).
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

    def with_jit_compile(self, jit_compile: bool) -> Plan:
        """The same plan with the whole train step XLA-compiled or not."""
        return dataclasses.replace(self, jit_compile=bool(jit_compile))

    def with_steps(self, steps: int) -> Plan:
        """The plan for `steps` pretraining steps in all (a `--time-budget`), in as few
        epochs as keep each at most one pass; the warmup clipped to them. The XLA
        choice stays the plan's."""
        epochs = math.ceil(steps / self.steps_per_epoch)
        config = dataclasses.replace(
            self.config,
            epochs=epochs,
            steps_per_epoch=max(1, steps // epochs),
            warmup_epochs=min(self.config.warmup_epochs, epochs),
        )
        return self.with_config(config).with_jit_compile(self.jit_compile)


def unlabeled_pool(x_train: np.ndarray, max_unlabeled: int | None, seed: int) -> np.ndarray:
    """The pretraining images: all of `x_train`, or a seeded subsample of `max_unlabeled`."""
    if not max_unlabeled or max_unlabeled >= len(x_train):
        return x_train
    rng = np.random.default_rng(seed)
    return x_train[np.sort(rng.choice(len(x_train), max_unlabeled, replace=False))]


def step_jit_compile(setting: bool | str, replicas: int = 1) -> bool:
    """The fixed rule for XLA-compiling the whole train step. "auto": only on a GPU; a run
    long enough replaces it by measuring both forms (`kerassl.xla_choice`), since on CPUs
    whole-step XLA was 0.76x on one of this project's machines and 1.24x on another.
    Never across replicas: XLA does not compile cross-replica collectives on CPU devices."""
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
