"""The local server against TF Serving's REST contract: status, metadata, predict, errors."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from kerassl import serve as serve_cli
from kerassl.serving.server import make_server, serve_in_thread
from kerassl.serving.verify import sample_images
from kerassl.testing.fake_run import make_export_dir

REPO = Path(__file__).resolve().parents[1]
MAX_BODY = 1024 * 1024


def png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Client:
    """A tiny REST client on one keep-alive connection (like the ones users write)."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body=None, headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        data = response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), data[:200]
        if response.getheader("Connection", "").lower() == "close":
            self.connection.close()
        return response.status, json.loads(data)

    def close(self):
        self.connection.close()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return make_export_dir(tmp_path_factory.getbasetemp() / "serving-export")


@pytest.fixture(scope="module")
def server(export_dir):
    server = make_server(export_dir, port=0, max_body_bytes=MAX_BODY)
    serve_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def client(server):
    client = Client(server.server_address[1])
    yield client
    client.close()


@pytest.fixture(scope="module")
def images():
    return sample_images(16, 1, count=4, seed=11)


def keras_probabilities(export_dir: Path, name: str, version: int, images: np.ndarray):
    run_dir = export_dir.parent / "runs" / f"{name}-{version}"
    classifier = keras.saving.load_model(run_dir / "classifier.keras")
    return classifier(images.astype(np.float32) / 255.0).numpy()


# --- status and metadata -----------------------------------------------------------------


def test_status_lists_all_versions_or_one(client):
    status, body = client.call("GET", "/v1/models/ssl")
    assert status == 200
    assert [v["version"] for v in body["model_version_status"]] == ["2", "1"]
    for entry in body["model_version_status"]:
        assert entry["state"] == "AVAILABLE"
        assert entry["status"] == {"error_code": "OK", "error_message": ""}
    status, body = client.call("GET", "/v1/models/ssl/versions/1")
    assert status == 200 and [v["version"] for v in body["model_version_status"]] == ["1"]


def test_metadata_has_tf_serving_signature_defs(client):
    status, body = client.call("GET", "/v1/models/ssl/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "ssl", "signature_name": "", "version": "2"}
    signature_defs = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "predict_images", "embed"} <= set(signature_defs)
    default = signature_defs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    image_bytes = default["inputs"]["image_bytes"]
    assert image_bytes["dtype"] == "DT_STRING"
    assert image_bytes["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}],
        "unknown_rank": False,
    }
    outputs = default["outputs"]
    assert {k: v["dtype"] for k, v in outputs.items()} == {
        "probabilities": "DT_FLOAT",
        "classes": "DT_INT32",
        "class_names": "DT_STRING",
    }
    assert [d["size"] for d in outputs["probabilities"]["tensor_shape"]["dim"]] == ["-1", "10"]
    assert signature_defs["predict_images"]["inputs"]["images"]["dtype"] == "DT_FLOAT"
    status, body = client.call("GET", "/v1/models/baseline/versions/1/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"


def test_model_list_extension(client):
    status, body = client.call("GET", "/v1/models")
    assert status == 200
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"ssl", "baseline"}
    assert models["ssl"]["versions"] == ["1", "2"] and models["ssl"]["latest_version"] == "2"
    assert models["baseline"]["channels"] == 1 and models["baseline"]["image_size"] == 16
    assert len(models["baseline"]["class_names"]) == 10


# --- predict -------------------------------------------------------------------------------


def test_predict_row_format_with_b64_matches_keras(client, export_dir, images):
    request = {"instances": [{"b64": png_b64(image)} for image in images]}
    status, body = client.call("POST", "/v1/models/ssl/versions/1:predict", request)
    assert status == 200
    predictions = body["predictions"]
    assert len(predictions) == 4
    expected = keras_probabilities(export_dir, "ssl", 1, images)
    probabilities = np.array([p["probabilities"] for p in predictions])
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    for row, prediction in zip(expected, predictions, strict=True):
        assert prediction["classes"] == list(np.argsort(-row, kind="stable")[:5])
        assert len(prediction["class_names"]) == 5 and all(
            isinstance(name, str) for name in prediction["class_names"]
        )


def test_predict_columnar_format_and_latest_version(client, export_dir, images):
    encoded = [{"b64": png_b64(image)} for image in images]
    status, body = client.call("POST", "/v1/models/ssl:predict", {"inputs": encoded})
    assert status == 200
    outputs = body["outputs"]
    assert set(outputs) == {"probabilities", "classes", "class_names"}
    latest = keras_probabilities(export_dir, "ssl", 2, images)
    np.testing.assert_allclose(outputs["probabilities"], latest, atol=1e-6)
    named = {"inputs": {"image_bytes": encoded}, "signature_name": "serving_default"}
    status, same = client.call("POST", "/v1/models/ssl/versions/2:predict", named)
    assert status == 200 and same["outputs"] == outputs
    first = keras_probabilities(export_dir, "ssl", 1, images)
    assert np.abs(first - latest).max() > 1e-3  # versions really are different models


