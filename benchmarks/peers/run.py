"""kerassl against PyTorch + lightly, side by side: train-step images/s in one report.

Run with kerassl's venv python, giving the peer venv's (`make bench-peers` makes it):

    .venv/bin/python benchmarks/peers/run.py --peer-python .venv-peers/bin/python

The peer venv (`benchmarks/peers/requirements.txt`) holds PyTorch and lightly from PyPI.
It is never a dependency of kerassl and never run by CI: PyPI's torch wheels for Linux are
CUDA builds of several GB (5.5 GB installed; PyPI has no CPU-only wheel), which run on the
CPU here.

In one process tree, for `--rounds` rounds, the driver alternates subprocess workers on
each case (`cases.py`): the kerassl worker (`kerassl_worker.py`, this venv: the step as
`kerassl train` builds and `--xla auto` times it, both XLA forms) and the lightly worker
(`lightly_worker.py`, the peer venv, PyTorch on `--threads` threads), eager and
`torch.compile`d; the order of the two sides flips every round. Each worker prints
images/s as JSON. It also measures the machine's dense matmul FLOP/s (NumPy, 2048²
float32, best of 5) each round, with OpenBLAS's core type as this machine's environment
sets it and unset (the kernel the CPU has; the % figures use the faster).

The report: each figure per round, the medians, kerassl's `--xla auto` pick (the faster
form, as `kerassl.xla_choice.choose` picks) over the faster of lightly's eager and
compiled steps, each step's achieved FLOP/s as % of the matmul's (FLOPs counted
analytically from the conv and dense layers, forward x3 for forward + backward; see
`cases.step_flops`) and the issue's targets (benchmarks, not tests). Only ratios measured
side by side in one run mean anything on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases import CASES  # noqa: E402

# The targets: kerassl images/s over lightly's (faster form), and the default
# step's share of the measured matmul FLOP/s.
TARGETS = {"simclr": 1.25, "moco": 1.1, "barlow_twins": 1.1, "resnet18": 1.1}
MATMUL_TARGET = 0.65

MATMUL = """
import json, time
import numpy as np
n = 2048
a = np.random.default_rng(0).random((n, n), dtype=np.float32)
b = np.random.default_rng(1).random((n, n), dtype=np.float32)
a @ b
best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - start)
try:
    import threadpoolctl
    info = threadpoolctl.threadpool_info()
    kernel = [(i.get("architecture"), i.get("num_threads")) for i in info]
except ImportError:
    kernel = None
print(json.dumps({"gflops": 2 * n**3 / best / 1e9, "kernel": kernel}))
"""


def cpu_model() -> tuple[str, bool]:
    """The CPU's model name and whether it has AVX-512 (avx512f)."""
    model, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and model in ("", platform.processor()):
                model = value.strip()
            elif name.strip() == "flags" and not flags:
                flags = value
    except OSError:
        pass
    return model, "avx512f" in flags.split()


def run_json(command: list[str], env=None, timeout: float = 1800) -> list[dict]:
    """Runs a worker and returns the JSON objects it printed (one per line)."""
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    results = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            results.append(json.loads(line))
    if done.returncode or not results:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{tail}")
    return results


def matmul(python: str) -> dict:
    """NumPy's 2048² float32 matmul GFLOP/s, as set and with OpenBLAS's core type unset."""
    as_set = run_json([python, "-c", MATMUL])[0]
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    unset = run_json([python, "-c", MATMUL], env=env)[0]
    return {"as_set": as_set, "unset": unset, "gflops": max(as_set["gflops"], unset["gflops"])}


def median(values):
    return statistics.median(values) if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="The peer venv holds PyTorch from PyPI: CUDA builds of several GB (5.5 GB "
        "installed; PyPI has no CPU-only torch wheel). `make bench-peers` creates it.",
    )
    parser.add_argument("--peer-python", default=".venv-peers/bin/python",
                        help="python of the venv with torch and lightly")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2, help="rounds (>= 2 for a median)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of every case")
    parser.add_argument("--warmup", type=int, default=3, help="lightly's untimed steps")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads")
    parser.add_argument("--torch-forms", default="eager,compile", help="eager and/or compile")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown or args.rounds < 1:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    if not Path(args.peer_python).exists():
        parser.error(f"no peer python at {args.peer_python}: run `make bench-peers`")
    model, avx512 = cpu_model()
    print(f"CPU: {model}, {os.cpu_count()} cores, AVX-512: {'yes' if avx512 else 'no'}")
    print(f"kerassl python: {sys.executable}; peer python: {args.peer_python}")
    started = time.perf_counter()
    records: list[dict] = []
    matmuls: list[dict] = []
    for round_ in range(args.rounds):
        print(f"\n== round {round_ + 1}/{args.rounds}", flush=True)
        for name in cases:
            # The matmul right before each case: the load of a shared machine changes
            # within minutes, and a case's % of matmul is against its own neighbour.
            m = matmul(sys.executable)
            m["round"], m["case"] = round_, name
            matmuls.append(m)
            print(
                f"  NumPy matmul {m['gflops']:.1f} GFLOP/s (OpenBLAS core type as set "
                f"{m['as_set']['gflops']:.1f} {m['as_set']['kernel']}, unset "
                f"{m['unset']['gflops']:.1f} {m['unset']['kernel']})",
                flush=True,
            )
            steps = ["--steps", str(args.steps)] if args.steps else []
            kerassl = [sys.executable, str(HERE / "kerassl_worker.py"), "--case", name, *steps]
            peers = [
                [args.peer_python, str(HERE / "lightly_worker.py"), "--case", name,
                 "--mode", form, "--warmup", str(args.warmup), "--threads", str(args.threads),
                 *steps]
                for form in args.torch_forms.split(",")
            ]  # fmt: skip
            order = [kerassl, *peers] if round_ % 2 == 0 else [*peers, kerassl]
            for command in order:
                for result in run_json(command):
                    result["round"] = round_
                    result["matmul_gflops"] = m["gflops"]
                    records.append(result)
                    achieved = result["flops_per_step"] / result["step_seconds"] / 1e9
                    print(
                        f"  {name:13s} {result['side']:8s} {result['form']:8s} "
                        f"{result['images_per_second']:8.1f} images/s "
                        f"({result['step_seconds']:.3f} s/step, {result['timed_steps']} "
                        f"timed; {achieved:.1f} GFLOP/s = "
                        f"{100 * achieved / m['gflops']:.0f} % of matmul)",
                        flush=True,
                    )
    summary = report(records, matmuls, cases)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "cpu": model,
                    "avx512": avx512,
                    "records": records,
                    "matmul": matmuls,
                    "summary": summary,
                },
                indent=1,
            )  # fmt: skip
        )
    return 0


