"""Export to TF Serving's layout, in-graph preprocessing, and verification without kerassl."""

from __future__ import annotations

import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kerassl import export as export_cli
from kerassl.errors import UserError
from kerassl.run_dir import open_run
from kerassl.serving import export as export_lib
from kerassl.serving.verify import sample_images, verify_export
from kerassl.testing.fake_run import make_run_dir


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array, mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("gray") / "run", image_size=16, channels=1)


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    return make_run_dir(
        tmp_path_factory.mktemp("rgb") / "run", image_size=12, channels=3, num_classes=7, seed=3
    )


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    return make_run_dir(run_dir, image_size=16, channels=1, seed=4, baseline=True)


@pytest.fixture(scope="module")
def gray_export(gray_run, tmp_path_factory):
    return export_lib.export_run(gray_run, "gray", tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def rgb_export(rgb_run, tmp_path_factory):
    return export_lib.export_run(rgb_run, "rgb", tmp_path_factory.mktemp("export"))


def keras_models(run_dir):
    return (
        keras.saving.load_model(run_dir / "classifier.keras"),
        keras.saving.load_model(run_dir / "encoder.keras"),
    )


# --- run dir checks and layout -----------------------------------------------------------


def test_refuses_unfinished_run_and_run_without_classifier_or_baseline(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", image_size=8)
    (run_dir / "metrics.json").unlink()
    with pytest.raises(UserError, match="metrics.json"):
        export_lib.export_run(run_dir, "m", tmp_path / "export")
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / "classifier.keras").unlink()
    with pytest.raises(UserError, match="classifier.keras"):
        export_lib.export_run(run_dir, "m", tmp_path / "export")
    with pytest.raises(UserError, match="does not exist"):
        open_run(tmp_path / "missing")
    # metrics.json names a baseline that an older kerassl trained but did not save.
    (run_dir / "metrics.json").write_text('{"baseline": {"model": "cnn", "top1": 0.5}}')
    with pytest.raises(UserError, match="did not save baseline.keras"):
        export_lib.export_run(run_dir, "m", tmp_path / "export", model="baseline")
    assert not (tmp_path / "export").exists()


def test_versions_increment_and_models_config_lists_every_model(gray_run, tmp_path):
    out = tmp_path / "export"
    first = export_lib.export_run(gray_run, "alpha", out)
    second = export_lib.export_run(gray_run, "alpha", out)
    explicit = export_lib.export_run(gray_run, "beta", out, version=7)
    assert (first.name, second.name, explicit.name) == ("1", "2", "7")
    for path in (first, second, explicit):
        assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert export_lib.existing_versions(out / "alpha") == [1, 2]
    assert not [p for p in (out / "alpha").iterdir() if p.name.startswith(".")]  # no staging
    config = (out / "models.config").read_text()
    assert config.count("config {") == 2
    assert 'name: "alpha"' in config and 'base_path: "/models/alpha"' in config
    assert 'name: "beta"' in config and "model_version_policy { all {} }" in config
    metadata = export_lib.read_export_metadata(explicit)
    assert metadata["version"] == 7 and metadata["class_names"][0] == "T-shirt/top"
    assert metadata["image_size"] == 16 and metadata["channels"] == 1
    with pytest.raises(UserError, match="already exists"):
        export_lib.export_run(gray_run, "beta", out, version=7)
    with pytest.raises(UserError, match="model name"):
        export_lib.export_run(gray_run, "bad/name", out)


# --- signatures compute what the Keras model computes ------------------------------------


def test_serving_default_on_png_matches_keras_and_top_k_is_consistent(gray_run, gray_export):
    classifier, encoder = keras_models(gray_run)
    images = sample_images(16, 1, count=6, seed=5)
    loaded = tf.saved_model.load(str(gray_export))
    outputs = loaded.signatures["serving_default"](
        image_bytes=tf.constant([png(image) for image in images])
    )
    expected = classifier(images.astype("float32") / 255.0).numpy()
    probabilities = outputs["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    classes = outputs["classes"].numpy()
    assert classes.shape == (6, 3) and classes.dtype == np.int32  # top-5 clamped to 3 classes
    np.testing.assert_array_equal(classes, np.argsort(-expected, axis=1, kind="stable"))
    names = np.array(json.loads((gray_run / "config.json").read_text())["class_names"])
    np.testing.assert_array_equal(outputs["class_names"].numpy().astype(str), names[classes])
    embeddings = loaded.signatures["embed"](
        image_bytes=tf.constant([png(image) for image in images])
    )["embeddings"]
    np.testing.assert_allclose(embeddings, encoder(images / 255.0), atol=1e-6)


def test_rgb_png_to_gray_model_uses_standard_luma_and_drops_alpha(gray_run, gray_export):
    classifier, _ = keras_models(gray_run)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)], -1)
    serve = tf.saved_model.load(str(gray_export)).signatures["serving_default"]
    from_rgb = serve(image_bytes=tf.constant([png(i) for i in rgb]))["probabilities"]
    from_rgba = serve(image_bytes=tf.constant([png(i, "RGBA") for i in rgba]))["probabilities"]
    gray = (rgb.astype(np.float32) @ np.float32([0.2989, 0.5870, 0.1140]))[..., None] / 255.0
    np.testing.assert_allclose(from_rgb, classifier(gray), atol=1e-5)
    np.testing.assert_allclose(from_rgba, from_rgb, atol=1e-7)


