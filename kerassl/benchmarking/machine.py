"""What a benchmark ran on, for its results.md header."""

from __future__ import annotations

import os
import platform
import time


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux' /proc/cpuinfo), else what `platform` knows."""
    try:
        with open(cpuinfo) as file:
            for line in file:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def numpy_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """NumPy float32 n×n matmul GFLOP/s (2·n³ per product), best of `repeats`: the
    machine's dense-matmul rate that benchmarks state their figures beside."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def describe() -> str:
    """`AMD EPYC (2 cores), no GPU, TensorFlow 2.21.0, Keras 3.15.0, Python 3.12.3`."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    accelerators = f"{len(gpus)} GPU" if gpus else "no GPU"
    return (
        f"{cpu_model()} ({os.cpu_count()} cores), {accelerators}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, Python {platform.python_version()}"
    )
