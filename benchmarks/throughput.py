"""SimCLR pretraining throughput on this machine, and how close it gets to the hardware.

Prints, in one run (ratios within one run are what count on noisy shared machines):
- the augmentation pipeline alone (two views per image, batch 256), images/s;
- the SimCLR train step as `kerassl train` builds it (default encoder, batch 256,
  Fashion-MNIST-sized images) with and without XLA for the whole step, images/s, including
  augmentation (it runs inside the step and is always one XLA cluster);
- where the plain step's time goes (views, forward, loss + backward, optimizer), and the
  plain step of the other methods (`--other-methods`) relative to SimCLR's;
- the train step's achieved FLOP/s (forward FLOPs counted by TensorFlow's profiler on the
  traced graph, x3 for forward + backward) next to a measured dense float32 matmul FLOP/s.

Usage: python benchmarks/throughput.py [--batch-size 256] [--steps 20] [--encoder cnn]
       [--preset fashion]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerassl.config import TrainConfig  # noqa: E402
from kerassl.data.augment import make_augmenter  # noqa: E402
from kerassl.models.base import SSLModel  # noqa: E402
from kerassl.pretraining import build_method  # noqa: E402


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


def breakdown(model: SSLModel, batch: tf.Tensor, steps: int) -> dict[str, float]:
    """Seconds per call of the step's parts (plain graphs), cumulatively: the two views;
    + forward of encoder and head on both; + loss and backward; the whole step adds the
    optimizer update (from the caller's measurement)."""
    views = tf.function(lambda x: tf.reduce_sum(model._two_views(x)))

    @tf.function
    def forward(x):
        v1, v2 = model._two_views(x)
        return tf.reduce_sum(model.project(tf.concat([v1, v2], axis=0), training=True))

    @tf.function
    def backward(x):
        v1, v2 = model._two_views(x)
        with tf.GradientTape() as tape:
            loss = model.compute_ssl_loss(v1, v2)[0]
        gradients = tape.gradient(loss, model.trainable_variables)
        return tf.add_n([tf.reduce_sum(g) for g in gradients])  # a scalar: no copies out

    def run(fn):
        return lambda: fn(batch).numpy()

    return {name: time_steps(run(fn), steps) for name, fn in
            [("views", views), ("forward", forward), ("backward", backward)]}  # fmt: skip


def build(method: str, encoder: str, image_shape, preset: str, jit: bool):
    """The model `kerassl train` builds (same head, optimizer and schedule), compiled."""
    keras.utils.set_random_seed(0)
    config = TrainConfig(method=method, encoder=encoder, augment=preset, jit_compile=jit)
    return build_method(config, image_shape, preset, 1000, jit_compile=jit)


def time_train_step(model, batch: tf.Tensor, steps: int) -> float:
    """Seconds per call of the compiled Keras train function on one repeated batch."""
    model.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    return time_steps(lambda: model.train_function(iterator)["loss"].numpy(), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--encoder", default="cnn")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--preset", default="fashion")
    parser.add_argument(
        "--other-methods", nargs="*", default=["moco", "barlow_twins"],
        help="methods whose plain train step is timed beside SimCLR's",
    )  # fmt: skip
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
        model = build("simclr", args.encoder, shape, args.preset, jit)
        seconds = time_train_step(model, batch, args.steps)
        results[jit] = args.batch_size / seconds
        print(
            f"SimCLR train step{' XLA' if jit else '    '}: {results[jit]:8.1f} images/s "
            f"({1000 * seconds:.0f} ms/step)"
        )
        if not jit:
            parts = breakdown(model, batch, args.steps)
            views, forward, backward = parts["views"], parts["forward"], parts["backward"]
            rest = seconds - backward
            # The parts are separate graphs timed separately: differences of a few percent
            # of the step are noise, so a small remainder is not reported as a number.
            rest_text = (
                f"optimizer update and the rest {1000 * rest:.0f} ms"
                if rest > 0.05 * seconds
                else f"optimizer update within the noise (views..backward alone "
                f"{1000 * backward:.0f} ms vs step {1000 * seconds:.0f} ms)"
            )
            print(
                "  where the plain step's time goes: "
                f"two views (XLA cluster) {1000 * views:.0f} ms, "
                f"forward {1000 * (forward - views):.0f} ms, "
                f"loss + backward {1000 * (backward - forward):.0f} ms, {rest_text}"
            )
    for method in args.other_methods:
        seconds = time_train_step(build(method, args.encoder, shape, args.preset, False),
                                  batch, args.steps)  # fmt: skip
        rate = args.batch_size / seconds
        print(f"{method} train step: {rate:8.1f} images/s ({rate / results[False]:.2f}x SimCLR's)")

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
