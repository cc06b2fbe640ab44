"""Export a finished run as a SavedModel in TensorFlow Serving's layout.

TF Serving reads `<base>/<model_name>/<version>/saved_model.pb` (+ `variables/`) and, with
`--model_config_file`, a `models.config` listing every model. `export_run` writes one
version of one model there and rewrites `<base>/models.config`. The model is one of a run's
classifiers (`MODEL_FILES`): the SSL `classifier.keras` (encoder + linear probe, the
default) or the supervised `baseline.keras` trained on the same labels.

The SavedModel is self-contained: decoding, channel conversion, resizing and scaling are
TensorFlow ops inside its graph, so it loads with `tf.saved_model.load` alone (no kerassl
import, no custom objects) and TF Serving can run it. Signatures:

- `serving_default`: `image_bytes` (string [N]: PNG/JPEG/GIF/BMP bytes; `{"b64": ...}` over
  REST) → `probabilities` (float32 [N, C]), `classes` (int32 [N, k], top-k class ids, most
  probable first), `class_names` (string [N, k]).
- `predict_images`: `images` (float32 [N, H, W, 1..4], pixel values in [0, 255], i.e. a
  uint8 image as float; any size) → the same three outputs. From Python, the loaded
  object's `predict_images` attribute also accepts a uint8 tensor.
- `embed`: `image_bytes` → `embeddings` (float32 [N, D]) from the run's encoder; for the
  baseline (and a run without `encoder.keras`), the input of the model's last Dense layer.

kerassl-specific metadata (which model, class names, image size, channels, run dir, the
exported model's metrics) goes to `assets.extra/kerassl.json`, a directory TF Serving ignores.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from kerassl.data.preprocess import preprocess_images, to_unit_float
from kerassl.errors import UserError
from kerassl.run_dir import MODEL_FILES, Run, open_run

SERVING_DEFAULT = "serving_default"
PREDICT_IMAGES = "predict_images"
EMBED = "embed"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
METADATA_FILE = Path("assets.extra") / "kerassl.json"
MODELS_CONFIG = "models.config"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def load_models(run: Run, model: str = "classifier"):
    """`(classifier, encoder)` of a run; `encoder` is None for the baseline (it has no
    separate encoder) and for a run without `encoder.keras`."""
    classifier = run.load(model)
    encoder = run.load("encoder") if model == "classifier" and run.has("encoder") else None
    return classifier, encoder


def _embedding_model(classifier, encoder):
    """The model behind `embed`: the run's encoder, sharing the classifier's copy if equal.

    When the classifier contains a sub-model with exactly the encoder's weights (a linear
    probe on a frozen encoder), that sub-model is used so the SavedModel stores the encoder
    once. Without an encoder (a baseline, or a run without `encoder.keras`), the input of
    the classifier's last Dense layer is used (of its last layer if it has no Dense layer).
    """
    import keras

    if encoder is None:
        dense = [layer for layer in classifier.layers if isinstance(layer, keras.layers.Dense)]
        last = dense[-1] if dense else classifier.layers[-1]
        return keras.Model(classifier.input, last.input, name="embedder")
    reference = encoder.get_weights()
    for layer in classifier.layers:
        if not isinstance(layer, keras.Model) or len(layer.weights) != len(reference):
            continue
        weights = layer.get_weights()
        if all(
            a.shape == b.shape and np.array_equal(a, b)
            for a, b in zip(weights, reference, strict=True)
        ):
            return layer
    return encoder


def to_model_input(images: tf.Tensor, image_size: int, channels: int) -> tf.Tensor:
    """Pixel values in [0, 255] (any size, 1..4 channels) → float32 [..., S, S, channels] in [0, 1].

    The pixels the model was trained on: `kerassl.data.preprocess.preprocess_images` (centre
    square crop, bilinear resize, channel conversion, rounded to uint8) divided by 255, so
    images already at `image_size` reach the model bit-identical to `uint8 / 255`.
    """
    return to_unit_float(preprocess_images(images, image_size, channels))


def decode_images(image_bytes: tf.Tensor, image_size: int, channels: int) -> tf.Tensor:
    """Encoded images (string [N]) → float32 [N, image_size, image_size, channels] in [0, 1]."""

    def decode_one(data):
        image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
        return to_model_input(image, image_size, channels)

    return tf.map_fn(
        decode_one,
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, channels], tf.float32),
    )


class ServingModule(tf.Module):
    """The exported object: the run's Keras models plus in-graph preprocessing.

    Args:
        classifier: Keras model, [0, 1] images → softmax probabilities [N, C].
        embedder: Keras model, [0, 1] images → embeddings [N, D].
        image_size: int, side of the square model input.
        channels: int, 1 or 3.
        class_names: sequence of C class names.
        top_k: int, number of class ids/names returned per image (clamped to C).
    """

    def __init__(self, classifier, embedder, image_size, channels, class_names, top_k=5):
        super().__init__(name="kerassl_serving")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1. Received: top_k={top_k}")
        self.classifier = classifier
        self.embedder = embedder
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.top_k = min(int(top_k), len(class_names))
        self._class_names = list(class_names)
        bytes_spec = tf.TensorSpec([None], tf.string, name=BYTES_INPUT)
        self.serving_default = tf.function(self._serve_bytes, input_signature=[bytes_spec])
        self.embed = tf.function(self._embed_bytes, input_signature=[bytes_spec])
        self.predict_images = tf.function(self._serve_images)
        self.predict_images_float = self.predict_images.get_concrete_function(
            tf.TensorSpec([None, None, None, None], tf.float32, name=IMAGES_INPUT)
        )
        self.predict_images.get_concrete_function(
            tf.TensorSpec([None, None, None, None], tf.uint8, name=IMAGES_INPUT)
        )

    def _classify(self, images):
        probabilities = tf.cast(self.classifier(images, training=False), tf.float32)
        classes = tf.math.top_k(probabilities, k=self.top_k).indices
        names = tf.gather(tf.constant(self._class_names), classes)
        return {"probabilities": probabilities, "classes": classes, "class_names": names}

    def _serve_bytes(self, image_bytes):
        return self._classify(decode_images(image_bytes, self.image_size, self.channels))

    def _serve_images(self, images):
        return self._classify(to_model_input(images, self.image_size, self.channels))

    def _embed_bytes(self, image_bytes):
        images = decode_images(image_bytes, self.image_size, self.channels)
        return {"embeddings": tf.cast(self.embedder(images, training=False), tf.float32)}

    def signatures(self) -> dict:
        """The SavedModel signatures, keyed by signature name."""
        return {
            SERVING_DEFAULT: self.serving_default.get_concrete_function(),
            PREDICT_IMAGES: self.predict_images_float,
            EMBED: self.embed.get_concrete_function(),
        }


def check_model_name(name: str) -> str:
    """Returns `name` if it is usable in a URL path and a directory name, else UserError."""
    if not _NAME_PATTERN.match(name or ""):
        raise UserError(
            f"model name {name!r} is not accepted: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def existing_versions(model_dir: str | Path) -> list[int]:
    """Version numbers of the SavedModels under `model_dir` (numeric subdirectories)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if child.name.isdigit() and (child / "saved_model.pb").is_file()
    )


