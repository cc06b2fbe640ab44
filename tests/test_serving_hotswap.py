"""Serving as TF Serving does while the base directory changes: new versions and models are
picked up once complete, removed versions stop being served, and a soak under load."""

from __future__ import annotations

import io
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_server import GOOD, Client, png_b64

from kerassl.serving.repository import ModelRepository
from kerassl.serving.rest import RestError
from kerassl.serving.server import make_server, serve_in_thread
from kerassl.serving.verify import sample_images
from kerassl.testing.fake_run import make_export_dir

POLL_SECONDS = 0.2


@pytest.fixture(scope="module")
def shared_export(tmp_path_factory):
    """The session's export (`ssl` 1 and 2, `baseline` 1), shared with test_server.py."""
    return make_export_dir(tmp_path_factory.getbasetemp() / "serving-export")


@pytest.fixture()
def base(tmp_path, shared_export) -> Path:
    """A base directory serving only `ssl` version 1 (the others are copied in by tests)."""
    base = tmp_path / "base"
    shutil.copytree(shared_export / "ssl" / "1", base / "ssl" / "1")
    return base


@pytest.fixture()
def server(base):
    server = make_server(base, port=0, poll_seconds=POLL_SECONDS)
    serve_in_thread(server)
    yield server
    server.shutdown()
    server.drain(timeout=10)
    server.server_close()


@pytest.fixture()
def client(server):
    client = Client(server.server_address[1])
    yield client
    client.close()


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {condition.__doc__}"
        time.sleep(0.05)


def version_states(client: Client, name: str) -> dict[str, tuple[str, str]]:
    """Version → (state, error code) from TF Serving's model status API ({} if unknown)."""
    status, body = client.call("GET", f"/v1/models/{name}")
    if status == 404:
        return {}
    return {
        entry["version"]: (entry["state"], entry["status"]["error_code"])
        for entry in body["model_version_status"]
    }


def latest_version(client: Client, name: str) -> str:
    """The version answering unversioned requests, from the metadata API."""
    status, body = client.call("GET", f"/v1/models/{name}/metadata")
    assert status == 200, body
    return body["model_spec"]["version"]


def copy_files(source: Path, target: Path, names: list[str]) -> None:
    """Copies some files of a version directory, as a slow non-atomic writer would."""
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)


# --- repository: completeness, settling, retries, unloading (no poller, no timing) ---------


def test_version_is_loaded_only_once_complete_and_settled(base, shared_export, capsys):
    repository = ModelRepository(base)
    source, target = shared_export / "ssl" / "2", base / "ssl" / "2"
    copy_files(source, target, ["saved_model.pb"])
    assert repository.refresh() == [] and repository.refresh() == []  # no variables/ yet
    copy_files(source, target, ["variables/variables.index"])
    assert repository.refresh() == []  # complete-looking: waits one refresh for changes
    (failed,) = repository.refresh()
    assert failed.startswith("model 'ssl' version 2 failed to load")
    assert repository.get("ssl").version == 1
    assert repository.versions("ssl")[2].status_json()["state"] == "END"
    assert repository.refresh() == []  # same files: not retried
    assert capsys.readouterr().err.count(f"cannot load {target}") == 1

    copy_files(
        source, target, [str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()]
    )
    assert repository.refresh() == []  # changed: retried once the files settle
    assert repository.refresh() == ["model 'ssl' version 2 loaded"]
    assert repository.get("ssl").version == 2 and repository.get("ssl", "1").version == 1
    assert repository.versions("ssl")[2].status_json() == {
        "version": "2",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }


def test_removed_version_is_unloaded_but_a_request_holding_it_finishes(base):
    repository = ModelRepository(base)
    in_flight = repository.get("ssl")  # what a request resolved before the removal
    shutil.rmtree(base / "ssl" / "1")
    assert repository.refresh() == ["model 'ssl' version 1 unloaded"]
    for version in (None, "1"):
        with pytest.raises(RestError) as error:
            repository.get("ssl", version)
        assert error.value.status == 404
    assert repository.versions("ssl")[1].status_json()["state"] == "END"
    assert repository.listing() == {"models": []}
    image = tf.io.encode_png(tf.zeros((16, 16, 1), tf.uint8))
    outputs = in_flight.signatures["serving_default"](image_bytes=tf.stack([image]))
    assert outputs["probabilities"].shape == (1, 10)


