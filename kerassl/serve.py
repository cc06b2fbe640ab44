"""`python -m kerassl.serve EXPORT_DIR`: serve exported models over TF Serving's REST API.

python -m kerassl.serve export/ --port 8501
curl http://127.0.0.1:8501/v1/models/fashion_simclr
open http://127.0.0.1:8501/   (upload or draw an image; every model predicts)

EXPORT_DIR is polled every --poll-seconds: versions exported while serving are loaded once
complete, removed ones are unloaded. SIGTERM stops gracefully: in-flight requests are
answered, then the process exits with code 0.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from kerassl.errors import ArgumentParser, UserError, cli_entry
from kerassl.settings_file import CONFIG_HELP, parse_with_settings

# Longest wait for in-flight requests after SIGTERM: Kubernetes' default grace period
# before it sends SIGKILL.
SHUTDOWN_GRACE_SECONDS = 30.0


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m kerassl.serve",
        description="Serve every SavedModel under EXPORT_DIR (<name>/<version>/) with the "
        "TensorFlow Serving REST API (status, metadata, predict) and a prediction web page.",
    )
    parser.add_argument(
        "export_dir", nargs="?", help="TF Serving base directory written by kerassl.export"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8501, help="port (default 8501, TF Serving's; 0 = any free)"
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=10.0,
        help="largest accepted request body in MiB; larger gets 413 (default 10)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=1.0,
        help="rescan EXPORT_DIR for new and removed versions every this many seconds, like "
        "TF Serving's --file_system_poll_wait_seconds (default 1; 0 = never)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=CONFIG_HELP.format(example="export_dir: export, port: 8080, poll_seconds: 5"),
    )
    return parser


def check_args(args) -> None:
    """UserError for an option out of range, a missing or empty EXPORT_DIR or a port in use.

    Runs before TensorFlow is imported (seconds of start-up with log lines of its own), so
    these mistakes are reported at once and alone on stderr. `make_server` checks the
    directory and the port again for library callers.
    """
    if args.export_dir is None:
        raise UserError("EXPORT_DIR is required (or export_dir in --config FILE)")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if not (math.isfinite(args.max_body_mb) and args.max_body_mb > 0):
        raise UserError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if not (math.isfinite(args.poll_seconds) and args.poll_seconds >= 0):
        raise UserError(
            f"--poll-seconds must be a number >= 0 (0 disables polling), got {args.poll_seconds}"
        )
    check_export_dir(Path(args.export_dir))
    if args.port:
        check_port_free(args.host, args.port)


def check_export_dir(export_dir: Path) -> None:
    """UserError unless `export_dir` holds at least one `<name>/<version>/saved_model.pb`."""
    if not export_dir.is_dir():
        problem = "is not a directory" if export_dir.exists() else "does not exist"
        raise UserError(f"model base directory {str(export_dir)!r} {problem}")
    if not any(p.parent.name.isdigit() for p in export_dir.glob("*/*/saved_model.pb")):
        raise UserError(
            f"no SavedModels under {str(export_dir)!r} (expected <name>/<version>/"
            "saved_model.pb); export one with python -m kerassl.export"
        )


def check_port_free(host: str, port: int) -> None:
    """UserError unless `(host, port)` can be bound now (as the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} is in use; choose another --port") from None
            reason = error.strerror or str(error)
            raise UserError(
                f"cannot listen on {host}:{port}: {reason}; check --host and --port"
            ) from None


def serve_until_sigterm(server) -> None:
    """Runs `server.serve_forever()` until SIGTERM, then drains in-flight requests."""
    from kerassl.serving.repository import log

    def on_sigterm(signum, frame):
        # shutdown() waits for serve_forever, which runs in this (the main) thread.
        threading.Thread(target=server.shutdown, name="kerassl-sigterm").start()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.serve_forever()
    finally:
        signal.signal(signal.SIGTERM, previous)
    log("SIGTERM, finishing in-flight requests")
    left = server.drain(SHUTDOWN_GRACE_SECONDS)
    if left:
        log(f"{left} connection(s) still busy after {SHUTDOWN_GRACE_SECONDS:g} s", error=True)
    log("stopped")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_with_settings(build_parser(), argv)
    check_args(args)
    # Failed requests (e.g. bytes that are not an image) would each log a TensorFlow
    # warning with a graph trace; the client already gets the message as JSON.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kerassl.serving.server import make_server

    server = make_server(
        args.export_dir,
        host=args.host,
        port=args.port,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        verbose=args.verbose,
        poll_seconds=args.poll_seconds,
    )
    try:
        for name, versions in server.repository.models.items():
            listed = ", ".join(str(v) for v in sorted(versions))
            print(f"kerassl serve: model {name!r}, versions {listed}", flush=True)
        if args.poll_seconds:
            print(
                f"kerassl serve: polling {args.export_dir} every {args.poll_seconds:g} s",
                flush=True,
            )
        print(f"kerassl serve: listening on {server.url}", flush=True)
        serve_until_sigterm(server)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