def _next_free_version(model_dir: Path) -> int:
    numbers = [int(child.name) for child in model_dir.iterdir() if child.name.isdigit()]
    return max(numbers, default=0) + 1


def write_models_config(out_dir: str | Path, base_path: str = "/models") -> Path:
    """Rewrites `<out_dir>/models.config` (TF Serving's ModelServerConfig text format).

    Every `<out_dir>/<name>/` holding at least one numeric version is listed, with
    `base_path: "<base_path>/<name>"` (where the directory is mounted inside the serving
    container) and a policy serving all versions, as `kerassl serve` does.
    """
    out_dir = Path(out_dir)
    names = sorted(
        child.name
        for child in out_dir.iterdir()
        if child.is_dir() and _NAME_PATTERN.match(child.name) and existing_versions(child)
    )
    lines = ["model_config_list {"]
    for name in names:
        lines += [
            "  config {",
            f'    name: "{name}"',
            f'    base_path: "{base_path.rstrip("/")}/{name}"',
            '    model_platform: "tensorflow"',
            "    model_version_policy { all {} }",
            "  }",
        ]
    lines.append("}")
    path = out_dir / MODELS_CONFIG
    temporary = path.with_name(f".{MODELS_CONFIG}.{os.getpid()}")
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, path)
    return path


