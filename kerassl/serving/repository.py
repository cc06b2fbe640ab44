"""The SavedModel versions under a TF Serving base directory, loaded for serving and kept in
step with the directory, as TF Serving's file-system poller does.

`ModelRepository.refresh()` rescans `<base>/<name>/<version>/`: a new version is loaded once
it is complete (`saved_model.pb` and `variables/` present) and its files were unchanged
since the previous scan, so a version that is still being written is never served; a
version whose directory disappeared is unloaded. A version that failed to load is retried
when its files change (a copy that was still in progress), not at every scan.

The served state is an immutable snapshot replaced in one assignment: a request holds the
`ServableVersion` it started with and finishes on it while versions come and go.
"""

from __future__ import annotations

import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from kerassl.errors import UserError
from kerassl.serving import export as export_lib
from kerassl.serving.rest import RestError, parse_version


@dataclass(frozen=True)
class ServableVersion:
    """One version of a model: loaded (`loaded` set), failed to load (`error` set) or
    unloaded because its directory was removed (neither).

    `fingerprint` is `version_fingerprint` of the files the load was attempted on.
    """

    name: str
    version: int
    path: Path
    loaded: Any = None
    error: str = ""
    signature_defs: dict = field(default_factory=dict)
    kerassl: dict = field(default_factory=dict)
    fingerprint: tuple | None = None

    @property
    def available(self) -> bool:
        return self.loaded is not None

    @property
    def signatures(self):
        return self.loaded.signatures if self.loaded is not None else {}

    def status_json(self) -> dict:
        """TF Serving's `model_version_status` entry: AVAILABLE, or END (failed or unloaded)."""
        return {
            "version": str(self.version),
            "state": "AVAILABLE" if self.available else "END",
            "status": {
                "error_code": "UNKNOWN" if self.error else "OK",
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


def version_fingerprint(version_dir: Path) -> tuple | None:
    """`(relative path, size, mtime_ns)` of every file of a version directory, sorted.

    None while the version is incomplete (no `saved_model.pb` or no `variables/`) or when a
    file vanished while it was being listed.
    """
    if not (version_dir / "saved_model.pb").is_file() or not (version_dir / "variables").is_dir():
        return None
    entries = []
    try:
        for path in version_dir.rglob("*"):
            info = path.stat()
            if stat.S_ISREG(info.st_mode):
                relative = str(path.relative_to(version_dir))
                entries.append((relative, info.st_size, info.st_mtime_ns))
    except FileNotFoundError:
        return None
    return tuple(sorted(entries))


def log(message: str, error: bool = False) -> None:
    """Prints `kerassl serve: message` to stdout (stderr if `error`); a closed or full stream
    (the supervisor went away) loses the line but never stops serving."""
    try:
        print(f"kerassl serve: {message}", file=sys.stderr if error else sys.stdout, flush=True)
    except (OSError, ValueError):  # ValueError: the stream was closed
        pass


def check_base_dir(base_dir: str | Path) -> Path:
    """Returns `base_dir` as a Path if it is a directory, else UserError."""
    base_dir = Path(base_dir)
    if not base_dir.exists():
        raise UserError(f"model base directory {str(base_dir)!r} does not exist")
    if not base_dir.is_dir():
        raise UserError(f"model base directory {str(base_dir)!r} is not a directory")
    return base_dir


def load_version(name: str, version: int, path: Path, fingerprint: tuple) -> ServableVersion:
    """Loads one SavedModel version; a failure is recorded in `error` (and printed), not raised."""
    try:
        return ServableVersion(
            name,
            version,
            path,
            loaded=tf.saved_model.load(str(path)),
            signature_defs=read_signature_defs(path),
            kerassl=export_lib.read_export_metadata(path),
            fingerprint=fingerprint,
        )
    except Exception as error:  # noqa: BLE001  (a broken version is reported, not fatal)
        message = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
        log(f"cannot load {path}: {message}", error=True)
        return ServableVersion(name, version, path, error=message, fingerprint=fingerprint)


class ModelRepository:
    """Every model version under a TF Serving base directory; `refresh()` follows the disk.

    Args:
        base_dir: directory holding `<name>/<version>/saved_model.pb`. The versions present
            now are loaded at once; UserError if there are none.
    """

    def __init__(self, base_dir: str | Path):
        self.base_dir = check_base_dir(base_dir)
        self._models: dict[str, dict[int, ServableVersion]] = {}
        self._settling: dict[Path, tuple] = {}
        self._refresh_lock = threading.Lock()
        self.refresh(settle=False)
        if not self._models:
            raise UserError(
                f"no SavedModels under {str(self.base_dir)!r} (expected <name>/<version>/"
                "saved_model.pb); export one with python -m kerassl.export"
            )

    @property
    def models(self) -> dict[str, dict[int, ServableVersion]]:
        """Snapshot: model name → version → `ServableVersion`. Never mutated; `refresh`
        replaces it."""
        return self._models

    def _scan(self) -> dict[str, dict[int, Path]]:
        """Model name → version → directory, for numeric version dirs holding saved_model.pb."""
        found = {}
        for model_dir in sorted(self.base_dir.iterdir()):
            if model_dir.name.startswith(".") or not model_dir.is_dir():
                continue
            versions = export_lib.existing_versions(model_dir)
            if versions:
                found[model_dir.name] = {v: model_dir / str(v) for v in versions}
        return found

    def refresh(self, settle: bool = True) -> list[str]:
        """Rescans the base directory, loads new versions, unloads removed ones.

        Args:
            settle: load a new (or changed failed) version only if its files are the same as
                at the previous `refresh`; False loads every complete version now.

        Returns:
            One line per change (`model 'm' version 2 loaded`, `... unloaded`, `... failed`).
        """
        with self._refresh_lock:
            on_disk = self._scan()
            events: list[str] = []
            settling: dict[Path, tuple] = {}
            models = {}
            for name in sorted(set(self._models) | set(on_disk)):
                old = self._models.get(name, {})
                paths = on_disk.get(name, {})
                versions = {}
                for number in sorted(set(old) | set(paths)):
                    record = self._update(
                        name, number, old.get(number), paths.get(number), settle, settling
                    )
                    if record is not None:
                        versions[number] = record
                        event = _change(old.get(number), record)
                        if event:
                            events.append(f"model {name!r} version {number} {event}")
                if versions:
                    models[name] = versions
            self._models = models
            self._settling = settling
            return events

    def _update(self, name, number, record, path, settle, settling) -> ServableVersion | None:
        """The new record of one version, given its old record and its directory (or None)."""
        if path is None:
            if record is not None and record.available:
                return ServableVersion(name, number, record.path)
            return record
        if record is not None and record.available:
            return record
        fingerprint = version_fingerprint(path)
        if fingerprint is None or (record is not None and record.fingerprint == fingerprint):
            return record  # incomplete, or already failed on exactly these files
        if settle and self._settling.get(path) != fingerprint:
            settling[path] = fingerprint  # load at the next refresh if nothing changes
            return record
        return load_version(name, number, path, fingerprint)

    def poll_forever(self, interval: float, stop: threading.Event) -> None:
        """Calls `refresh()` every `interval` seconds until `stop` is set, printing changes.

        An unreadable base directory is reported once on stderr and the served versions are
        kept, as TF Serving does.
        """
        reported = ""
        while not stop.wait(interval):
            try:
                events = self.refresh()
            except OSError as error:
                message = f"cannot scan {self.base_dir}: {error}"
                if message != reported:
                    log(message, error=True)
                reported = message
                continue
            reported = ""
            for event in events:
                log(event)

    def versions(self, name: str) -> dict[int, ServableVersion]:
        """Every version record of `name` (loaded, failed or unloaded), else 404."""
        versions = self._models.get(name)
        if versions is None:
            raise RestError(404, f"Could not find any versions of model {name}")
        return versions

    def get(self, name: str, version: str | None = None) -> ServableVersion:
        """The loaded servable for `name` at `version` (default: highest loaded), else 404."""
        versions = self._models.get(name, {})
        if version is None:
            available = [v for v, servable in versions.items() if servable.available]
            if not available:
                raise RestError(404, f"Servable not found for request: Latest({name})")
            return versions[max(available)]
        number = parse_version(version)
        servable = versions.get(number)
        if servable is None or not servable.available:
            raise RestError(404, f"Servable not found for request: Specific({name}, {number})")
        return servable

    def listing(self) -> dict:
        """kerassl extension: every model with loaded versions, with its kerassl metadata."""
        models = []
        for name, versions in self._models.items():
            available = sorted(v for v, s in versions.items() if s.available)
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


def _change(old: ServableVersion | None, new: ServableVersion) -> str:
    """What happened to a version between two refreshes ("" when nothing did)."""
    if new is old:
        return ""
    if new.available:
        return "loaded"
    if new.error:
        return f"failed to load ({new.error})"
    return "unloaded"
