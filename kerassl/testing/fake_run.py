"""A small but real run directory, for tests of code that reads what `kerassl train` writes.

`make_run_dir` builds a tiny convolutional encoder and a softmax head in plain Keras (no
kerassl layers, so it does not depend on training code), gives every weight — including
BatchNormalization's moving statistics — seeded non-trivial values, and saves the files of
the run directory contract through its owner `kerassl.run_dir.RunDir`: `config.json`,
`encoder.keras`, `classifier.keras`, `metrics.json`, and with `baseline=True` a differently
shaped supervised `baseline.keras`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerassl import run_dir as files
from kerassl.data.registry import FASHION_MNIST_CLASSES
from kerassl.run_dir import RunDir


def build_fake_models(image_size: int = 16, channels: int = 1, num_classes: int = 3, seed: int = 0):
    """Builds a seeded `(encoder, classifier)` pair; the classifier is encoder + Dense softmax.

    Args:
        image_size: int, height and width of the [0, 1] float input images.
        channels: int, 1 or 3.
        num_classes: int, width of the softmax output.
        seed: int, seeds every initializer and the BatchNormalization statistics.

    Returns:
        `(encoder, classifier)` Keras functional models.
    """
    import keras
    from keras import layers

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2. Received: num_classes={num_classes}")

    def init(offset: int):
        return keras.initializers.GlorotUniform(seed=seed * 100 + offset)

    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, kernel_initializer=init(1))(inputs)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, kernel_initializer=init(2))(
        x
    )
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    encoder = keras.Model(inputs, x, name="encoder")

    _set_batch_norm_statistics(encoder, np.random.default_rng(seed))

    class_inputs = keras.Input((image_size, image_size, channels), name="images")
    probabilities = layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=init(3),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed * 100 + 4),
        name="probe",
    )(encoder(class_inputs))
    classifier = keras.Model(class_inputs, probabilities, name="classifier")
    return encoder, classifier


def _set_batch_norm_statistics(model, rng) -> None:
    """Gives every BatchNormalization of `model` seeded non-default weights and statistics.

    An export that lost the non-trainable variables then produces different outputs.
    """
    from keras import layers

    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            width = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, width).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.1, width).astype("float32"))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, width).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 2.0, width).astype("float32"))


def build_fake_baseline(
    image_size: int = 16, channels: int = 1, num_classes: int = 3, seed: int = 0
):
    """Builds a seeded supervised baseline shaped like kerassl's `cnn_deep` (no kerassl layers).

    conv-BN-ReLU-maxpool, flatten, Dense(24)-BN-ReLU-dropout, then the Dense softmax
    `predictions`: its last Dense layer's input (24 features) is what `embed` serves.

    Args:
        image_size: int, height and width of the [0, 1] float input images.
        channels: int, 1 or 3.
        num_classes: int, width of the softmax output.
        seed: int, seeds every initializer and the BatchNormalization statistics.

    Returns:
        A Keras functional model, [0, 1] images → class probabilities.
    """
    import keras
    from keras import layers

    def init(offset: int):
        return keras.initializers.GlorotUniform(seed=seed * 100 + 50 + offset)

    inputs = keras.Input((image_size, image_size, channels), name="images")
    x = layers.Conv2D(6, 3, padding="same", use_bias=False, kernel_initializer=init(1))(inputs)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(24, use_bias=False, kernel_initializer=init(2), name="dense0")(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", kernel_initializer=init(3), name="predictions"
    )(x)
    baseline = keras.Model(inputs, outputs, name="cnn_deep")
    _set_batch_norm_statistics(baseline, np.random.default_rng(seed + 50))
    return baseline


def make_run_dir(
    path: str | Path,
    image_size: int = 16,
    channels: int = 1,
    num_classes: int = 3,
    seed: int = 0,
    class_names: list[str] | None = None,
    baseline: bool = False,
) -> Path:
    """Writes a finished run directory with a small real (untrained) network.

    Args:
        path: directory to create (parents included); existing files are overwritten.
        image_size: int, side of the square input images.
        channels: int, 1 or 3.
        num_classes: int, number of classes.
        seed: int, seeds the weights and the synthetic test images.
        class_names: optional names; default Fashion-MNIST's names (then `class_<i>`).
        baseline: also write `baseline.keras` (`build_fake_baseline`) and its entry
            `"baseline"` in `metrics.json`, as `kerassl train` does unless `--baseline none`.

    Returns:
        The run directory as a `Path`.

    Example:
        >>> run_dir = make_run_dir(tmp_path / "run", image_size=16, num_classes=3)
        >>> sorted(p.name for p in run_dir.iterdir())[:2]
        ['classifier.keras', 'config.json']
    """
    import keras

    run_dir = RunDir(path)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    if class_names is None:
        class_names = [
            FASHION_MNIST_CLASSES[i] if i < len(FASHION_MNIST_CLASSES) else f"class_{i}"
            for i in range(num_classes)
        ]
    if len(class_names) != num_classes:
        raise ValueError(
            f"class_names must have num_classes={num_classes} names. "
            f"Received: {len(class_names)} names"
        )
    encoder, classifier = build_fake_models(image_size, channels, num_classes, seed)
    config = {
        "method": "fake",
        "dataset": "synthetic",
        "image_size": image_size,
        "channels": channels,
        "class_names": list(class_names),
        "seed": seed,
        "baseline": "cnn_deep" if baseline else "none",
        "versions": {"keras": keras.__version__},
    }
    run_dir.write_json(files.CONFIG, config)
    run_dir.save_model(files.ENCODER, encoder)
    run_dir.save_model(files.CLASSIFIER, classifier)
    baseline_model = None
    if baseline:
        baseline_model = build_fake_baseline(image_size, channels, num_classes, seed)
        run_dir.save_model(files.BASELINE, baseline_model)

    # metrics.json is written last, as `kerassl train` does; its numbers are the untrained
    # network's real accuracy on seeded random images with random labels.
    rng = np.random.default_rng(seed + 1)
    x_test = rng.random((16, image_size, image_size, channels), dtype=np.float32)
    y_test = rng.integers(0, num_classes, 16)
    predicted = np.argmax(classifier.predict(x_test, verbose=0), axis=-1)
    metrics = {
        "note": "kerassl.testing.fake_run fixture: untrained network on random images",
        "test_accuracy": float(np.mean(predicted == y_test)),
        "num_test": int(len(y_test)),
    }
    if baseline_model is not None:
        predicted = np.argmax(baseline_model.predict(x_test, verbose=0), axis=-1)
        metrics["baseline"] = {
            "model": "cnn_deep",
            "top1": float(np.mean(predicted == y_test)),
            "epochs_run": 0,
            "num_labeled": 0,
        }
    run_dir.write_json(files.METRICS, metrics)
    return run_dir.path


def make_export_dir(path: str | Path, image_size: int = 16, num_classes: int = 10) -> Path:
    """Exports fake runs for serving tests: `ssl` (versions 1, 2) and `baseline` (version 1).

    Idempotent: a second call with the same `path` returns the existing export directory,
    so several test modules can share one export per session.

    Args:
        path: scratch directory; runs go to `path/runs`, exports to `path/export`.
        image_size: side of the models' grayscale input.
        num_classes: number of classes of every model.

    Returns:
        The TF Serving base directory (`path/export`).
    """
    from kerassl.serving.export import export_run

    path = Path(path)
    out_dir = path / "export"
    done = out_dir / ".complete"
    if done.is_file():
        return out_dir
    runs = {
        ("ssl", 1): 0,
        ("baseline", 1): 1,
        ("ssl", 2): 2,
    }
    for (name, version), seed in runs.items():
        run_dir = make_run_dir(
            path / "runs" / f"{name}-{version}",
            image_size=image_size,
            channels=1,
            num_classes=num_classes,
            seed=seed,
        )
        export_run(run_dir, name, out_dir, version=version)
    done.write_text("ok\n")
    return out_dir
