"""The default SimCLR train step under each `--precision`, side by side in one run.

Builds the model `kerassl train simclr --precision P` builds (`build_method`: default cnn
encoder, mlp head, AdamW with the warmup-cosine schedule, batch 256, Fashion-MNIST-sized
28 px images, the fashion augmentation inside the step), one per precision, warms each
up (tracing, compilation), then times them in alternating rounds (float32, bfloat16,
float16, float32, ...) so that the load of a shared machine falls on all of them alike.
Prints every round's images/s, the median of each and its ratio to float32's, and this
machine's NumPy 2048² float32 matmul GFLOP/s (a yardstick of how loaded it is).

Usage: python benchmarks/precision.py [--rounds 2] [--steps 5] [--batch-size 256]
       [--xla] [--precisions float32 mixed_bfloat16 mixed_float16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerassl.benchmarking.machine import numpy_matmul_gflops  # noqa: E402
from kerassl.catalog import PRECISIONS  # noqa: E402
from kerassl.config import TrainConfig  # noqa: E402
from kerassl.pretraining import build_method  # noqa: E402


def build(precision: str, shape, preset: str, jit: bool) -> keras.Model:
    """The model `kerassl train simclr --precision P` builds, compiled."""
    keras.utils.set_random_seed(0)
    config = TrainConfig(augment=preset, jit_compile=jit, precision=precision)
    return build_method(config, shape, preset, 1000, jit_compile=jit)


def step_function(model: keras.Model, batch: tf.Tensor):
    """One call of the compiled Keras train function on a repeated batch (warmed up:
    traced, compiled and run three times; the first calls after tracing were still ~10x
    slower than later ones here)."""
    model.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())

    def step():
        return float(model.train_function(iterator)["loss"].numpy())

    for _ in range(3):
        step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (>= 2)")
    parser.add_argument("--steps", type=int, default=5, help="steps per round and precision")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--preset", default="fashion")
    parser.add_argument("--xla", action="store_true", help="XLA-compile the whole step")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (alternating rounds are the point)")
    shape = (args.image_size, args.image_size, 1)
    images = np.random.default_rng(0).random((args.batch_size, *shape), dtype=np.float32)
    batch = tf.constant(images)
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
        f"SimCLR default step, batch {args.batch_size}, images {shape}, "
        f"preset {args.preset}, XLA {'on' if args.xla else 'off'}"
    )
    print(f"NumPy 2048² float32 matmul before: {numpy_matmul_gflops():.1f} GFLOP/s")
    steps = {}
    for precision in args.precisions:
        started = time.perf_counter()
        steps[precision] = step_function(build(precision, shape, args.preset, args.xla), batch)
        print(f"{precision:>14}: built and warmed up in {time.perf_counter() - started:.1f} s")
    rates: dict[str, list[float]] = {p: [] for p in args.precisions}
    for round_ in range(args.rounds):
        for precision, step in steps.items():
            start = time.perf_counter()
            losses = [step() for _ in range(args.steps)]
            seconds = (time.perf_counter() - start) / args.steps
            rates[precision].append(args.batch_size / seconds)
            finite = "finite" if np.isfinite(losses).all() else "NOT FINITE"
            print(
                f"round {round_ + 1} {precision:>14}: {rates[precision][-1]:7.1f} images/s "
                f"({1000 * seconds:.0f} ms/step; loss {losses[-1]:.3f}, {finite})"
            )
    print(f"NumPy 2048² float32 matmul after: {numpy_matmul_gflops():.1f} GFLOP/s")
    reference = statistics.median(rates[args.precisions[0]])
    for precision, values in rates.items():
        median = statistics.median(values)
        print(
            f"{precision:>14}: median {median:7.1f} images/s, "
            f"{median / reference:.2f}x {args.precisions[0]}"
        )


if __name__ == "__main__":
    main()
