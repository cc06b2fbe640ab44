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
`tf.saved_model.load` at start-up, and while serving the base directory is polled every
`poll_seconds` for new and removed versions and models (`kerassl.serving.repository`, like
TF Serving's `--file_system_poll_wait_seconds`); requests without a version use the highest
loaded one. `shutdown()` then `drain()` stop the server gracefully: no new connections,
in-flight requests answered, idle keep-alive connections closed. The request and response
JSON is `kerassl.serving.rest`'s; this module is the HTTP side: routing, limits, status
codes, the static page.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kerassl.errors import UserError
from kerassl.serving.repository import ModelRepository, log
from kerassl.serving.rest import DEFAULT_MAX_IMAGE_PIXELS, RestError, parse_version, predict

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_POLL_SECONDS = 1.0  # TF Serving's --file_system_poll_wait_seconds default
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


class ServingHTTPServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` holding a `ModelRepository`, request limits and its connections.

    Args:
        address: `(host, port)` to bind.
        repository: the models served.
        max_body_bytes: larger request bodies get 413.
        max_image_pixels: larger encoded images get 413.
        verbose: log every request to stderr.
        poll_seconds: while `serve_forever` runs, `repository.refresh()` every this many
            seconds; 0 never rescans.
    """

    # Handler threads are tracked (`drain` waits for them) but stay daemons, so a client
    # stuck mid-request past the drain timeout cannot keep the process alive.
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog of 5 resets connections when more clients
    # connect at once (a pool of 16 starting up); the kernel caps this at somaxconn.
    request_queue_size = socket.SOMAXCONN

    def __init__(
        self,
        address,
        repository: ModelRepository,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        verbose: bool = False,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ):
        self.repository = repository
        self.max_body_bytes = max_body_bytes
        self.max_image_pixels = max_image_pixels
        self.verbose = verbose
        self.poll_seconds = poll_seconds
        self.draining = False
        self._connections: dict[ServingRequestHandler, bool] = {}  # handler → busy
        self._connections_changed = threading.Condition()
        super().__init__(address, ServingRequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serves until `shutdown()`, polling the repository meanwhile if `poll_seconds` > 0."""
        stop = threading.Event()
        poller = None
        if self.poll_seconds > 0:
            poller = threading.Thread(
                target=self.repository.poll_forever,
                args=(self.poll_seconds, stop),
                name="kerassl-poll",
                daemon=True,
            )
            poller.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            stop.set()
            if poller is not None:
                poller.join()

    def track(self, handler: ServingRequestHandler, busy: bool) -> bool:
        """Records whether `handler`'s connection is mid-request; True once draining."""
        with self._connections_changed:
            self._connections[handler] = busy
            return self.draining

    def untrack(self, handler: ServingRequestHandler) -> None:
        with self._connections_changed:
            self._connections.pop(handler, None)
            self._connections_changed.notify_all()

    def drain(self, timeout: float) -> int:
        """After `shutdown()`: stops accepting and lets open connections finish, for up to
        `timeout` seconds.

        The listening socket is closed, idle keep-alive connections are closed (as Go's
        `http.Server.Shutdown` does: a connection is busy from the first line of a request
        until its response is sent), and busy ones answer their request with
        `Connection: close`. Returns the number of connections still open at the timeout.
        """
        self.socket.close()
        with self._connections_changed:
            self.draining = True
            for handler, busy in self._connections.items():
                if not busy:
                    handler.close_idle()
            self._connections_changed.wait_for(lambda: not self._connections, timeout)
            return len(self._connections)


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

    # Connection tracking for `ServingHTTPServer.drain`: idle between requests, busy from
    # the request line (`parse_request`) until the response is written.

    def setup(self):
        super().setup()
        if self.server.track(self, busy=False):
            self.close_idle()  # accepted just as draining began

    def parse_request(self):
        self.server.track(self, busy=True)
        return super().parse_request()

    def handle_one_request(self):
        super().handle_one_request()
        if self.server.track(self, busy=False):
            self.close_connection = True

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.untrack(self)

    def close_idle(self) -> None:
        """Ends a connection waiting for its next request (its reader sees end of file)."""
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the client

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        if self.server.draining:
            self.close_connection = True
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
            log(f"{self.command} {self.path}: {error!r}", error=True)
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
                servable = versions.get(parse_version(version))
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
    poll_seconds: float = DEFAULT_POLL_SECONDS,
) -> ServingHTTPServer:
    """Loads every model under `base_dir` and binds a server (port 0 picks a free port).

    A missing or empty `base_dir` or an address that cannot be bound is a UserError. Call
    `serve_forever()` on the result (or `serve_in_thread`); `shutdown()` then
    `drain(timeout)` to stop gracefully, `server_close()` to release the socket.
    """
    repository = ModelRepository(base_dir)
    try:
        return ServingHTTPServer(
            (host, port), repository, max_body_bytes, max_image_pixels, verbose, poll_seconds
        )
    except OSError as error:
        raise _listen_error(error, host, port) from None


def _listen_error(error: OSError, host: str, port: int) -> UserError:
    """The UserError for a failed bind of `(host, port)`."""
    if error.errno == errno.EADDRINUSE:
        return UserError(f"port {port} is in use; choose another --port")
    reason = error.strerror or str(error)
    return UserError(f"cannot listen on {host}:{port}: {reason}; check --host and --port")


def serve_in_thread(server: ServingHTTPServer) -> threading.Thread:
    """Runs `server.serve_forever()` in a daemon thread (for tests and benchmarks)."""
    thread = threading.Thread(target=server.serve_forever, name="kerassl-serve", daemon=True)
    thread.start()
    return thread
