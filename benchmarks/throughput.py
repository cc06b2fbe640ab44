"""SimCLR pretraining throughput on this machine, and how close it gets to the hardware.

Prints, in one run (ratios within one run are what count on noisy shared machines):
- the augmentation pipeline alone (two views per image, batch 256), images/s;
- the SimCLR train step (default encoder, batch 256, Fashion-MNIST-sized images) with and
  without XLA for the whole step, images/s, including augmentation (it runs inside the step
  and is always one XLA cluster);
- the train step's achieved FLOP/s (forward FLOPs counted by TensorFlow's profiler on the
  traced graph, x3 for forward + backward) next to a measured dense float32 matmul FLOP/s.

Usage: python benchmarks/throughput.py [--batch-size 256] [--steps 20] [--encoder cnn]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerassl.data.augment import make_augmenter  # noqa: E402
from kerassl.models.encoders import build_encoder  # noqa: E402
from kerassl.models.heads import build_head  # noqa: E402
from kerassl.models.simclr import SimCLR  # noqa: E402


def matmul_flops(n: int = 2048, repeats: int = 20) -> float:
    """Dense float32 matmul FLOP/s (2·n³ per product), best of a few timed runs."""
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    product = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    product(a, b).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            product(a, b).numpy()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n**3 / best


def forward_flops(model: keras.Model, batch: np.ndarray) -> float:
    """FLOPs of one forward pass of encoder + head, counted by TF's profiler."""
    fn = tf.function(lambda x: model.project(x, training=True))
    graph = fn.get_concrete_function(tf.TensorSpec(batch.shape, tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return float(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)


def time_steps(fn, steps: int) -> float:
    """Seconds per call, after two warm-up calls (tracing, XLA compilation)."""
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def build(encoder_name: str, image_shape, preset: str) -> SimCLR:
    keras.utils.set_random_seed(0)
    encoder = build_encoder(encoder_name, image_shape)
    head = build_head("mlp", encoder.output_shape[-1])
    return SimCLR(encoder, head, make_augmenter(preset, seed=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--encoder", default="cnn")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--preset", default="digits")
    args = parser.parse_args()
    shape = (args.image_size, args.image_size, args.channels)
    images = np.random.default_rng(0).random((args.batch_size, *shape), dtype=np.float32)
    batch = tf.constant(images)
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
        f"batch {args.batch_size}, images {shape}, encoder {args.encoder}, preset {args.preset}"
    )

    augmenter = make_augmenter(args.preset, seed=0)
    for jit in (False, True):
        two_views = tf.function(lambda x: (augmenter(x), augmenter(x)), jit_compile=jit)
        seconds = time_steps(lambda f=two_views: [v.numpy() for v in f(batch)], args.steps)
        print(
            f"augmentation alone (2 views){' XLA' if jit else '    '}: "
            f"{args.batch_size / seconds:8.0f} images/s"
        )

    results = {}
    for jit in (False, True):
        model = build(args.encoder, shape, args.preset)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit)
        model.make_train_function()
        step = model.train_function
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
        iterator = iter(dataset)
        seconds = time_steps(lambda: step(iterator)["loss"].numpy(), args.steps)  # noqa: B023
        results[jit] = args.batch_size / seconds
        print(
            f"SimCLR train step{' XLA' if jit else '    '}: {results[jit]:8.1f} images/s "
            f"({1000 * seconds:.0f} ms/step)"
        )

    flops_per_image = 3 * forward_flops(model, images) / args.batch_size * 2  # 2 views
    peak = matmul_flops()
    print(f"train step FLOPs: {flops_per_image / 1e6:.0f} MFLOP/image (forward x3, two views)")
    print(f"dense matmul: {peak / 1e9:.1f} GFLOP/s")
    for jit, rate in results.items():
        achieved = rate * flops_per_image
        print(
            f"train step{' XLA' if jit else '    '}: {achieved / 1e9:.1f} GFLOP/s "
            f"= {100 * achieved / peak:.0f} % of matmul"
        )
    print(f"XLA speed-up of the whole step: {results[True] / results[False]:.2f}x")


if __name__ == "__main__":
    main()
