"""What a re-run in an existing benchmark directory may change: its recorded definition
(`Definition.record()`) against the new one.

Cells are keyed by row, protocol, label budget and seed, so rows and the axes (budgets,
seeds, protocols) may be added or left out; any other setting, or a row asked for again
with other settings, would change what a finished cell means and is refused — except the
options of a protocol no finished cell ran (`distill_*`, `consistency_*` of
`ProtocolOptions`), which cannot have. TensorFlow-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Recorded keys a re-run may change (cells are keyed by them; the others change results).
AXES = ("labels", "seeds", "protocols")
_ROW_TABLES = ("methods", "baselines")


def changes(recorded: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The differences between a benchmark directory's `record()` and a new one that would
    change a finished cell, e.g. `pretrain.epochs: 2 (it has 1)`: any setting but the
    axes, and a row asked for again with other settings. Rows, budgets, seeds and
    protocols may be added or left out."""
    found: list[str] = []
    for key, value in new.items():
        if key in AXES or key not in recorded:
            continue
        if key in _ROW_TABLES:
            for name, settings in value.items():
                if name in recorded[key]:
                    _diff(f"{key}.{name}", settings, recorded[key][name], found)
        elif key == "protocol_options":
            ran = set(recorded.get("protocols", ()))
            _diff(key, _of_protocols(value, ran), _of_protocols(recorded[key], ran), found)
        else:
            _diff(key, value, recorded[key], found)
    return found


def _of_protocols(options: Mapping[str, Any], protocols: set[str]) -> dict[str, Any]:
    """`options` without those of a protocol not in `protocols` (named `<protocol>_…`)."""
    from kerassl.evaluation.options import PROTOCOLS

    own = {name for name in PROTOCOLS if name not in protocols}
    return {k: v for k, v in options.items() if k.split("_", 1)[0] not in own}


_UNSET = "(not set)"


def _diff(where: str, new: Any, old: Any, found: list[str]) -> None:
    if isinstance(new, Mapping) and isinstance(old, Mapping):
        for key in dict.fromkeys([*new, *old]):
            _diff(f"{where}.{key}", new.get(key, _UNSET), old.get(key, _UNSET), found)
    elif new != old:
        found.append(f"{where}: {new} (it has {old})")


def merged_record(recorded: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The record to keep after a run: the new one, with the rows of earlier runs kept
    (their cells stay in the directory, and must keep meaning what they meant)."""
    merged = dict(new)
    for key in _ROW_TABLES:
        merged[key] = {**recorded.get(key, {}), **new[key]}
    for key in AXES:
        merged[key] = list(dict.fromkeys([*recorded.get(key, []), *new[key]]))
    return merged