def test_poller_keeps_loading_when_stdout_is_gone(base, shared_export, monkeypatch):
    repository = ModelRepository(base)
    gone = io.StringIO()
    gone.close()  # a supervisor that closed the server's stdout
    monkeypatch.setattr(sys, "stdout", gone)
    stop = threading.Event()
    poller = threading.Thread(target=repository.poll_forever, args=(POLL_SECONDS, stop))
    poller.start()
    try:
        shutil.copytree(shared_export / "ssl" / "2", base / "ssl" / "2")

        def loaded_2():
            """ssl 2 loaded"""
            return repository.get("ssl").version == 2

        wait_until(loaded_2)
        # Loaded only if the poller survived logging "version 2 loaded" to the closed stdout.
        shutil.copytree(shared_export / "baseline" / "1", base / "baseline" / "1")

        def loaded_baseline():
            """baseline 1 loaded"""
            return any(model["name"] == "baseline" for model in repository.listing()["models"])

        wait_until(loaded_baseline)
    finally:
        stop.set()
        poller.join()


# --- the server polls: new models and versions, removals, over HTTP -----------------------


def test_server_picks_up_new_model_and_version_and_404s_removed_one(
    server, client, base, shared_export
):
    assert latest_version(client, "ssl") == "1"
    staging = base / "ssl" / ".staging"  # written aside and renamed, as export_run does
    shutil.copytree(shared_export / "ssl" / "2", staging)
    staging.rename(base / "ssl" / "2")
    shutil.copytree(shared_export / "baseline" / "1", base / "baseline" / "1")

    def both_available():
        """ssl 2 and baseline 1 AVAILABLE"""
        return version_states(client, "ssl").get("2") == ("AVAILABLE", "OK") and version_states(
            client, "baseline"
        ).get("1") == ("AVAILABLE", "OK")

    wait_until(both_available)
    assert latest_version(client, "ssl") == "2"
    status, latest = client.call("POST", "/v1/models/ssl:predict", GOOD)
    status_2, second = client.call("POST", "/v1/models/ssl/versions/2:predict", GOOD)
    status_1, first = client.call("POST", "/v1/models/ssl/versions/1:predict", GOOD)
    assert status == status_1 == status_2 == 200
    assert latest == second and first != second
    status, listing = client.call("GET", "/v1/models")
    assert {m["name"]: m["latest_version"] for m in listing["models"]} == {
        "baseline": "1",
        "ssl": "2",
    }

    shutil.rmtree(base / "ssl" / "2")

    def unloaded():
        """ssl 2 END"""
        return version_states(client, "ssl")["2"] == ("END", "OK")

    wait_until(unloaded)
    status, body = client.call("POST", "/v1/models/ssl/versions/2:predict", GOOD)
    assert (status, body) == (404, {"error": "Servable not found for request: Specific(ssl, 2)"})
    assert latest_version(client, "ssl") == "1"
    assert client.call("POST", "/v1/models/ssl:predict", GOOD) == (200, first)


# --- soak: 400 requests, 8 clients, 1 in 10 malformed, a version written mid-way ----------

MALFORMED = [
    ("POST", "/v1/models/ssl:predict", b'{"instances": ['),  # bad JSON
    ("POST", "/v1/models/ssl:predict", {"signature_name": "predict_images", "instances": [[1.0]]}),
    ("POST", "/v1/models/ssl:predict", {"inputs": {"pixels": [1]}}),  # wrong key
    ("POST", "/v1/models/nope:predict", GOOD),  # unknown model
    ("POST", "/v1/models/ssl/versions/9:predict", GOOD),  # unknown version
    ("POST", "/v1/models/ssl:predict", {"instances": [{"b64": "@@@"}]}),  # bad base64
    ("POST", "/v1/models/ssl:predict", {"instances": [{"b64": "aGVsbG8="}]}),  # not an image
    ("GET", "/v1/models/ssl/versions/x", None),  # bad version
]


