"""`python -m kerassl.serve EXPORT_DIR`: serve exported models over TF Serving's REST API.

python -m kerassl.serve export/ --port 8501
curl http://127.0.0.1:8501/v1/models/fashion_simclr
open http://127.0.0.1:8501/   (upload or draw an image; every model predicts)
"""

from __future__ import annotations

import argparse
import os
import sys

from kerassl.errors import UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kerassl.serve",
        description="Serve every SavedModel under EXPORT_DIR (<name>/<version>/) with the "
        "TensorFlow Serving REST API (status, metadata, predict) and a prediction web page.",
    )
    parser.add_argument("export_dir", help="TF Serving base directory written by kerassl.export")
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
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if args.max_body_mb <= 0:
        raise UserError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
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
    )
    try:
        for name, versions in server.repository.models.items():
            listed = ", ".join(str(v) for v in sorted(versions))
            print(f"kerassl serve: model {name!r}, versions {listed}", flush=True)
        print(f"kerassl serve: listening on {server.url}", flush=True)
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
