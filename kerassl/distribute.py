"""Distribution strategy from flags and the environment: one device, several GPUs, several
machines (TF_CONFIG or SLURM)."""

from __future__ import annotations

import os

import tensorflow as tf

from kerassl.catalog import STRATEGIES, known
from kerassl.cluster import is_chief, slurm_workers, tf_config_workers
from kerassl.errors import UserError

__all__ = ["STRATEGIES", "describe", "is_chief", "make_strategy", "split_cpu"]


def split_cpu(devices: int) -> None:
    """Splits the CPU into `devices` logical devices, so MirroredStrategy can run on a
    machine without GPUs (tests, CI). Must run before TensorFlow initialises devices."""
    if devices < 1:
        raise UserError(f"--cpu-devices must be >= 1; got {devices}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
        )
    except RuntimeError:
        current = len(tf.config.list_logical_devices("CPU"))
        if current != devices:
            raise UserError(
                f"cannot split the CPU into {devices} devices: TensorFlow is already "
                f"initialised with {current}"
            ) from None


def make_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    """Returns the strategy for `kind`.

    - `auto`: multi-worker when `TF_CONFIG` names several workers or SLURM runs several
      tasks, MirroredStrategy over all local GPUs (or logical CPUs) when there are
      several, else the default (single-device) strategy.
    - `default`, `mirrored`, `multi_worker`: that strategy. Multi-worker reads the cluster
      from `TF_CONFIG`, or from SLURM's environment through `SlurmClusterResolver`.

    Multi-worker configures the collective ops of the process, which TensorFlow allows only
    before its context is initialised: call this before any TensorFlow op runs (data
    loading included). The multi-worker strategy is made once per process and returned
    again by later calls.
    """
    known("strategy", kind, STRATEGIES)
    if kind == "auto":
        if tf_config_workers() > 1 or slurm_workers() > 1:
            kind = "multi_worker"
        elif _local_devices() > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=_device_names())
    global _multi_worker
    if _multi_worker is None:
        if "TF_CONFIG" not in os.environ and slurm_workers() > 1:
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
            _multi_worker = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        else:
            _multi_worker = tf.distribute.MultiWorkerMirroredStrategy()
    return _multi_worker


# The process's MultiWorkerMirroredStrategy: its collective ops can be configured only once.
_multi_worker: tf.distribute.Strategy | None = None


def describe(strategy: tf.distribute.Strategy) -> dict:
    """`{"strategy": kind, "replicas": n}` of a strategy, for the run's config.json."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        kind = "multi_worker"
    elif isinstance(strategy, tf.distribute.MirroredStrategy):
        kind = "mirrored"
    else:
        kind = "default"
    return {"strategy": kind, "replicas": int(strategy.num_replicas_in_sync)}


def _device_names() -> list[str]:
    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def _local_devices() -> int:
    return len(_device_names())