def test_predict_other_signatures(client, export_dir, images):
    request = {"signature_name": "predict_images", "instances": images.tolist()}
    status, body = client.call("POST", "/v1/models/baseline:predict", request)
    assert status == 200
    expected = keras_probabilities(export_dir, "baseline", 1, images)
    np.testing.assert_allclose(
        [p["probabilities"] for p in body["predictions"]], expected, atol=1e-6
    )
    request = {"signature_name": "embed", "instances": [{"b64": png_b64(images[0])}]}
    status, body = client.call("POST", "/v1/models/baseline:predict", request)
    assert status == 200
    assert np.array(body["predictions"]).shape == (1, 16)  # one output: unnamed rows


# --- malformed requests: 4xx JSON errors, and the server keeps answering -----------------

GOOD = {"instances": [{"b64": png_b64(np.zeros((16, 16, 1), np.uint8))}]}
BOMB = io.BytesIO()
Image.new("1", (6000, 6000)).save(BOMB, "PNG")

MALFORMED = {
    "bad_json": ("POST", "/v1/models/ssl:predict", b'{"instances": [', 400),
    "not_an_object": ("POST", "/v1/models/ssl:predict", [1, 2], 400),
    "missing_instances": (
        "POST",
        "/v1/models/ssl:predict",
        {"signature_name": "serving_default"},
        400,
    ),
    "instances_and_inputs": ("POST", "/v1/models/ssl:predict", {**GOOD, "inputs": []}, 400),
    "empty_instances": ("POST", "/v1/models/ssl:predict", {"instances": []}, 400),
    "wrong_dtype": (
        "POST",
        "/v1/models/ssl:predict",
        {"signature_name": "predict_images", "instances": [[["x"]]]},
        400,
    ),
    "wrong_shape": (
        "POST",
        "/v1/models/ssl:predict",
        {"signature_name": "predict_images", "instances": [[1.0, 2.0]]},
        400,
    ),
    "ragged": (
        "POST",
        "/v1/models/ssl:predict",
        {"signature_name": "predict_images", "instances": [[[[1.0]], [[1.0], [2.0]]]]},
        400,
    ),
    "number_for_bytes": ("POST", "/v1/models/ssl:predict", {"instances": [3]}, 400),
    "bad_base64": ("POST", "/v1/models/ssl:predict", {"instances": [{"b64": "@@@"}]}, 400),
    "not_an_image": (
        "POST",
        "/v1/models/ssl:predict",
        {"instances": [{"b64": base64.b64encode(b"hello world").decode()}]},
        400,
    ),
    "unknown_signature": ("POST", "/v1/models/ssl:predict", {**GOOD, "signature_name": "x"}, 400),
    "wrong_input_name": ("POST", "/v1/models/ssl:predict", {"inputs": {"pixels": [1]}}, 400),
    "oversized_payload": ("POST", "/v1/models/ssl:predict", b" " * (MAX_BODY + 1), 413),
    "decompression_bomb": (
        "POST",
        "/v1/models/ssl:predict",
        {"instances": [{"b64": base64.b64encode(BOMB.getvalue()).decode()}]},
        413,
    ),
    "unknown_model": ("POST", "/v1/models/nope:predict", GOOD, 404),
    "unknown_version": ("POST", "/v1/models/ssl/versions/9:predict", GOOD, 404),
    "unknown_model_status": ("GET", "/v1/models/nope", None, 404),
    "bad_version": ("GET", "/v1/models/ssl/versions/latest", None, 400),
    "label": ("GET", "/v1/models/ssl/labels/stable", None, 404),
    "get_predict": ("GET", "/v1/models/ssl:predict", None, 405),
    "post_status": ("POST", "/v1/models/ssl", GOOD, 405),
    "delete": ("DELETE", "/v1/models/ssl", None, 405),
    "unknown_path": ("GET", "/v2/whatever", None, 404),
    "classify": ("POST", "/v1/models/ssl:classify", {"examples": []}, 400),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_request_gets_json_4xx_and_server_keeps_answering(kind, client):
    method, path, body, expected = MALFORMED[kind]
    status, answer = client.call(method, path, body)
    assert status == expected, answer
    assert set(answer) == {"error"} and isinstance(answer["error"], str) and answer["error"]
    after = Client(client.connection.port)
    try:
        status, answer = after.call("POST", "/v1/models/ssl:predict", GOOD)
    finally:
        after.close()
    assert status == 200 and len(answer["predictions"]) == 1


def test_missing_content_length_is_411(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    connection.putrequest("POST", "/v1/models/ssl:predict")
    connection.putheader("Content-Type", "application/json")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411 and "error" in json.loads(response.read())
    connection.close()


def test_error_messages_name_the_problem(client):
    status, body = client.call("POST", "/v1/models/ssl:predict", MALFORMED["not_an_image"][2])
    assert status == 400 and "image" in body["error"].lower()
    status, body = client.call("POST", "/v1/models/nope:predict", GOOD)
    assert body["error"] == "Servable not found for request: Latest(nope)"
    status, body = client.call("POST", "/v1/models/ssl:predict", MALFORMED["wrong_shape"][2])
    assert "shape" in body["error"]


# --- concurrency -------------------------------------------------------------------------


def test_500_predicts_from_16_threads_without_errors(server, images):
    port = server.server_address[1]
    bodies = [{"instances": [{"b64": png_b64(image)}]} for image in images]
    reference = {}
    single = Client(port)
    for index, body in enumerate(bodies):
        reference[index] = single.call("POST", "/v1/models/ssl:predict", body)[1]
    single.close()
    local = threading.local()

    def one(request_index: int):
        if not hasattr(local, "client"):
            local.client = Client(port)
        index = request_index % len(bodies)
        status, answer = local.client.call("POST", "/v1/models/ssl:predict", bodies[index])
        return status == 200 and answer == reference[index]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(500)))
    elapsed = time.perf_counter() - started
    assert sum(not ok for ok in results) == 0
    print(f"500 predicts from 16 threads in {elapsed:.2f} s")


