"""Soak of `kerassl serve` on loopback while a new model version is exported.

Exports a fake run's classifier (kerassl.testing.fake_run: a small real CNN, 28x28x1, 10
classes) as version 1, starts `python -m kerassl.serve` in its own process, and sends
requests from `--clients` keep-alive clients: 9 in 10 are PNG predicts (2/3 unversioned,
1/3 to `/versions/1`), 1 in 10 malformed (bad JSON, wrong shape, wrong input name, unknown
model or version, bad base64, not an image, bad version). After `--requests / 2` requests,
a second run is exported as version 2 with `export_run` in this process (a staging
directory renamed into place); the load goes on while it is written and until the server
reports it AVAILABLE, then `--requests / 2` more are sent. (On a 2-core machine the export
and load take longer than 2,000 requests, so the middle phase is counted on its own.)

    .venv/bin/python benchmarks/serving_soak.py --requests 2000 --clients 16

Prints requests/s, valid requests that failed (not 200, or answered by a version that was
not being served), malformed requests answered with a 4xx `{"error": ...}` JSON, which
version answered unversioned requests, and the server's RSS growth (/proc/PID/status).
Never asserts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from serving import png_b64, start_server

from kerassl.benchmarking.machine import numpy_matmul_gflops

MODEL = "fake"
PREDICT = f"/v1/models/{MODEL}:predict"
PREDICT_1 = f"/v1/models/{MODEL}/versions/1:predict"
PREDICT_2 = f"/v1/models/{MODEL}/versions/2:predict"
MALFORMED = [
    ("POST", PREDICT, b'{"instances": ['),
    ("POST", PREDICT, {"signature_name": "predict_images", "instances": [[1.0, 2.0]]}),
    ("POST", PREDICT, {"inputs": {"pixels": [1]}}),
    ("POST", "/v1/models/nope:predict", {"instances": [{"b64": "aGVsbG8="}]}),
    ("POST", f"/v1/models/{MODEL}/versions/9:predict", {"instances": [{"b64": "aGVsbG8="}]}),
    ("POST", PREDICT, {"instances": [{"b64": "@@@"}]}),
    ("POST", PREDICT, {"instances": [{"b64": "aGVsbG8="}]}),
    ("GET", f"/v1/models/{MODEL}/versions/x", None),
]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory field of process `pid` (VmRSS, VmHWM) from /proc/PID/status, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


class Client:
    """One keep-alive connection; `call` never raises (a failure is status None)."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body) -> tuple[int | None, object]:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        try:
            self.connection.request(method, path, body=body)
            response = self.connection.getresponse()
            data = response.read()
            if response.getheader("Connection", "").lower() == "close":
                self.connection.close()
            return response.status, json.loads(data)
        except (OSError, http.client.HTTPException, ValueError) as error:
            self.connection.close()
            return None, repr(error)