def report(records: list[dict], matmuls: list[dict], cases: list[str]) -> dict:
    """Prints the medians, the ratios and the targets; returns them.

    On a shared machine the load changes between rounds (a round's figures can be 5x
    another's), so the ratio is computed within each round (the two sides measured
    minutes apart) and its median over rounds is the result; each figure's % of matmul
    is against the matmul measured just before its case in its round.
    """
    print(f"\n== over {len({m['round'] for m in matmuls})} rounds")
    print(
        f"{'case':13s} {'kerassl plain':>13s} {'kerassl XLA':>11s} {'auto':>5s} "
        f"{'lightly eager':>13s} {'lightly compile':>15s} {'ratio/round':>16s} "
        f"{'ratio':>6s} {'target':>6s} {'% matmul (plain/XLA/eager/compile)':>36s}"
    )
    summary = {}
    for name in cases:
        rows = [r for r in records if r["case"] == name]
        rounds = sorted({r["round"] for r in rows})

        def pick(side, form, round_, rows=rows):
            found = [r for r in rows if (r["side"], r["form"], r["round"]) == (side, form, round_)]
            return found[0] if found else None

        def share(r):
            return r["flops_per_step"] / r["step_seconds"] / (r["matmul_gflops"] * 1e9)

        figures = {key: [] for key in ("plain", "xla", "eager", "compile", "auto")}
        shares = {key: [] for key in figures}
        ratios, picks = [], []
        for round_ in rounds:
            got = {
                "plain": pick("kerassl", "plain", round_),
                "xla": pick("kerassl", "xla", round_),
                "eager": pick("lightly", "eager", round_),
                "compile": pick("lightly", "compile", round_),
            }
            if got["plain"] and got["xla"]:
                # --xla auto: the faster form, as kerassl.xla_choice.choose picks.
                xla_wins = got["xla"]["step_seconds"] < got["plain"]["step_seconds"]
                picks.append("xla" if xla_wins else "plain")
                got["auto"] = got["xla" if xla_wins else "plain"]
            for key, r in got.items():
                if r is not None:
                    figures[key].append(r["images_per_second"])
                    shares[key].append(share(r))
            peers = [got[k]["images_per_second"] for k in ("eager", "compile") if got[k]]
            if got.get("auto") and peers:
                ratios.append(got["auto"]["images_per_second"] / max(peers))
        ratio = median(ratios)
        target = TARGETS.get(name, 1.0)
        mode = max(set(picks), key=picks.count) if picks else "-"
        per_round = " ".join(f"{r:.2f}" for r in ratios)
        share_text = "/".join(
            f"{100 * median(shares[k]):.0f}" for k in ("plain", "xla", "eager", "compile")
        )
        print(
            f"{name:13s} {median(figures['plain']):13.1f} {median(figures['xla']):11.1f} "
            f"{mode:>5s} {median(figures['eager']):13.1f} {median(figures['compile']):15.1f} "
            f"{per_round:>16s} {ratio:5.2f}x {target:5.2f}x {share_text:>36s}"
        )
        summary[name] = {
            "images_per_second": {k: median(v) for k, v in figures.items()},
            "per_round": figures,
            "auto_picks": picks,
            "ratios": ratios,
            "ratio": ratio,
            "target": target,
            "meets_target": ratio >= target,
            "flops_per_step": rows[0]["flops_per_step"],
            "matmul_share": {k: median(v) for k, v in shares.items()},
        }
    print(
        "(medians over rounds; ratio = median over rounds of kerassl --xla auto's pick over "
        "the faster lightly form of the same round)"
    )
    peak = median([m["gflops"] for m in matmuls])
    print(
        f"NumPy matmul: median {peak:.1f} GFLOP/s, range "
        f"{min(m['gflops'] for m in matmuls):.1f}-{max(m['gflops'] for m in matmuls):.1f}"
    )
    if "simclr" in summary:
        share = summary["simclr"]["matmul_share"]["auto"]
        verdict = "met" if share >= MATMUL_TARGET else "not met"
        print(
            f"default SimCLR step (auto's pick) at {100 * share:.0f} % of the matmul's "
            f"FLOP/s (target {100 * MATMUL_TARGET:.0f} %): {verdict}"
        )
    met = [n for n, s in summary.items() if s["meets_target"]]
    print(f"ratio targets met: {', '.join(met) or 'none'} (of {', '.join(summary)})")
    print("(FLOPs: conv + dense layers, analytically, forward x3; MoCo's key pass x1)")
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
