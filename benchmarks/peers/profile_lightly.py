"""Where the PyTorch + lightly step (`lightly_worker.py`) spends its time on this CPU:
`torch.profiler` on a few eager steps, ops' self times summed per kind, in ms/step.

    .venv-peers/bin/python benchmarks/peers/profile_lightly.py --case simclr [--steps 2]

The kinds match `profile_kerassl.py`'s, so the two tables can be read side by side.
PyTorch's self CPU time is an op's wall time (its intra-op threads run inside it), while
TensorFlow's op times on 2 inter-op threads add up to about twice the wall time.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from cases import CASES  # noqa: E402
from lightly_worker import Method, make_optimizer  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

KINDS = [
    ("optimizer update", r"lerp|addcdiv|addcmul|sqrt|_foreach|adamw|Optimizer"),
    ("conv gradients", r"convolution_backward"),
    ("conv forward", r"convolution|conv2d"),
    ("BatchNorm gradient", r"batch_norm_backward"),
    ("BatchNorm forward", r"batch_norm"),
    ("max-pool gradient", r"max_pool2d_with_indices_backward"),
    ("max-pool forward", r"max_pool"),
    ("ReLU gradient", r"threshold_backward"),
    ("ReLU forward", r"relu|clamp_min"),
    ("dense/similarity matmul", r"addmm|mm|einsum|bmm|matmul"),
    ("augmentation", r"grid_sampler|affine_grid|clamp|where|rand"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="simclr")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = CASES[args.case]
    model = Method(case)
    optimizer, schedule = make_optimizer(model)
    height, width, channels = case.image_shape
    images = torch.randint(0, 256, (case.batch_size, channels, height, width), dtype=torch.uint8)

    def step():
        loss = model(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        model.after_step()
        return loss.item()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    unprofiled = (time.perf_counter() - start) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        profiled = (time.perf_counter() - start) / args.steps
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    kinds = collections.Counter()
    for e in events:
        kinds[kind_of(e.key)] += e.self_cpu_time_total / 1e3 / args.steps  # µs → ms
    total = sum(kinds.values())
    print(
        f"lightly {case.name} step (eager), batch {case.batch_size}: {unprofiled:.3f} s/step "
        f"unprofiled, {profiled:.3f} s/step profiled; aten self time {total:.0f} ms/step"
    )
    for kind, ms in kinds.most_common():
        print(f"  {kind:26s} {ms:8.1f} ms/step  {100 * ms / total:5.1f} %")
    print(f"top {args.top} ops:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        ms = e.self_cpu_time_total / 1e3 / args.steps
        print(f"  {ms:8.1f} ms/step {e.count / args.steps:5.0f}x {e.key}")


if __name__ == "__main__":
    main()
