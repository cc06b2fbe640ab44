"""kerassl side of the side-by-side benchmark: one case's train step as `kerassl train`
runs it, both XLA forms, printed as one JSON line per form.

The model is built by kerassl's own code: a `kerassl.config.TrainConfig` with the case's
method, encoder and preset (every other setting kerassl's default), a `Plan` resolved by
`kerassl.plan.resolve` on synthetic uint8 images, and each form timed by
`kerassl.pretraining.measure_step_seconds`, the function `--xla auto`
(`kerassl.xla_choice.choose_for_plan`) times both forms with: a throwaway model built by
`build_method`, trained by `fit` on `pretrain_dataset` with the run's callbacks, for 2
epochs of `per_epoch` steps. It excludes the first step (tracing, compilation) and the
second (the compiled step's first run) and averages the other 2·per_epoch − 3 steps;
epoch ends are not in the figure. The kNN monitor is off (`knn_every=0`): it only runs
at epoch ends, which the step figure excludes anyway.

Run with kerassl's venv: `.venv/bin/python benchmarks/peers/kerassl_worker.py --case simclr`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from cases import CASES, LEARNING_RATE, Case, step_flops  # noqa: E402

from kerassl import config as kerassl_config  # noqa: E402
from kerassl.data.registry import ImageData  # noqa: E402
from kerassl.data.splits import label_split  # noqa: E402
from kerassl.plan import resolve  # noqa: E402
from kerassl.pretraining import build_method, measure_step_seconds  # noqa: E402


def make_plan(case: Case):
    """The plan `kerassl train` would make for the case, on synthetic uint8 images."""
    config = kerassl_config.TrainConfig(
        method=case.method,
        encoder=case.encoder,
        augment=case.preset,
        batch_size=case.batch_size,
        learning_rate=LEARNING_RATE,  # lightly's side uses the same (no work depends on it)
        knn_every=0,
        baseline="none",
        epochs=100,  # the schedule's length only; the measurement runs 2 short epochs
    )
    config.validate()
    rng = np.random.default_rng(0)
    pool = 4 * case.batch_size
    x = rng.integers(0, 256, (pool, *case.image_shape), dtype=np.uint8)
    y = np.arange(pool, dtype=np.int64) % 10
    data = ImageData(
        "synthetic", x, y, x[:10], y[:10], [str(i) for i in range(10)], case.preset, "random"
    )
    split = label_split(y, 100, config.seed, config.validation)
    return resolve(config, data, split, x)


def layer_shapes(model: keras.Model) -> list[tuple]:
    """("conv", h, w, k, c_in, c_out) / ("dense", n_in, n_out) rows of a model's layers,
    nested models included, in order."""
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            rows += layer_shapes(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, c_out = layer.output.shape
            k = layer.kernel_size[0]
            rows.append(("conv", height, width, k, layer.input.shape[-1], c_out))
        elif isinstance(layer, keras.layers.Dense):
            rows.append(("dense", layer.input.shape[-1], layer.units))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: case's)")
    parser.add_argument("--forms", default="plain,xla", help="plain, xla or both")
    args = parser.parse_args()
    case = CASES[args.case]
    timed = args.steps or case.steps
    per_epoch = max(2, math.ceil((timed + 3) / 2))  # 2·per_epoch − 3 ≥ timed steps averaged
    plan = make_plan(case)
    keras.utils.set_random_seed(0)
    model = build_method(plan.config, case.image_shape, plan.preset, plan.total_steps)
    encoder_rows = layer_shapes(model.encoder)
    head_rows = layer_shapes(model.head)
    flops = step_flops(case, encoder_rows, head_rows)
    optimizer = type(model.optimizer).__name__
    params = int(sum(np.prod(v.shape) for v in model.encoder.trainable_variables))
    params += int(sum(np.prod(v.shape) for v in model.head.trainable_variables))
    del model
    for form in args.forms.split(","):
        jit = {"plain": False, "xla": True}[form]
        started = time.perf_counter()
        timing = measure_step_seconds(plan.with_jit_compile(jit), steps=per_epoch)
        result = {
            "side": "kerassl",
            "case": case.name,
            "form": form,
            "step_seconds": timing.step,
            "images_per_second": case.batch_size / timing.step,
            "timed_steps": 2 * per_epoch - 3,
            "startup_seconds": timing.startup,
            "wall_seconds": time.perf_counter() - started,
            "flops_per_step": flops,
            "trainable_params": params,
            "optimizer": optimizer,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