def export_run(
    run_dir: str | Path,
    name: str,
    out_dir: str | Path,
    version: int | None = None,
    top_k: int = 5,
    config_base_path: str = "/models",
    model: str = "final",
) -> Path:
    """Exports one of a run's classifiers to `<out_dir>/<name>/<version>/`.

    The SavedModel is written to a hidden temporary directory and renamed into place, so
    a server polling `out_dir` never sees half a model. `assets.extra/kerassl.json` records
    `model`; for the baseline, its `method` is `"supervised <architecture>"` and its
    `metrics` are the baseline's entry of `metrics.json`.

    Args:
        run_dir: a finished run directory.
        name: model name (the `{name}` of `/v1/models/{name}`).
        out_dir: TF Serving base directory; created if needed.
        version: version number; default one more than the highest existing version.
        top_k: class ids/names returned per image.
        config_base_path: where `out_dir` is mounted for TF Serving (for models.config).
        model: `"final"` (the run's final classifier, `Run.final_model`), or a
            `MODEL_FILES` name: `"classifier"` (the SSL encoder + linear probe),
            `"finetuned"`, `"student"` or `"baseline"` (the supervised baseline).

    Returns:
        The version directory written.
    """
    run = open_run(run_dir, finished=True)
    if model == "final":
        model = run.final_model()
    if model not in MODEL_FILES:
        raise UserError(f"--model must be final or one of {', '.join(MODEL_FILES)}, got {model!r}")
    run.require(model)
    check_model_name(name)
    if version is not None and version < 1:
        raise UserError(f"--version must be a positive integer, got {version}")
    if top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    model_dir = Path(out_dir) / name
    if version is not None and (model_dir / str(version)).exists():
        raise UserError(
            f"{model_dir / str(version)} already exists; pick another --version or omit it "
            "to use the next free number"
        )
    model_dir.mkdir(parents=True, exist_ok=True)

    classifier, encoder = load_models(run, model)
    module = ServingModule(
        classifier,
        _embedding_model(classifier, encoder),
        run.image_size,
        run.channels,
        run.class_names,
        top_k=top_k,
    )
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    # mkdtemp makes it 0700, a mode the rename keeps: a TF Serving (or `kerassl serve`)
    # running as another user could not read the version.
    staging.chmod(0o755)
    try:
        tf.saved_model.save(module, str(staging), signatures=module.signatures())
        metadata = {
            "name": name,
            "run_dir": str(run.path),
            "model": model,
            "keras_file": MODEL_FILES[model],
            **_model_description(run, model),
            "dataset": run.dataset,
            "image_size": run.image_size,
            "channels": run.channels,
            "class_names": list(run.class_names),
            "top_k": module.top_k,
            "signatures": [SERVING_DEFAULT, PREDICT_IMAGES, EMBED],
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "tensorflow_version": tf.__version__,
        }
        (staging / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
        while True:
            number = version if version is not None else _next_free_version(model_dir)
            metadata["version"] = number
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
            try:
                os.rename(staging, model_dir / str(number))
                break
            except OSError:
                if version is not None or not (model_dir / str(number)).exists():
                    raise
                # Another export took this number meanwhile: take the next one.
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    write_models_config(out_dir, base_path=config_base_path)
    return model_dir / str(number)


def _model_description(run: Run, model: str) -> dict:
    """`method` and `metrics` of the exported model, for `assets.extra/kerassl.json`.

    The classifier keeps the run's method and its whole `metrics.json`; the baseline gets
    `"supervised <architecture>"`, the run's method as `run_method`, and the `"baseline"`
    entry of `metrics.json`.
    """
    if model == "classifier":
        return {"method": run.method, "metrics": run.metrics}
    from kerassl.semisupervised import DESCRIPTIONS, STAGE_MODELS

    stages = {model: stage for stage, model in STAGE_MODELS.items()}
    if model in stages:
        stage, words = stages[model], DESCRIPTIONS[model]
        metrics = run.metrics.get(stage) if isinstance(run.metrics, dict) else None
        return {"method": f"{run.method} {words}", "run_method": run.method, "metrics": metrics}
    baseline = run.metrics.get("baseline") if isinstance(run.metrics, dict) else None
    architecture = baseline.get("model") if isinstance(baseline, dict) else None
    return {
        "method": f"supervised {architecture or run.config.get('baseline', 'unknown')}",
        "run_method": run.method,
        "metrics": baseline,
    }


def read_export_metadata(version_dir: str | Path) -> dict:
    """Reads `assets.extra/kerassl.json` of an exported version ({} when absent)."""
    path = Path(version_dir) / METADATA_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())
