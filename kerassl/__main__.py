"""`python -m kerassl <command> …` and the `kerassl` console script."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "pretrain an encoder and evaluate it (kerassl.train)",
    "tune": "KerasTuner search for baselines and SSL settings (kerassl.tune)",
    "export": "export a run as a TF Serving SavedModel (kerassl.export)",
    "serve": "serve exported models over TF Serving's REST API (kerassl.serve)",
    "evaluate": "evaluate an encoder with several protocols, label budgets and seeds "
    "(kerassl.evaluate)",
    "benchmark": "compare methods and baselines, resumable, with tables and plots "
    "(kerassl.benchmark)",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: kerassl <command> [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:10s}{text}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"kerassl: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    return importlib.import_module(f"kerassl.{command}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