def test_gray_png_to_rgb_model_repeats_channel_and_resizes(rgb_run, rgb_export):
    classifier, _ = keras_models(rgb_run)
    gray = sample_images(12, 1, count=4, seed=1)
    loaded = tf.saved_model.load(str(rgb_export))
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant([png(i) for i in gray]))
    expected = classifier(np.repeat(gray, 3, axis=-1).astype(np.float32) / 255.0)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-6)
    assert outputs["classes"].shape == (4, 5)

    # Other sizes are centre-cropped to a square, resized (bilinear, antialiased when
    # shrinking) and rounded in the graph, as in training, bytes or tensors alike.
    big = np.random.default_rng(2).integers(0, 256, (3, 30, 21, 3), dtype=np.uint8)
    from_bytes = loaded.signatures["serving_default"](
        image_bytes=tf.constant([png(i) for i in big])
    )
    from_floats = loaded.signatures["predict_images"](images=tf.constant(big, tf.float32))
    from_uint8 = loaded.predict_images(tf.constant(big))
    square = big[:, 4:25].astype(np.float32)  # the centre 21 x 21 of 30 x 21
    resized = np.round(tf.image.resize(square, [12, 12], antialias=True)) / 255.0
    np.testing.assert_allclose(from_bytes["probabilities"], classifier(resized), atol=1e-5)
    stretched = tf.image.resize(big.astype(np.float32), [12, 12], antialias=True) / 255.0
    assert np.abs(from_bytes["probabilities"] - classifier(stretched)).max() > 1e-4
    np.testing.assert_allclose(from_floats["probabilities"], from_bytes["probabilities"], atol=1e-6)
    np.testing.assert_allclose(from_uint8["probabilities"], from_bytes["probabilities"], atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_non_square_pngs_are_served_the_pixels_they_were_trained_on(channels, tmp_path):
    """Lossless PNGs through `folder:` (the training path) and through the SavedModel."""
    from kerassl.data.pipeline import to_float
    from kerassl.data.registry import load_dataset

    size = 16
    rng = np.random.default_rng(channels)
    # (height, width): tall and wide, larger and smaller than 16, square at and off size.
    shapes = [(40, 23), (23, 40), (9, 14), (14, 9), (16, 30), (31, 31), (16, 16), (7, 19)]
    # Gray datasets get a gray + alpha file; RGB ones mix gray, RGB and RGBA files.
    bands = [1, 2] if channels == 1 else [1, 3, 4]
    root = tmp_path / "photos"
    files = []  # in the order of load_dataset's rows: train classes, then test classes
    for split in ("", "test"):
        for label in ("k0", "k1"):
            for i in range(2):
                height, width = shapes[len(files)]
                band = bands[len(files) % len(bands)]
                path = root / split / label / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png(rng.integers(0, 256, (height, width, band), np.uint8)))
                files.append(path)

    data = load_dataset(f"folder:{root}", image_size=size)
    assert data.image_shape == (size, size, channels)
    trained_on = np.concatenate([data.x_train, data.x_test])
    image_bytes = tf.constant([path.read_bytes() for path in files])
    served = export_lib.decode_images(image_bytes, size, channels).numpy()
    np.testing.assert_array_equal(served, to_float(trained_on))  # the very same pixels

    run_dir = make_run_dir(tmp_path / "run", image_size=size, channels=channels, num_classes=2)
    export = export_lib.export_run(run_dir, "photos", tmp_path / "export")
    serve = tf.saved_model.load(str(export)).signatures["serving_default"]
    probabilities = serve(image_bytes=image_bytes)["probabilities"].numpy()
    classifier, _ = keras_models(run_dir)
    expected = classifier(to_float(trained_on)).numpy()
    assert np.abs(probabilities - expected).max() <= 1e-5


