"""`--config FILE`: a command's settings from a YAML or JSON file, under the command line.

Every kerassl command takes `--config FILE`: a mapping of the command's settings (for
`train`, the `TrainConfig` fields; for `export` and `serve`, their options' argparse
destinations such as `port` or `top_k`; for `tune`, a search definition's keys), or a
run's config.json, whose "settings" it reads. Options given explicitly on the command
line win over the file. `read_settings` reads and checks a file; `given_options` tells the
options given on a command line from those left at their defaults; `parse_with_settings`
is the two together for a command whose settings are its options.

TensorFlow-free: a bad file is reported before TensorFlow loads.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from kerassl.errors import UserError

CONFIG_HELP = (
    "take the options from a YAML or JSON file (keys: the options' names with underscores, "
    "e.g. {example}); options given on the command line win"
)


def read_settings(
    path: str,
    known: Sequence[str],
    flag: str = "--config",
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings of a YAML (or JSON) file: a mapping of settings, or a run's
    config.json (its "settings"; the resolved and derived keys beside them are ignored).

    JSON is tried first (YAML 1.1 reads 1e-06 as a string); a YAML string whose default
    in `defaults` is a float is read as a number when it is one (`lr: 3e-4`, `read_floats`).

    Args:
        path: the file.
        known: the setting names the file may hold.
        flag: how the file was given, for messages.
        defaults: setting name → default value (its type decides the coercion).

    Raises:
        UserError: unreadable file, not a mapping, or an unknown setting (with the
            closest known name).
    """
    import yaml

    try:
        with open(path) as file:
            text = file.read()
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            values = yaml.safe_load(text)
    except OSError as error:
        raise UserError(f"cannot read {flag} {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise UserError(f"cannot read {flag} {path}: {error}".splitlines()[0]) from None
    if isinstance(values, Mapping) and "settings" in values:
        values = values["settings"]
    if not isinstance(values, Mapping):
        raise UserError(f"{flag} {path} must hold a mapping of settings")
    values = dict(values)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"unknown setting {key!r} in {path}{hint}")
    return values | read_floats(values, defaults or {})


def read_floats(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, float]:
    """The values of `values` that are strings where `defaults` has a float, read as
    numbers when they are ones (YAML 1.1 reads 1e-6, without a dot, as a string); the
    others are left to the command's own check, which names the setting."""
    floats = {}
    for name, default in defaults.items():
        if isinstance(default, float) and isinstance(values.get(name), str):
            try:
                floats[name] = float(values[name])
            except ValueError:
                pass
    return floats


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options (and positionals) given explicitly in `argv`, as
    opposed to left at their defaults. `parser` is left as it was."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(list(argv))
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))


def parse_with_settings(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    exclude: Sequence[str] = ("config",),
) -> argparse.Namespace:
    """`parser.parse_args(argv)`, with the options not given in `argv` taken from the
    `--config FILE` it names (when it does). The file's keys are the parser's
    destinations but `exclude`; each value is checked as its option's would be (type,
    choices; true or false for a flag); null leaves the default.

    Raises:
        UserError: a bad command line, file or value (one line).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    actions = {
        action.dest: action
        for action in parser._actions
        if action.dest not in exclude and action.default is not argparse.SUPPRESS
    }
    values = read_settings(args.config, list(actions))
    given = given_options(parser, argv)
    for name, value in values.items():
        if name not in given and value is not None:
            setattr(args, name, _option_value(parser, actions[name], value, args.config))
    return args


def _option_value(parser, action: argparse.Action, value: Any, path: str) -> Any:
    """A file's value for `action`, converted and checked as argparse does its text."""
    where = f"{action.dest!r} in {path}"
    if action.nargs == 0:  # a flag: --verbose, --overwrite
        if not isinstance(value, bool):
            raise UserError(f"setting {where} must be true or false; got {value!r}")
        return action.const if value else action.default
    if isinstance(value, (bool, list, dict)):
        raise UserError(f"setting {where} must be a single value; got {value!r}")
    try:
        converted = parser._get_value(action, str(value))
        parser._check_value(action, converted)
    except argparse.ArgumentError as error:
        raise UserError(f"setting {where}: {error.message}") from None
    return converted
