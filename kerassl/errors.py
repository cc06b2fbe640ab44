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
        except KeyboardInterrupt as error:
            detail = f" ({error})" if str(error) else ""
            print(f"kerassl: interrupted{detail}", file=sys.stderr)
            return 130

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are `UserError`s: one line on stderr, exit code 2, also for
    a `main(argv)` called in-process. No abbreviated options: `--epoch 3` is an error, not
    `--epochs 3` (nor, one day, a new `--epoch-something`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")
