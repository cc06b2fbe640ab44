"""Errors a user can act on, and the one place that turns them into exit codes.

Exit codes of every kerassl CLI: 0 done (or nothing left to do), 1 a run that failed
(`RunFailed`, e.g. a loss that became NaN), 2 a usage or data error (`UserError`),
130 interrupted (Ctrl-C). Each failure is one line on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys


class UserError(Exception):
    """A mistake in what the user asked for (bad name, missing data, bad option).

    The CLI prints its message as one line on stderr and exits with code 2; no traceback.
    Bugs are any other exception and keep their traceback.
    """


class RunFailed(Exception):
    """A run that could not finish for a reason the user can act on (it diverged): one
    line on stderr, exit code 1; the run directory stays, unfinished and resumable."""


def cli_entry(main):
    """Decorate a CLI ``main(argv=None) -> int`` so that `UserError` becomes one line +
    exit 2, `RunFailed` one line + exit 1 and Ctrl-C exit 130."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as error:
            print(f"kerassl: error: {error}", file=sys.stderr)
            return 2
        except RunFailed as error:
            print(f"kerassl: run failed: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("kerassl: interrupted", file=sys.stderr)
            return 130

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse with kerassl's error style: one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"kerassl: error: {message} (see {self.prog} --help)\n")
