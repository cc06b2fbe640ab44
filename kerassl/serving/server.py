"""A local server speaking the TensorFlow Serving REST API subset clients use, plus a web page.

Endpoints (same URLs, JSON shapes and error form as `tensorflow/serving`'s REST API, so
client code works against either):

- `GET  /v1/models/{name}[/versions/{v}]` → model status (`model_version_status`).
- `GET  /v1/models/{name}[/versions/{v}]/metadata` → `model_spec` + `signature_def`s.
- `POST /v1/models/{name}[/versions/{v}]:predict` → `{"instances": …}` (row format) gives
  `{"predictions": …}`; `{"inputs": …}` (columnar) gives `{"outputs": …}`; optional
  `signature_name`; binary strings as `{"b64": "…"}`.
- Errors: `{"error": "<message>"}` with a 4xx status (5xx only for server bugs).

kerassl extensions (not in TF Serving): `GET /v1/models` lists the served models with
their kerassl metadata, and `GET /` serves a page predicting with every model side by side.

Every version under `<base>/<name>/<numeric version>/` is loaded with
`tf.saved_model.load` at start-up; requests without a version use the highest.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from kerassl.errors import UserError
from kerassl.serving import export as export_lib

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_MODEL_URL = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?/?$"
)


class RestError(Exception):
    """An error answered as `{"error": message}` with HTTP status `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServableVersion:
    """One loaded SavedModel version."""

    name: str
    version: int
    path: Path
    loaded: Any = None
    error: str = ""
    signature_defs: dict = field(default_factory=dict)
    kerassl: dict = field(default_factory=dict)

    @property
    def signatures(self):
        return self.loaded.signatures if self.loaded is not None else {}

    def status_json(self) -> dict:
        available = self.loaded is not None
        return {
            "version": str(self.version),
            "state": "AVAILABLE" if available else "END",
            "status": {
                "error_code": "OK" if available else "UNKNOWN",
                "error_message": self.error,
            },
        }


def _tensor_info_json(info) -> dict:
    from tensorflow.core.framework import types_pb2

    shape = info.tensor_shape
    return {
        "dtype": types_pb2.DataType.Name(info.dtype),
        "tensor_shape": {
            "dim": [{"size": str(dim.size), "name": dim.name} for dim in shape.dim],
            "unknown_rank": shape.unknown_rank,
        },
        "name": info.name,
    }


def read_signature_defs(version_dir: str | Path) -> dict:
    """The SignatureDefs of `saved_model.pb`, as TF Serving's metadata API prints them."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(version_dir) / "saved_model.pb").read_bytes())
    signature_defs = saved_model.meta_graphs[0].signature_def
    return {
        key: {
            "inputs": {k: _tensor_info_json(v) for k, v in sorted(sig.inputs.items())},
            "outputs": {k: _tensor_info_json(v) for k, v in sorted(sig.outputs.items())},
            "method_name": sig.method_name,
            "defaults": {},
        }
        for key, sig in sorted(signature_defs.items())
    }


class ModelRepository:
    """All model versions under a TF Serving base directory, loaded once.

    Args:
        base_dir: directory holding `<name>/<version>/saved_model.pb`.
    """

    def __init__(self, base_dir: str | Path):
        self.base_dir = Path(base_dir)
        if not self.base_dir.is_dir():
            raise UserError(f"model base directory {str(self.base_dir)!r} does not exist")
        self.models: dict[str, dict[int, ServableVersion]] = {}
        for model_dir in sorted(self.base_dir.iterdir()):
            versions = export_lib.existing_versions(model_dir) if model_dir.is_dir() else []
            if versions:
                self.models[model_dir.name] = {v: self._load(model_dir, v) for v in versions}
        if not self.models:
            raise UserError(
                f"no SavedModels under {str(self.base_dir)!r} (expected <name>/<version>/"
                "saved_model.pb); export one with python -m kerassl.export"
            )

    @staticmethod
    def _load(model_dir: Path, version: int) -> ServableVersion:
        path = model_dir / str(version)
        servable = ServableVersion(model_dir.name, version, path)
        try:
            servable.loaded = tf.saved_model.load(str(path))
            servable.signature_defs = read_signature_defs(path)
            servable.kerassl = export_lib.read_export_metadata(path)
        except Exception as error:  # noqa: BLE001  (a broken version is reported, not fatal)
            servable.loaded = None
            servable.error = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            print(f"kerassl serve: cannot load {path}: {servable.error}", file=sys.stderr)
        return servable

    def versions(self, name: str) -> dict[int, ServableVersion]:
        if name not in self.models:
            raise RestError(404, f"Could not find any versions of model {name}")
        return self.models[name]

    def get(self, name: str, version: str | None = None) -> ServableVersion:
        """The servable for `name` at `version` (default: highest loaded), else 404."""
        versions = self.models.get(name, {})
        if version is None:
            available = [v for v, servable in versions.items() if servable.loaded is not None]
            if not available:
                raise RestError(404, f"Servable not found for request: Latest({name})")
            return versions[max(available)]
        number = _parse_version(version)
        servable = versions.get(number)
        if servable is None or servable.loaded is None:
            raise RestError(404, f"Servable not found for request: Specific({name}, {number})")
        return servable

    def listing(self) -> dict:
        """kerassl extension: every model with its versions and kerassl metadata."""
        models = []
        for name, versions in self.models.items():
            available = sorted(v for v, s in versions.items() if s.loaded is not None)
            if not available:
                continue
            latest = versions[available[-1]]
            info = latest.kerassl
            models.append(
                {
                    "name": name,
                    "versions": [str(v) for v in available],
                    "latest_version": str(available[-1]),
                    "signatures": sorted(latest.signatures),
                    "image_size": info.get("image_size"),
                    "channels": info.get("channels"),
                    "class_names": info.get("class_names"),
                    "method": info.get("method"),
                    "dataset": info.get("dataset"),
                }
            )
        return {"models": models}


def _parse_version(text: str) -> int:
    if not text.isdigit():
        raise RestError(400, f"Model version must be a non-negative integer, got {text!r}")
    return int(text)


# ---------------------------------------------------------------------------------------
# Predict: JSON → tensors → JSON, following TF Serving's REST encoding.


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _nested_shape(value: Any, path: str) -> list[int]:
    """Shape of a rectangular nested list; 400 if ragged."""
    if isinstance(value, list):
        if not value:
            return [0]
        shapes = [_nested_shape(item, path) for item in value]
        if any(shape != shapes[0] for shape in shapes):
            raise RestError(400, f"{path}: nested lists have different lengths (ragged tensor)")
        return [len(value), *shapes[0]]
    return []


def _flatten(value: Any) -> list:
    if isinstance(value, list):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


def _string_leaf(value: Any, name: str) -> bytes:
    if _is_b64(value):
        if not isinstance(value["b64"], str):
            raise RestError(400, f"{name}: 'b64' value must be a string")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RestError(400, f"{name}: 'b64' value is not valid base64") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise RestError(
        400,
        f'{name}: expected a string or {{"b64": ...}} for a DT_STRING input, got '
        f"{type(value).__name__}",
    )


def to_tensor(value: Any, spec: tf.TensorSpec, name: str) -> tf.Tensor:
    """Converts a JSON value to a tensor matching `spec` (dtype, rank, fixed dims), else 400."""
    shape = _nested_shape(value, name)
    if spec.dtype == tf.string:
        leaves = [_string_leaf(leaf, name) for leaf in _flatten(value)]
        array = np.array(leaves, dtype=object).reshape(shape)
    else:
        leaves = _flatten(value)
        if any(isinstance(leaf, bool) or not isinstance(leaf, (int, float)) for leaf in leaves):
            raise RestError(400, f"{name}: expected numbers for a {spec.dtype.name} input")
        array = np.array(leaves, dtype=np.float64).reshape(shape)
        if spec.dtype.is_integer:
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise RestError(400, f"{name}: expected integers for a {spec.dtype.name} input")
            if np.any(array < spec.dtype.min) or np.any(array > spec.dtype.max):
                raise RestError(
                    400,
                    f"{name}: values out of range [{spec.dtype.min}, {spec.dtype.max}] for "
                    f"{spec.dtype.name}",
                )
        array = array.astype(spec.dtype.as_numpy_dtype)
    expected = spec.shape
    if expected.rank is not None:
        compatible = len(shape) == expected.rank and all(
            want is None or want == got for want, got in zip(expected.as_list(), shape, strict=True)
        )
        if not compatible:
            wanted = [-1 if d is None else d for d in expected.as_list()]
            raise RestError(400, f"{name}: got shape {shape}, expected shape {wanted}")
    return tf.constant(array, dtype=spec.dtype)


def _check_image_sizes(tensor: tf.Tensor, name: str, max_pixels: int) -> None:
    """Rejects encoded images whose header declares more than `max_pixels` (decompression bombs)."""
    from PIL import Image, UnidentifiedImageError

    for data in tensor.numpy().reshape(-1):
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            continue  # TensorFlow's decoder gives the error message
        if width * height > max_pixels:
            raise RestError(
                413, f"{name}: image of {width}x{height} pixels exceeds {max_pixels} pixels"
            )


def parse_predict_request(body: bytes, servable: ServableVersion):
    """Parses a predict body → `(signature_name, row_format, {input name: tensor})`, else 400."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RestError(400, f"Request body is not valid JSON: {error}") from None
    if not isinstance(request, dict):
        raise RestError(400, "Request body must be a JSON object")
    signature_name = request.get("signature_name", export_lib.SERVING_DEFAULT)
    if not isinstance(signature_name, str):
        raise RestError(400, "'signature_name' must be a string")
    signatures = servable.signatures
    if signature_name not in signatures:
        raise RestError(
            400,
            f'Serving signature name: "{signature_name}" not found in signature def; '
            f"available: {sorted(signatures)}",
        )
    specs = signatures[signature_name].structured_input_signature[1]
    if ("instances" in request) == ("inputs" in request):
        raise RestError(
            400, "Request must have exactly one of 'instances' (row) or 'inputs' (columnar)"
        )
    row_format = "instances" in request
    if row_format:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise RestError(400, "'instances' must be a non-empty list")
        named = all(isinstance(i, dict) and not _is_b64(i) for i in instances)
        if named:
            for index, instance in enumerate(instances):
                if set(instance) != set(specs):
                    raise RestError(
                        400,
                        f"instances[{index}] has inputs {sorted(instance)}, "
                        f"expected {sorted(specs)}",
                    )
            columns = {key: [instance[key] for instance in instances] for key in specs}
        elif len(specs) == 1:
            columns = {next(iter(specs)): instances}
        else:
            raise RestError(400, f"each instance must be an object with inputs {sorted(specs)}")
    else:
        inputs = request["inputs"]
        if isinstance(inputs, dict) and not _is_b64(inputs):
            if set(inputs) != set(specs):
                raise RestError(400, f"'inputs' has {sorted(inputs)}, expected {sorted(specs)}")
            columns = inputs
        elif len(specs) == 1:
            columns = {next(iter(specs)): inputs}
        else:
            raise RestError(400, f"'inputs' must be an object with inputs {sorted(specs)}")
    tensors = {key: to_tensor(columns[key], specs[key], key) for key in specs}
    return signature_name, row_format, tensors


def _json_value(array: np.ndarray, name: str):
    if array.dtype == object:
        binary = name.endswith("_bytes")

        def encode(value: bytes):
            if not binary:
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(value).decode("ascii")}

        return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else []
    return array.tolist()


def format_predict_response(outputs: dict, row_format: bool) -> dict:
    """TF Serving's response: `predictions` (rows) or `outputs` (columns); one output unnamed."""
    arrays = {key: np.asarray(value) for key, value in outputs.items()}
    if len(arrays) == 1:
        ((key, array),) = arrays.items()
        return {"predictions" if row_format else "outputs": _json_value(array, key)}
    if not row_format:
        return {"outputs": {key: _json_value(array, key) for key, array in arrays.items()}}
    sizes = {array.shape[0] if array.ndim else None for array in arrays.values()}
    if len(sizes) != 1 or None in sizes:
        raise RestError(400, "outputs do not share a batch dimension; use the 'inputs' format")
    columns = {key: _json_value(array, key) for key, array in arrays.items()}
    return {
        "predictions": [
            {key: column[index] for key, column in columns.items()} for index in range(sizes.pop())
        ]
    }


def tf_error_message(error: tf.errors.OpError) -> str:
    """The user-facing line(s) of a TensorFlow op error, without graph-trace boilerplate."""
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>")
    lines = [
        line.strip()
        for line in (error.message or str(error)).splitlines()
        if line.strip() and not line.strip().startswith(("[[", *noise))
    ]
    return " ".join(lines) or type(error).__name__


def predict(
    servable: ServableVersion, body: bytes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> dict:
    """Runs a TF Serving predict request body on a servable, returning the response JSON."""
    signature_name, row_format, tensors = parse_predict_request(body, servable)
    for key, tensor in tensors.items():
        if tensor.dtype == tf.string:
            _check_image_sizes(tensor, key, max_image_pixels)
    try:
        outputs = servable.signatures[signature_name](**tensors)
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
        raise RestError(400, tf_error_message(error)) from None
    return format_predict_response({k: v.numpy() for k, v in outputs.items()}, row_format)


# ---------------------------------------------------------------------------------------
# HTTP


class ServingHTTPServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` holding a `ModelRepository` and request limits."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address,
        repository: ModelRepository,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        verbose: bool = False,
    ):
        self.repository = repository
        self.max_body_bytes = max_body_bytes
        self.max_image_pixels = max_image_pixels
        self.verbose = verbose
        super().__init__(address, ServingRequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class ServingRequestHandler(BaseHTTPRequestHandler):
    """Routes requests to the repository; every answer is JSON except the static page."""

    protocol_version = "HTTP/1.1"
    server_version = "kerassl-serve"
    # Headers and body are separate writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server: ServingHTTPServer

    def log_message(self, format, *args):  # noqa: A002  (BaseHTTPRequestHandler's signature)
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _handle(self, method: str) -> None:
        try:
            status, payload = self._route(method)
        except RestError as error:
            status, payload = error.status, {"error": error.message}
        except Exception as error:  # noqa: BLE001  (a bug answers 500 and the server lives on)
            status, payload = 500, {"error": f"internal error: {type(error).__name__}: {error}"}
            print(f"kerassl serve: {self.command} {self.path}: {error!r}", file=sys.stderr)
        if isinstance(payload, tuple):  # static file
            self._send(status, *payload)
        else:
            self._send_json(status, payload)

    def do_GET(self):  # noqa: N802
        self._handle("GET")

    def do_HEAD(self):  # noqa: N802
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def do_PUT(self):  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self):  # noqa: N802
        self._handle("DELETE")

    def do_PATCH(self):  # noqa: N802
        self._handle("PATCH")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            self.close_connection = True
            raise RestError(411, "Content-Length header required")
        if not length.isdigit():
            self.close_connection = True
            raise RestError(400, f"bad Content-Length {length!r}")
        length = int(length)
        limit = self.server.max_body_bytes
        if length > limit:
            self._discard(length)
            raise RestError(
                413, f"Request body of {length} bytes exceeds the limit of {limit} bytes"
            )
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        """Reads and drops an oversized body (so the client sees the 413), up to 4x the limit."""
        if length > 4 * self.server.max_body_bytes:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _route(self, method: str):
        path = self.path.split("?", 1)[0]
        if method not in ("GET", "POST"):
            length = self.headers.get("Content-Length", "")
            if length.isdigit():
                self._discard(int(length))
            else:
                self.close_connection = True
            raise RestError(405, f"Method {method} not allowed for {path}")
        repository = self.server.repository
        if path in ("/", "/index.html") or path.startswith("/static/"):
            name = "index.html" if path in ("/", "/index.html") else path[len("/static/") :]
            if method != "GET":
                self._read_body()
                raise RestError(405, f"Method {method} not allowed for {path}")
            if name not in STATIC_FILES:
                raise RestError(404, f"Not found: {path}")
            return 200, ((STATIC_DIR / name).read_bytes(), STATIC_FILES[name])
        if path.rstrip("/") == "/v1/models":
            if method != "GET":
                self._read_body()
                raise RestError(405, f"Method {method} not allowed for {path}")
            return 200, repository.listing()
        match = _MODEL_URL.match(path)
        if match is None:
            if method == "POST":
                self._read_body()
            raise RestError(404, f"Malformed request: {method} {path}")
        name, version, label, suffix = match.group("name", "version", "label", "suffix")
        if method == "POST":
            body = self._read_body()
            if suffix in ("/metadata", None):
                raise RestError(405, f"Method POST not allowed for {path}; use GET")
        elif suffix not in ("/metadata", None):
            raise RestError(405, f"Method GET not allowed for {path}; use POST")
        if label is not None:
            raise RestError(404, f"Unknown version label {label!r}: labels are not configured")
        if suffix is None:
            versions = repository.versions(name)
            if version is not None:
                servable = versions.get(_parse_version(version))
                if servable is None:
                    raise RestError(404, f"Could not find version {version} of model {name}")
                chosen = [servable]
            else:
                chosen = [versions[v] for v in sorted(versions, reverse=True)]
            return 200, {"model_version_status": [s.status_json() for s in chosen]}
        servable = repository.get(name, version)
        if suffix == "/metadata":
            return 200, {
                "model_spec": {
                    "name": name,
                    "signature_name": "",
                    "version": str(servable.version),
                },
                "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
            }
        if suffix in (":classify", ":regress"):
            raise RestError(400, f"{suffix[1:]} is not supported by kerassl serve; use :predict")
        return 200, predict(servable, body, self.server.max_image_pixels)


def make_server(
    base_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8501,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    verbose: bool = False,
) -> ServingHTTPServer:
    """Loads every model under `base_dir` and binds a server (port 0 picks a free port).

    Call `serve_forever()` on the result (or `serve_in_thread`), `shutdown()` to stop.
    """
    repository = ModelRepository(base_dir)
    try:
        return ServingHTTPServer(
            (host, port), repository, max_body_bytes, max_image_pixels, verbose
        )
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def serve_in_thread(server: ServingHTTPServer) -> threading.Thread:
    """Runs `server.serve_forever()` in a daemon thread (for tests and benchmarks)."""
    thread = threading.Thread(target=server.serve_forever, name="kerassl-serve", daemon=True)
    thread.start()
    return thread
