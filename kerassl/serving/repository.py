"""The SavedModel versions under a TF Serving base directory, loaded for serving."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from kerassl.errors import UserError
from kerassl.serving import export as export_lib
from kerassl.serving.rest import RestError, parse_version


@dataclass
class ServableVersion:
    """One loaded SavedModel version."""

    name: str
    version: int
    path: Path
    loaded: Any = None
    error: str = ""
    signature_defs: dict = field(default_factory=dict)
    kerassl: dict = field(default_factory=dict)

    @property
    def signatures(self):
        return self.loaded.signatures if self.loaded is not None else {}

    def status_json(self) -> dict:
        available = self.loaded is not None
        return {
            "version": str(self.version),
            "state": "AVAILABLE" if available else "END",
            "status": {
                "error_code": "OK" if available else "UNKNOWN",
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


class ModelRepository:
    """All model versions under a TF Serving base directory, loaded once.

    Args:
        base_dir: directory holding `<name>/<version>/saved_model.pb`.
    """

    def __init__(self, base_dir: str | Path):
        self.base_dir = Path(base_dir)
        if not self.base_dir.is_dir():
            raise UserError(f"model base directory {str(self.base_dir)!r} does not exist")
        self.models: dict[str, dict[int, ServableVersion]] = {}
        for model_dir in sorted(self.base_dir.iterdir()):
            versions = export_lib.existing_versions(model_dir) if model_dir.is_dir() else []
            if versions:
                self.models[model_dir.name] = {v: self._load(model_dir, v) for v in versions}
        if not self.models:
            raise UserError(
                f"no SavedModels under {str(self.base_dir)!r} (expected <name>/<version>/"
                "saved_model.pb); export one with python -m kerassl.export"
            )

    @staticmethod
    def _load(model_dir: Path, version: int) -> ServableVersion:
        path = model_dir / str(version)
        servable = ServableVersion(model_dir.name, version, path)
        try:
            servable.loaded = tf.saved_model.load(str(path))
            servable.signature_defs = read_signature_defs(path)
            servable.kerassl = export_lib.read_export_metadata(path)
        except Exception as error:  # noqa: BLE001  (a broken version is reported, not fatal)
            servable.loaded = None
            servable.error = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            print(f"kerassl serve: cannot load {path}: {servable.error}", file=sys.stderr)
        return servable

    def versions(self, name: str) -> dict[int, ServableVersion]:
        if name not in self.models:
            raise RestError(404, f"Could not find any versions of model {name}")
        return self.models[name]

    def get(self, name: str, version: str | None = None) -> ServableVersion:
        """The servable for `name` at `version` (default: highest loaded), else 404."""
        versions = self.models.get(name, {})
        if version is None:
            available = [v for v, servable in versions.items() if servable.loaded is not None]
            if not available:
                raise RestError(404, f"Servable not found for request: Latest({name})")
            return versions[max(available)]
        number = parse_version(version)
        servable = versions.get(number)
        if servable is None or servable.loaded is None:
            raise RestError(404, f"Servable not found for request: Specific({name}, {number})")
        return servable

    def listing(self) -> dict:
        """kerassl extension: every model with its versions and kerassl metadata."""
        models = []
        for name, versions in self.models.items():
            available = sorted(v for v, s in versions.items() if s.loaded is not None)
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