def rss_mib() -> float:
    """This process's resident set size (the server runs in-process), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def probabilities(answer) -> np.ndarray:
    return np.array([prediction["probabilities"] for prediction in answer["predictions"]])


def test_soak_400_requests_8_clients_malformed_and_new_version_midway(server, base, shared_export):
    port = server.server_address[1]
    bodies = [{"instances": [{"b64": png_b64(image)}]} for image in sample_images(16, 1, 4, 11)]
    plan = []  # (kind, method, path, body, body index)
    for index in range(400):
        if index % 10 == 9:
            plan.append(("malformed", *MALFORMED[index // 10 % len(MALFORMED)], None))
        elif index % 3 == 0:
            path = "/v1/models/ssl/versions/1:predict"
            plan.append(("v1", "POST", path, bodies[index % 4], index % 4))
        else:
            plan.append(("latest", "POST", "/v1/models/ssl:predict", bodies[index % 4], index % 4))
    available_at: list[float] = []
    available = threading.Event()

    def write_new_version():
        """Copies ssl/2 in file by file (non-atomically), then waits until it is AVAILABLE."""
        shutil.copytree(shared_export / "ssl" / "2", base / "ssl" / "2")
        watcher = Client(port)
        while version_states(watcher, "ssl").get("2") != ("AVAILABLE", "OK"):
            time.sleep(0.02)
        available_at.append(time.perf_counter())
        available.set()
        watcher.close()

    writer = threading.Thread(target=write_new_version)
    local = threading.local()

    def one(index: int):
        if not hasattr(local, "client"):
            local.client = Client(port)
        if index == len(plan) // 2:
            writer.start()
        if index >= len(plan) // 2:
            available.wait(0.05)  # pace the second half while the new version loads
        kind, method, path, body, _ = plan[index]
        started = time.perf_counter()
        try:
            status, answer = local.client.call(method, path, body)
        except Exception as error:  # noqa: BLE001  (a failed request is counted, not raised)
            local.client.close()
            status, answer = None, repr(error)
        return started, status, answer

    warm = Client(port)
    reference_1 = [probabilities(warm.call("POST", plan[0][2], body)[1]) for body in bodies]
    rss_before = rss_mib()
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(len(plan))))
    elapsed = time.perf_counter() - began
    writer.join(timeout=60)
    rss_after = rss_mib()
    assert available_at, "the new version never became AVAILABLE"
    path_2 = "/v1/models/ssl/versions/2:predict"
    reference_2 = [probabilities(warm.call("POST", path_2, body)[1]) for body in bodies]
    warm.close()

    failed, bad_errors, answered_by = [], [], {"1": 0, "2": 0}
    for index, (started, status, answer) in enumerate(results):
        kind, method, path, _, body_index = plan[index]
        if kind == "malformed":
            if not (
                status
                and 400 <= status < 500
                and set(answer) == {"error"}
                and isinstance(answer["error"], str)
            ):
                bad_errors.append((method, path, status, answer))
            continue
        if status != 200:
            failed.append((index, kind, status, answer))
            continue
        got = probabilities(answer)
        by_1 = np.allclose(got, reference_1[body_index], atol=1e-6)
        by_2 = np.allclose(got, reference_2[body_index], atol=1e-6)
        after_swap = started > available_at[0]
        if kind == "v1" and not by_1 or kind == "latest" and not (by_2 or by_1 and not after_swap):
            failed.append((index, kind, "answered by the wrong version", after_swap))
        elif kind == "latest":
            answered_by["2" if by_2 else "1"] += 1
    assert failed == []
    assert bad_errors == []
    assert sum(kind == "malformed" for kind, *_ in plan) == 40
    after = Client(port)
    assert latest_version(after, "ssl") == "2"
    after.close()
    print(
        f"\nsoak: {len(plan)} requests from 8 clients in {elapsed:.2f} s "
        f"({len(plan) / elapsed:.0f}/s), 40 malformed (all 4xx JSON), 0 failed valid; "
        f"unversioned answered by v1 {answered_by['1']}, by v2 {answered_by['2']}; "
        f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB ({rss_after - rss_before:+.1f} MiB)"
    )
