"""Errors a user can act on, and the one place that turns them into exit code 2."""

from __future__ import annotations

import argparse
import functools
import sys


class UserError(Exception):
    """A mistake in what the user asked for (bad name, missing data, bad option).

    The CLI prints its message as one line on stderr and exits with code 2; no traceback.
    Bugs are any other exception and keep their traceback.
    """


def cli_entry(main):
    """Decorate a CLI ``main(argv=None) -> int`` so that `UserError` becomes one line + exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as error:
            print(f"kerassl: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("kerassl: interrupted", file=sys.stderr)
            return 130

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse with kerassl's error style: one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"kerassl: error: {message} (see {self.prog} --help)\n")
