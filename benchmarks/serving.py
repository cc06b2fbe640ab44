"""Served predictions/s and p50/p99 latency of `kerassl serve` on loopback.

Exports a fake run (kerassl.testing.fake_run: a small real CNN, 28x28x1, 10 classes) unless
`--export-dir` points at real exports, starts `python -m kerassl.serve` in its own process
(so the load generator does not share the server's GIL), and sends PNG predict requests
(`{"instances": [{"b64": ...}]}`) from 1 and 16 concurrent keep-alive clients.

    .venv/bin/python benchmarks/serving.py --requests 1000 --clients 1 16

Prints figures; never asserts timings.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def png_b64(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def start_server(export_dir: Path, *options: str) -> tuple[subprocess.Popen, int]:
    """Starts `python -m kerassl.serve export_dir --port 0 *options`; returns it and its port."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "kerassl.serve", str(export_dir), "--port", "0", *options]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "listening on" in line:
            return process, int(line.strip().rstrip("/").rsplit(":", 1)[1])
    raise RuntimeError("server exited before listening")


def run_load(port: int, model: str, bodies: list[bytes], requests: int, clients: int) -> dict:
    """Sends `requests` predicts from `clients` threads; returns throughput and latencies."""
    local = threading.local()
    path = f"/v1/models/{model}:predict"

    def one(index: int) -> tuple[float, bool]:
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        started = time.perf_counter()
        local.connection.request("POST", path, body=bodies[index % len(bodies)])
        response = local.connection.getresponse()
        response.read()
        return time.perf_counter() - started, response.status == 200

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(min(20, requests))))  # warm up connections and graphs
        started = time.perf_counter()
        results = list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - started
    latencies = np.array([latency for latency, _ in results]) * 1000.0
    return {
        "clients": clients,
        "requests": requests,
        "errors": sum(not ok for _, ok in results),
        "requests_per_s": requests / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per client setting")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16], help="concurrency")
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--export-dir", help="serve these exports instead of a fake run's")
    parser.add_argument("--model", default="fake", help="model name to call (with --export-dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kerassl-bench-") as scratch:
        if args.export_dir:
            export_dir, model, image_size, channels = Path(args.export_dir), args.model, None, None
            found = (export_dir / model).glob("*/assets.extra/kerassl.json")
            latest = max(found, key=lambda p: int(p.parent.parent.name), default=None)
            if latest is None:
                parser.error(f"no kerassl export of {model!r} under {export_dir}")
            metadata = json.loads(latest.read_text())
            image_size, channels = metadata["image_size"], metadata["channels"]
        else:
            from kerassl.serving.export import export_run
            from kerassl.testing.fake_run import make_run_dir

            image_size, channels, model = 28, 1, "fake"
            run_dir = make_run_dir(Path(scratch) / "run", image_size=28, num_classes=10)
            export_dir = Path(scratch) / "export"
            export_run(run_dir, model, export_dir)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (64, image_size, image_size, channels), dtype=np.uint8)
        bodies = [
            json.dumps(
                {"instances": [{"b64": png_b64(images[(i + j) % 64])} for j in range(args.batch)]}
            ).encode()
            for i in range(64)
        ]
        process, port = start_server(export_dir)
        try:
            print(
                f"kerassl serve on loopback, model {model!r}, {image_size}x{image_size}x{channels}"
            )
            print(f"{os.cpu_count()} CPU cores, {args.batch} image(s) per request")
            print("| clients | requests | errors | predictions/s | p50 ms | p99 ms |")
            print("|---:|---:|---:|---:|---:|---:|")
            for clients in args.clients:
                r = run_load(port, model, bodies, args.requests, clients)
                print(
                    f"| {r['clients']} | {r['requests']} | {r['errors']} "
                    f"| {r['requests_per_s'] * args.batch:.0f} | {r['p50_ms']:.1f} "
                    f"| {r['p99_ms']:.1f} |",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