def test_64_clients_connecting_at_once_are_all_answered(server):
    port = server.server_address[1]
    start = threading.Barrier(64)

    def connect_and_predict(_):
        start.wait()
        client = Client(port)
        try:
            return client.call("POST", "/v1/models/ssl:predict", GOOD)[0]
        except OSError as error:  # a connection reset by an overflowing listen backlog
            return repr(error)
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(connect_and_predict, range(64)))
    assert statuses == [200] * 64


# --- CLI -------------------------------------------------------------------------------


def start_cli(export_dir: Path, *options: str) -> tuple[subprocess.Popen, int]:
    """Starts `python -m kerassl.serve export_dir --port 0 ...`; returns it and its port."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "kerassl.serve", str(export_dir), "--port", "0", *options]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if "listening on" in line:
            url = line.split("listening on", 1)[1].strip()
            assert url.startswith("http://127.0.0.1:")
            return process, int(url.rstrip("/").rsplit(":", 1)[1])
    process.kill()
    raise AssertionError(f"server exited before listening: {process.communicate()[1][-2000:]}")


def send_partial_predict(port: int, body: bytes, sent: int) -> socket.socket:
    """Opens a connection and sends a predict request with only `sent` bytes of its body."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        "POST /v1/models/ssl:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode("ascii") + body[:sent])
    return connection


def wait_until_refused(port: int, timeout: float = 20.0) -> bool:
    """True once connecting to `port` is refused (the listening socket is closed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


def test_serve_cli_on_sigterm_answers_in_flight_requests_and_exits_0(export_dir):
    process, port = start_cli(export_dir, "--poll-seconds", "0.5")
    try:
        idle = Client(port)  # a keep-alive connection that stays idle must not delay exit
        status, body = idle.call("GET", "/v1/models/baseline")
        assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
        request = json.dumps(GOOD).encode()
        in_flight = [send_partial_predict(port, request, len(request) // 2) for _ in range(3)]
        time.sleep(1.0)  # the server has read their headers and waits for the bodies
        process.send_signal(signal.SIGTERM)
        assert wait_until_refused(port), "still accepting connections after SIGTERM"
        assert process.poll() is None, "exited without waiting for in-flight requests"
        for connection in in_flight:
            connection.sendall(request[len(request) // 2 :])
        for connection in in_flight:
            response = http.client.HTTPResponse(connection)
            response.begin()
            answer = json.loads(response.read())
            connection.close()
            assert response.status == 200 and len(answer["predictions"]) == 1
            assert response.getheader("Connection") == "close"
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr[-2000:]
        assert "stopped" in stdout and "still busy" not in stderr
        assert idle.connection.sock.recv(1) == b""  # closed by the server
        idle.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def serve_error(argv: list[str], capsys) -> str:
    """Runs `kerassl.serve.main(argv)` in-process; returns its stderr, asserting exit code 2
    and exactly one line."""
    code = serve_cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    return err


def test_serve_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys, export_dir):
    missing = tmp_path / "missing"
    assert "does not exist" in serve_error([str(missing)], capsys)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert "is not a directory" in serve_error([str(a_file)], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"no SavedModels under '{empty}'" in serve_error([str(empty)], capsys)
    assert "--port must be in 0..65535, got 70000" in serve_error(
        [str(export_dir), "--port", "70000"], capsys
    )
    assert "--port: invalid int value: 'x'" in serve_error([str(export_dir), "--port", "x"], capsys)
    for value in ("-1", "nan", "inf"):
        err = serve_error([str(export_dir), "--poll-seconds", value], capsys)
        assert f"(0 disables polling), got {float(value)}" in err
    err = serve_error([str(export_dir), "--poll-seconds", "soon"], capsys)
    assert "--poll-seconds: invalid float value: 'soon'" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = serve_error([str(export_dir), "--port", str(port)], capsys)
    assert f"port {port} is in use; choose another --port" in err
