"""What surviving a kill costs: checkpoint time per save and per step, restore latency,
and the speed of `--deterministic`, measured side by side on this machine.

    python benchmarks/resilience.py                       # Fashion-MNIST, SimCLR, batch 256
    python benchmarks/resilience.py --dataset digits --batch-size 64 --steps 20

Each setting (default, --deterministic) runs in a fresh process (op determinism is
process-wide), alternating, `--rounds` times; the figures are medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> dict:
    import keras
    import tensorflow as tf

    from kerassl import checkpoint
    from kerassl.config import TrainConfig
    from kerassl.data.pipeline import pretrain_dataset
    from kerassl.plan import prepare
    from kerassl.pretraining import build_method

    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    config = TrainConfig(
        method=args.method,
        dataset=args.dataset,
        batch_size=args.batch_size,
        max_unlabeled=args.max_unlabeled,
        epochs=1,
        steps_per_epoch=args.steps + 3,
        deterministic=args.deterministic,
    )
    plan = prepare(config)
    keras.utils.set_random_seed(0)

    def build():
        return build_method(config, plan.data.image_shape, plan.preset, plan.total_steps)

    model = build()
    batches = iter(pretrain_dataset(plan.pool, config.batch_size, 0, (0, 1), plan.steps_per_epoch))
    for _ in range(3):  # trace and warm up
        model.train_on_batch(next(batches))
    started = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(next(batches))
    step = (time.perf_counter() - started) / args.steps
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / checkpoint.STATE
        saves = []
        for _ in range(5):
            started = time.perf_counter()
            checkpoint.save(model, path, checkpoint.TrainingState(step=args.steps))
            saves.append(time.perf_counter() - started)
        size = path.stat().st_size
        fresh = build()
        started = time.perf_counter()
        checkpoint.restore(fresh, path)
        restore = time.perf_counter() - started
    return {
        "step_ms": 1000 * step,
        "save_ms": 1000 * statistics.median(saves),
        "restore_ms": 1000 * restore,
        "checkpoint_mib": size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-unlabeled", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import numpy as np

    a = np.random.rand(2048, 2048).astype(np.float32)
    a @ a
    started = time.perf_counter()
    for _ in range(5):
        a @ a
    gflops = 5 * 2 * 2048**3 / (time.perf_counter() - started) / 1e9
    results = {False: [], True: []}
    for _ in range(args.rounds):
        for deterministic in (False, True):
            command = [sys.executable, __file__, "--worker", *sys.argv[1:]]
            if deterministic:
                command.append("--deterministic")
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[deterministic].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def median(deterministic, key):
        return statistics.median(r[key] for r in results[deterministic])

    step, save = median(False, "step_ms"), median(False, "save_ms")
    print(
        f"{args.method} on {args.dataset}, batch {args.batch_size}; numpy matmul "
        f"{gflops:.0f} GFLOP/s; medians of {args.rounds} processes each"
    )
    print(f"step                 {step:8.1f} ms")
    print(
        f"one checkpoint save  {save:8.1f} ms = {100 * save / step:.1f} % of a step "
        f"({median(False, 'checkpoint_mib'):.1f} MiB)"
    )
    every_5m = 100 * save / (5 * 60 * 1000)
    print(f"  at --checkpoint-every 5m (default): {every_5m:.3f} % of training time")
    print(f"  at --checkpoint-every 1 (every step): {100 * save / step:.1f} %")
    print(f"restore into a fresh model {median(False, 'restore_ms'):8.1f} ms")
    deterministic = median(True, "step_ms")
    print(
        f"--deterministic step {deterministic:8.1f} ms = {deterministic / step:.2f}x the "
        "default step"
    )


if __name__ == "__main__":
    main()