def test_bytes_that_are_not_an_image_fail_inside_the_graph(gray_export):
    serve = tf.saved_model.load(str(gray_export)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image"):
        serve(image_bytes=tf.constant([b"not an image"]))


# --- verification in a fresh process without kerassl -------------------------------------


def test_verify_reloads_without_kerassl_and_matches_keras(gray_export):
    report = verify_export(gray_export, tolerance=1e-5)
    assert report.problems == []
    assert set(report.max_abs_diff) == {
        "serving_default/probabilities",
        "predict_images/probabilities",
        "embed/embeddings",
    }
    assert report.worst <= 1e-5
    assert report.mismatches and not any(report.mismatches.values())
    assert report.ok and "OK" in report.summary()


def test_verify_cli_fails_against_another_models_weights(gray_export, tmp_path, capsys):
    other = make_run_dir(tmp_path / "other", image_size=16, channels=1, seed=9)
    code = export_cli.main(["--verify", str(gray_export), "--run-dir", str(other)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in out and "serving_default/probabilities" in out


# --- the supervised baseline beside the SSL classifier ---------------------------------


def test_export_cli_baseline_verifies_against_baseline_keras(baseline_run, tmp_path, capsys):
    out = tmp_path / "export"
    argv = [str(baseline_run), "--out", str(out)]
    assert export_cli.main([*argv, "--name", "ssl"]) == 0
    assert export_cli.main([*argv, "--name", "cnn", "--model", "baseline"]) == 0
    capsys.readouterr()
    config = (out / "models.config").read_text()
    assert 'name: "ssl"' in config and 'name: "cnn"' in config

    ssl_meta = export_lib.read_export_metadata(out / "ssl" / "1")
    assert ssl_meta["model"] == "classifier" and ssl_meta["keras_file"] == "classifier.keras"
    assert ssl_meta["method"] == "fake" and "baseline" in ssl_meta["metrics"]
    metadata = export_lib.read_export_metadata(out / "cnn" / "1")
    assert metadata["model"] == "baseline" and metadata["keras_file"] == "baseline.keras"
    assert metadata["method"] == "supervised cnn_deep" and metadata["run_method"] == "fake"
    metrics = json.loads((baseline_run / "metrics.json").read_text())
    assert metadata["metrics"] == metrics["baseline"]

    # Reloaded in a fresh process without kerassl, compared with baseline.keras.
    report = verify_export(out / "cnn" / "1", tolerance=1e-5)
    assert report.problems == [] and report.model == "baseline"
    assert set(report.max_abs_diff) == {
        "serving_default/probabilities",
        "predict_images/probabilities",
        "embed/embeddings",
    }
    assert report.worst <= 1e-5 and report.ok
    assert "baseline.keras" in report.summary()
    assert export_cli.main(["--verify", str(out / "cnn" / "1")]) == 0
    assert "OK" in capsys.readouterr().out

    # The export is the baseline, not the classifier; embed is the last Dense layer's input.
    images = sample_images(16, 1, count=4, seed=6)
    baseline = keras.saving.load_model(baseline_run / "baseline.keras")
    classifier, _ = keras_models(baseline_run)
    loaded = tf.saved_model.load(str(out / "cnn" / "1"))
    encoded = tf.constant([png(image) for image in images])
    probabilities = loaded.signatures["serving_default"](image_bytes=encoded)["probabilities"]
    x = images.astype("float32") / 255.0
    np.testing.assert_allclose(probabilities, baseline(x), atol=1e-5)
    assert np.max(np.abs(probabilities - classifier(x))) > 1e-2
    embeddings = loaded.signatures["embed"](image_bytes=encoded)["embeddings"].numpy()
    features = keras.Model(baseline.input, baseline.get_layer("predictions").input)
    assert embeddings.shape == (4, 24)
    np.testing.assert_allclose(embeddings, features(x), atol=1e-5)


def test_verify_of_a_baseline_export_against_a_run_without_baseline_is_a_user_error(
    baseline_run, gray_run, tmp_path, capsys
):
    path = export_lib.export_run(baseline_run, "cnn", tmp_path / "export", model="baseline")
    assert export_cli.main(["--verify", str(path), "--run-dir", str(gray_run)]) == 2
    err = capsys.readouterr().err
    assert "has no baseline.keras" in err and err.count("\n") == 1


# --- CLI -------------------------------------------------------------------------------


def test_export_cli_writes_next_version(gray_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert export_cli.main([str(gray_run), "--name", "cli", "--out", str(out)]) == 0
    assert export_cli.main([str(gray_run), "--name", "cli", "--out", str(out), "--top-k", "2"]) == 0
    assert export_lib.existing_versions(out / "cli") == [1, 2]
    assert export_lib.read_export_metadata(out / "cli" / "2")["top_k"] == 2
    assert "--verify" in capsys.readouterr().out
    # Readable by a server running as another user (not the staging directory's 0700).
    assert (out / "cli" / "2").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{run}", "--out", "{tmp}"], "--name is required"),
        ([], "RUN_DIR is required"),
        (["{tmp}/nope", "--name", "m"], "does not exist"),
        (["{run}", "--name", "a b", "--out", "{tmp}"], "model name 'a b'"),
        (["{run}", "--name", "m", "--version", "0", "--out", "{tmp}"], "--version"),
        (["--verify", "{tmp}"], "not a SavedModel version directory"),
        (
            ["{run}", "--name", "m", "--model", "baseline", "--out", "{tmp}/export"],
            "has no baseline.keras: it was trained with --baseline none",
        ),
    ],
)
def test_export_cli_user_errors_are_one_line(argv, message, gray_run, tmp_path, capsys):
    argv = [a.format(run=gray_run, tmp=tmp_path) for a in argv]
    assert export_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kerassl: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "export").exists()
