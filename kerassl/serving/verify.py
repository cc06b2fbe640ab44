"""Verify an exported SavedModel against the run's Keras models, in a fresh process.

`verify_export` writes sample images (raw uint8 and PNG-encoded), runs
`standalone_check.py` with `python -I` (repository off `sys.path`, `kerassl` imports
refused) to load the SavedModel with TensorFlow alone and run every signature, and compares
those outputs with the Keras model that was exported — the run's `classifier.keras` /
`encoder.keras`, or `baseline.keras` when `assets.extra/kerassl.json` records
`"model": "baseline"` — on the same images.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerassl.errors import UserError
from kerassl.run_dir import MODEL_FILES, open_run
from kerassl.serving import export as export_lib

# signature → (input name → dtype, output name → dtype)
EXPECTED_SIGNATURES = {
    export_lib.SERVING_DEFAULT: (
        {export_lib.BYTES_INPUT: "string"},
        {"probabilities": "float32", "classes": "int32", "class_names": "string"},
    ),
    export_lib.PREDICT_IMAGES: (
        {export_lib.IMAGES_INPUT: "float32"},
        {"probabilities": "float32", "classes": "int32", "class_names": "string"},
    ),
    export_lib.EMBED: ({export_lib.BYTES_INPUT: "string"}, {"embeddings": "float32"}),
}

STANDALONE_SCRIPT = Path(__file__).with_name("standalone_check.py")


@dataclass
class VerifyReport:
    """Outcome of `verify_export`.

    Attributes:
        export_dir: the SavedModel version directory checked.
        run_dir: the run whose Keras models were the reference.
        model: which of the run's models was the reference (`"classifier"`, `"baseline"`).
        num_images: sample images compared.
        tolerance: largest accepted absolute difference.
        max_abs_diff: per `<signature>/<output>`, the largest absolute difference.
        mismatches: per `<signature>/<output>`, entries of integer/string outputs that differ.
        problems: signature or loading problems (missing signature, wrong dtype, …).
    """

    export_dir: Path
    run_dir: Path
    num_images: int
    tolerance: float
    model: str = "classifier"
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    mismatches: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        """The largest absolute difference over all float outputs (inf if none compared)."""
        return max(self.max_abs_diff.values(), default=float("inf"))

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and bool(self.max_abs_diff)
            and self.worst <= self.tolerance
            and not any(self.mismatches.values())
        )

    def summary(self) -> str:
        lines = [
            f"verify {self.export_dir} against {self.run_dir / MODEL_FILES[self.model]}"
            f" on {self.num_images} images "
            "(loaded in a fresh process without kerassl)"
        ]
        lines += [f"  {key}: max abs diff {value:.3g}" for key, value in self.max_abs_diff.items()]
        lines += [f"  {key}: {value} mismatching entries" for key, value in self.mismatches.items()]
        lines += [f"  problem: {problem}" for problem in self.problems]
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: max abs diff {self.worst:.3g} (tolerance {self.tolerance:g})")
        return "\n".join(lines)


def sample_images(image_size: int, channels: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """Seeded uint8 test images [count, S, S, channels]: noise, gradients, blocks, extremes."""
    rng = np.random.default_rng(seed)
    shape = (image_size, image_size, channels)
    ramp = np.linspace(0, 255, image_size)
    images = []
    for index in range(count):
        kind = index % 4
        if kind == 0:
            image = rng.integers(0, 256, shape)
        elif kind == 1:
            image = np.broadcast_to((ramp[:, None, None] + ramp[None, :, None]) / 2, shape)
            image = image * rng.uniform(0.3, 1.0, channels)
        elif kind == 2:
            image = np.zeros(shape)
            top, left = rng.integers(0, image_size // 2, 2)
            image[top : top + image_size // 2, left : left + image_size // 2] = rng.integers(
                64, 256, channels
            )
        else:
            image = np.full(shape, 255 if index % 8 == 3 else 0)
        images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return np.stack(images)


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_signatures(found: dict) -> list[str]:
    problems = []
    for name, (inputs, outputs) in EXPECTED_SIGNATURES.items():
        if name not in found:
            problems.append(f"signature {name!r} missing (found {sorted(found)})")
            continue
        for kind, expected in (("inputs", inputs), ("outputs", outputs)):
            actual = {key: value[0] for key, value in found[name][kind].items()}
            if actual != expected:
                problems.append(f"{name} {kind} are {actual}, expected {expected}")
    return problems


def _keras_reference(
    run_dir: Path, images: np.ndarray, top_k: int, class_names, model: str = "classifier"
) -> dict:
    classifier, encoder = export_lib.load_models(open_run(run_dir), model)
    x = images.astype(np.float32) / np.float32(255.0)
    probabilities = np.asarray(classifier(x, training=False), dtype=np.float32)
    embedder = encoder if encoder is not None else export_lib._embedding_model(classifier, None)
    embeddings = np.asarray(embedder(x, training=False), dtype=np.float32)
    classes = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k].astype(np.int32)
    names = np.asarray(class_names, dtype=str)[classes]
    reference = {"embed/embeddings": embeddings}
    for signature in (export_lib.SERVING_DEFAULT, export_lib.PREDICT_IMAGES):
        reference[f"{signature}/probabilities"] = probabilities
        reference[f"{signature}/classes"] = classes
        reference[f"{signature}/class_names"] = names
    return reference


def verify_export(
    export_dir: str | Path,
    run_dir: str | Path | None = None,
    tolerance: float = 1e-5,
    num_images: int = 8,
    timeout: float = 600.0,
) -> VerifyReport:
    """Loads an export in a fresh kerassl-free process and compares it with the run's models.

    Args:
        export_dir: `<base>/<name>/<version>` directory written by `export_run`.
        run_dir: the run to compare with; default the one recorded at export time. Its
            Keras file of the exported model (`"model"` in `kerassl.json`, default the
            classifier) is the reference.
        tolerance: largest accepted absolute difference of probabilities/embeddings.
        num_images: number of sample images.
        timeout: seconds allowed for the fresh process.

    Returns:
        A `VerifyReport`; `report.ok` tells whether the export passed.
    """
    export_dir = Path(export_dir)
    if not (export_dir / "saved_model.pb").is_file():
        raise UserError(
            f"{str(export_dir)!r} is not a SavedModel version directory "
            "(expected <base>/<name>/<version>/saved_model.pb)"
        )
    if tolerance < 0:
        raise UserError(f"--tolerance must be >= 0, got {tolerance}")
    metadata = export_lib.read_export_metadata(export_dir)
    if run_dir is None:
        if "run_dir" not in metadata:
            raise UserError(f"{export_dir} records no run directory; pass --run-dir")
        run_dir = metadata["run_dir"]
    model = metadata.get("model", "classifier")
    if model not in MODEL_FILES:
        raise UserError(f"{export_dir} records an unknown model {model!r}")
    run = open_run(run_dir, finished=True)
    run.require(model)
    top_k = int(metadata.get("top_k", min(5, len(run.class_names))))
    report = VerifyReport(export_dir, run.path, num_images, tolerance, model)
    images = sample_images(run.image_size, run.channels, num_images)

    with tempfile.TemporaryDirectory(prefix="kerassl-verify-") as scratch:
        scratch = Path(scratch)
        np.save(scratch / "images.npy", images)
        for index, image in enumerate(images):
            (scratch / f"{index:03d}.png").write_bytes(_png_bytes(image))
        output_path = scratch / "outputs.npz"
        command = [
            sys.executable,
            "-I",
            str(STANDALONE_SCRIPT),
            str(export_dir.resolve()),
            str(scratch),
            str(output_path),
        ]
        env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": str(scratch)}
        completed = subprocess.run(
            command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout
        )
        if completed.returncode != 0:
            tail = (completed.stderr.strip().splitlines() or ["(no output)"])[-1]
            report.problems.append(f"loading without kerassl failed: {tail}")
            return report
        described = json.loads(completed.stdout.strip().splitlines()[-1])
        if described["kerassl_importable"] or described["kerassl_modules_loaded"]:
            report.problems.append("the fresh process could import kerassl; isolation failed")
        report.problems += _check_signatures(described["signatures"])
        with np.load(output_path) as data:
            exported = {key: data[key] for key in data.files}

    reference = _keras_reference(run.path, images, top_k, run.class_names, model)
    for key, expected in reference.items():
        if key not in exported:
            continue  # a missing signature is already a problem
        actual = exported[key]
        if actual.shape != expected.shape:
            report.problems.append(f"{key} has shape {actual.shape}, expected {expected.shape}")
        elif expected.dtype.kind == "f":
            report.max_abs_diff[key] = float(np.max(np.abs(actual - expected), initial=0.0))
        else:
            report.mismatches[key] = int(np.sum(actual != expected))
    return report
