"""Where kerassl's train step spends its time on this CPU: TensorFlow's profiler on a few
steps of the step `kerassl train` builds, summed per op kind and per layer.

    .venv/bin/python benchmarks/peers/profile_kerassl.py --case simclr [--xla] [--steps 3]

The model is built as `kerassl_worker.py` builds it (`TrainConfig` + `build_method`); its
compiled train function runs on one batch of uint8 images divided by 255 (no `fit`
callbacks). `tf.profiler.experimental` records the steps; the XSpace is read back with
TensorBoard's profile converter (`framework_op_stats`, the "TensorFlow stats" tool) and
the ops' self times are summed into kinds (conv forward, conv input/filter gradients,
BatchNorm, the optimizer update, the two views' XLA cluster, ...), printed in ms/step.
With `--xla` the whole step is one XLA cluster and only its total is visible here.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from cases import CASES  # noqa: E402
from kerassl_worker import make_plan  # noqa: E402
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin  # noqa: E402

from kerassl.pretraining import build_method  # noqa: E402

# (kind, pattern on "type operation"), first match wins.
KINDS = [
    ("optimizer update", r"adamw|/optimizer|AssignAddVariable|ResourceApplyAdam"),
    ("conv filter gradient", r"Conv2DBackpropFilter"),
    ("conv input gradient", r"Conv2DBackpropInput"),
    ("conv forward", r"Conv2D"),
    ("BatchNorm gradient", r"FusedBatchNormGrad|batch_normalization.*grad|BatchNormGrad"),
    ("BatchNorm forward", r"FusedBatchNorm|batch_normalization|moments|BatchNorm"),
    ("max-pool gradient", r"MaxPoolGrad"),
    ("max-pool forward", r"MaxPool"),
    ("ReLU gradient", r"ReluGrad"),
    ("ReLU forward", r"Relu"),
    ("dense/similarity matmul", r"MatMul"),
    ("two views (XLA cluster)", r"Xla|_XlaRun|XlaLaunch|make_views|two_views"),
    ("NT-Xent loss", r"nt_xent|softmax|Softmax|LogSoftmax"),
    ("global pooling", r"Mean|pool"),
]


def kind_of(op_type: str, name: str) -> str:
    text = f"{op_type} {name}"
    for kind, pattern in KINDS:
        if re.search(pattern, text):
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="simclr")
    parser.add_argument("--xla", action="store_true", help="XLA-compile the whole step")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--top", type=int, default=25, help="ops listed one by one")
    args = parser.parse_args()
    case = CASES[args.case]
    plan = make_plan(case)
    model = build_method(plan.config, case.image_shape, plan.preset, 1000, jit_compile=args.xla)
    pixels = np.random.default_rng(0).integers(0, 256, (case.batch_size, *case.image_shape))
    batch = tf.constant(pixels.astype(np.uint8))
    data = tf.data.Dataset.from_tensors(batch).map(lambda x: tf.cast(x, tf.float32) / 255.0)
    iterator = iter(data.repeat())
    model.make_train_function()
    for _ in range(3):
        model.train_function(iterator)["loss"].numpy()
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_function(iterator)["loss"].numpy()
    unprofiled = (time.perf_counter() - start) / args.steps
    with tempfile.TemporaryDirectory(prefix="kerassl-profile-") as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(args.steps):
            model.train_function(iterator)["loss"].numpy()
        profiled = (time.perf_counter() - start) / args.steps
        tf.profiler.experimental.stop()
        path = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
        raw, _ = plugin.xspace_to_tools_data([path], "framework_op_stats")
    table = json.loads(raw)[0]
    columns = [c["id"] for c in table["cols"]]
    cells = [[c.get("v") if c else None for c in r["c"]] for r in table["rows"]]
    rows = [dict(zip(columns, row, strict=True)) for row in cells]
    rows = [r for r in rows if r["type"] != "IDLE"]
    per_step = {}  # operation → (type, ms per step, calls per step)
    for r in rows:
        per_step[r["operation"]] = (
            r["type"],
            r["total_self_time"] / 1e3 / args.steps,  # µs → ms
            r["occurrences"] / args.steps,
        )
    kinds = collections.Counter()
    for name, (op_type, ms, _) in per_step.items():
        kinds[kind_of(op_type, name)] += ms
    total = sum(kinds.values())
    form = "XLA" if args.xla else "plain"
    print(
        f"kerassl {case.name} step ({form}), batch {case.batch_size}: {unprofiled:.3f} s/step "
        f"unprofiled, {profiled:.3f} s/step profiled; op self time {total:.0f} ms/step "
        f"(both threads' work: on 2 busy threads about twice the wall time)"
    )
    for kind, ms in kinds.most_common():
        print(f"  {kind:26s} {ms:8.1f} ms/step  {100 * ms / total:5.1f} %")
    print(f"top {args.top} ops:")
    top = sorted(per_step.items(), key=lambda item: -item[1][1])[: args.top]
    for name, (op_type, ms, calls) in top:
        print(f"  {ms:8.1f} ms/step {calls:4.0f}x {op_type:32s} {name[-70:]}")


if __name__ == "__main__":
    main()