def request_for(index: int, bodies: list[dict]) -> tuple:
    """`(kind, method, path, body, body index)` of request `index`: 1 in 10 malformed, the
    others predicts, 2/3 of them unversioned."""
    body_index = index % len(bodies)
    if index % 10 == 9:
        return ("malformed", *MALFORMED[index // 10 % len(MALFORMED)], None)
    if index % 3 == 0:
        return ("v1", "POST", PREDICT_1, bodies[body_index], body_index)
    return ("latest", "POST", PREDICT, bodies[body_index], body_index)


def probabilities(answer) -> np.ndarray:
    return np.array([prediction["probabilities"] for prediction in answer["predictions"]])


def is_available(client: Client, version: int) -> bool:
    status, body = client.call("GET", f"/v1/models/{MODEL}/versions/{version}", None)
    return status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"


class Schedule:
    """Hands out request numbers in three phases: `half` before the new version is
    exported; then, from the start of the export (`start_export()` in a thread), as many as
    the export and the server's load of it take; then `half` more once it is AVAILABLE."""

    def __init__(self, half: int, start_export):
        self.half = half
        self.start_export = start_export
        self.sent = 0
        self.available_from: int | None = None  # first request number sent after AVAILABLE
        self.lock = threading.Lock()

    def next(self) -> int | None:
        with self.lock:
            if self.available_from is not None and self.sent >= self.available_from + self.half:
                return None
            if self.sent == self.half:
                threading.Thread(target=self.start_export).start()
            self.sent += 1
            return self.sent - 1

    def mark_available(self) -> None:
        with self.lock:
            self.available_from = self.sent


def soak(
    port: int, half: int, clients: int, bodies: list[dict], export_version_2, server_rss
) -> dict:
    """Runs the three phases of `Schedule` from `clients` threads.

    Returns `results` (request number → `(started, status, answer)`), the wall time, the
    request number from which version 2 was AVAILABLE, when (perf_counter) the export
    started, was written and was first seen AVAILABLE, and `server_rss()` at those times.
    """
    times: dict[str, float] = {}
    exported = threading.Event()

    def export_and_watch():
        times["export_started"] = time.perf_counter()
        times["rss_export_started"] = server_rss()
        try:
            export_version_2()
            times["exported"] = time.perf_counter()
            watcher = Client(port)
            while not is_available(watcher, 2):
                if time.perf_counter() - times["exported"] > 120:
                    raise RuntimeError("version 2 not AVAILABLE 120 s after its export")
                time.sleep(0.02)
            times["available"] = time.perf_counter()
            times["rss_available"] = server_rss()
        finally:
            schedule.mark_available()  # also ends the run when the export failed
            exported.set()

    schedule = Schedule(half, export_and_watch)
    results: dict[int, tuple] = {}

    def client_loop():
        client = Client(port)
        while (index := schedule.next()) is not None:
            _, method, path, body, _ = request_for(index, bodies)
            started = time.perf_counter()
            results[index] = (started, *client.call(method, path, body))

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    elapsed = time.perf_counter() - began
    exported.wait()
    if "available" not in times:
        raise RuntimeError("the export of version 2 failed (traceback above)")
    return {
        "results": results,
        "elapsed": elapsed,
        "began": began,
        "available_from": schedule.available_from,
        **times,
    }


def tally(results: dict, bodies, reference_1, reference_2, available_at: float) -> dict:
    """Counts failed valid requests, 4xx JSON answers and which version answered."""
    counts = {"failed_valid": 0, "malformed": 0, "malformed_4xx_json": 0}
    counts.update({"latest_by_1": 0, "latest_by_2": 0, "latest_after_swap": 0})
    for index, (started, status, answer) in results.items():
        kind, *_, body_index = request_for(index, bodies)
        if kind == "malformed":
            counts["malformed"] += 1
            ok = status is not None and 400 <= status < 500
            counts["malformed_4xx_json"] += (
                ok and isinstance(answer, dict) and set(answer) == {"error"}
            )
            continue
        if status != 200:
            counts["failed_valid"] += 1
            continue
        got = probabilities(answer)
        by_1 = np.allclose(got, reference_1[body_index], atol=1e-6)
        by_2 = np.allclose(got, reference_2[body_index], atol=1e-6)
        after_swap = started > available_at
        if kind == "v1":
            counts["failed_valid"] += not by_1
            continue
        counts["latest_after_swap"] += after_swap
        if by_2:
            counts["latest_by_2"] += 1
        elif by_1 and not after_swap:
            counts["latest_by_1"] += 1
        else:
            counts["failed_valid"] += 1  # v1 after v2 was AVAILABLE, or neither version
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="requests outside the export: half before it, half after the new version is up",
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent keep-alive clients")
    parser.add_argument("--poll-seconds", default="1", help="the server's --poll-seconds")
    args = parser.parse_args(argv)

    from kerassl.serving.export import export_run
    from kerassl.testing.fake_run import make_run_dir

    gflops = numpy_matmul_gflops()
    half = args.requests // 2
    with tempfile.TemporaryDirectory(prefix="kerassl-soak-") as scratch:
        scratch = Path(scratch)
        runs = [make_run_dir(scratch / f"run{seed}", image_size=28, seed=seed) for seed in (0, 2)]
        export_dir = scratch / "export"
        export_run(runs[0], MODEL, export_dir, version=1)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
        bodies = [{"instances": [{"b64": png_b64(image)}]} for image in images]
        process, port = start_server(export_dir, "--poll-seconds", args.poll_seconds)
        try:
            warm = Client(port)
            reference_1 = [probabilities(warm.call("POST", PREDICT_1, b)[1]) for b in bodies]
            rss_before = rss_mib(process.pid)
            run = soak(
                port,
                half,
                args.clients,
                bodies,
                lambda: export_run(runs[1], MODEL, export_dir, version=2),
                lambda: rss_mib(process.pid),
            )
            rss_after, rss_peak = rss_mib(process.pid), rss_mib(process.pid, "VmHWM")
            reference_2 = [probabilities(warm.call("POST", PREDICT_2, b)[1]) for b in bodies]
        finally:
            process.terminate()
            process.wait(timeout=60)
    counts = tally(run["results"], bodies, reference_1, reference_2, run["available"])
    total, during = len(run["results"]), run["available_from"] - half
    began = run["began"]
    print(f"{os.cpu_count()} CPU cores, numpy 2048x2048 float32 matmul {gflops:.0f} GFLOP/s")
    print(
        f"kerassl serve --poll-seconds {args.poll_seconds} on loopback, model {MODEL!r} "
        f"28x28x1, 1 PNG per predict, {args.clients} keep-alive clients"
    )
    print(
        f"requests                          {total} = {half} before the v2 export + {during} "
        f"during export and load + {half} after v2 AVAILABLE"
    )
    print(f"requests/s                        {total / run['elapsed']:.0f}")
    print(f"failed valid requests             {counts['failed_valid']}")
    print(
        f"malformed answered 4xx JSON       {counts['malformed_4xx_json']} of {counts['malformed']}"
    )
    print(f"unversioned answered by v1 / v2   {counts['latest_by_1']} / {counts['latest_by_2']}")
    print(f"unversioned sent after AVAILABLE  {counts['latest_after_swap']}")
    print(
        f"v2 export started {run['export_started'] - began:.2f} s, written "
        f"{run['exported'] - began:.2f} s, AVAILABLE {run['available'] - began:.2f} s, "
        f"last request {run['elapsed']:.2f} s"
    )
    print(
        f"server RSS {rss_before:.0f} -> {rss_after:.0f} MiB ({rss_after - rss_before:+.1f} MiB, "
        f"peak {rss_peak:.0f}): {run['rss_export_started']:.0f} at the export's start, "
        f"{run['rss_available']:.0f} when v2 was AVAILABLE"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
