"""KerasHub presets as encoders: tiny random backbones saved with `save_to_preset`."""

import importlib
import json
import sys

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from kerassl.errors import UserError
from kerassl.evaluation import extract_features, hub
from kerassl.testing.synthetic import tiny_images

# ImageNet mean and std in a DINOv2-like converter: [0, 255] pixels → (x / 255 - mean) / std.
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    """A tiny DINOv2 preset (32 px, patches of 8) with its image converter."""
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=8,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(32, 32, 3),
        position_embedding_shape=(32, 32, 3),
    )
    converter = keras_hub.layers.DINOV2ImageConverter(
        image_size=(32, 32), scale=list(1 / (255 * STD)), offset=list(-MEAN / STD)
    )
    preset = tmp_path_factory.mktemp("hub") / "dinov2_tiny"
    backbone.save_to_preset(str(preset))
    converter.save_to_preset(str(preset))
    return preset, backbone


def tiny_resnet():
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, 3),
    )


def test_is_hub_source(dinov2, tmp_path, monkeypatch):
    preset, _ = dinov2
    run = tmp_path / "run"  # a kerassl run directory: config.json beside split.json
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "simclr"}))
    (run / "split.json").write_text("{}")
    encoder_file = tmp_path / "encoder.keras"
    encoder_file.write_bytes(b"PK")
    assert hub.is_hub_source(str(preset))
    assert hub.is_hub_source("dinov2_small")  # built-in, nothing downloaded
    for handle in (
        "kaggle://keras/dinov2/keras/dinov2_small",
        "hf://org/model",
        "modelscope://o/m",
    ):
        assert hub.is_hub_source(handle)

    def no_import():
        raise AssertionError("keras_hub imported")

    monkeypatch.setattr(hub, "_import_keras_hub_or_none", no_import)
    for source in (run, encoder_file, tmp_path / "missing.keras", tmp_path, tmp_path / "nope"):
        assert not hub.is_hub_source(str(source)), source


def test_module_without_keras_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` fails
    importlib.reload(hub)
    assert not hub.is_hub_source("dinov2_small")
    with pytest.raises(UserError, match=r"needs keras-hub: pip install 'kerassl\[hub\]'"):
        hub.hub_encoder("dinov2_small", (28, 28, 1))


def test_dinov2_features_are_the_class_token_of_the_preprocessed_images(dinov2, tmp_path):
    preset, backbone = dinov2
    x, _ = tiny_images(8, size=28, channels=1)
    encoder = hub.hub_encoder(str(preset), (28, 28, 1))
    features = extract_features(encoder, x)

    # By hand: grey → RGB, bilinear resize to 32 px, (x / 255 - mean) / std, class token.
    rgb = np.repeat(x, 3, axis=-1).astype(np.float32)
    resized = tf.image.resize(rgb, (32, 32), method="bilinear").numpy()
    pixels = ((resized / 255 - MEAN) / STD).astype(np.float32)
    expected = keras.ops.convert_to_numpy(backbone({"images": pixels}))[:, 0]  # [8, 16]
    assert features.shape == (8, 16)
    assert np.isfinite(features).all()
    np.testing.assert_allclose(features, expected, atol=1e-5)
    assert np.ptp(features, axis=0).min() > 1e-3  # images differ, so do their features

    encoder.save(tmp_path / "hub.keras")
    reloaded = keras.models.load_model(tmp_path / "hub.keras")
    np.testing.assert_allclose(extract_features(reloaded, x), features, atol=1e-6)


def test_cnn_without_converter_is_average_pooled_at_its_own_size(tmp_path):
    backbone = tiny_resnet()
    backbone.save_to_preset(str(tmp_path / "resnet"))  # no image converter
    x, _ = tiny_images(8, size=28, channels=3)
    features = extract_features(hub.hub_encoder(str(tmp_path / "resnet"), (28, 28, 3)), x)
    feature_map = keras.ops.convert_to_numpy(backbone(x.astype(np.float32)))  # [8, 7, 7, 64]
    assert feature_map.shape[1:3] == (7, 7)  # 28 px kept (stride-2 stem and pooling)
    np.testing.assert_allclose(features, feature_map.mean(axis=(1, 2)), rtol=1e-5, atol=1e-4)


def test_unloadable_presets_are_one_line_user_errors(tmp_path):
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=10,
        num_layers=1,
        num_heads=1,
        hidden_dim=4,
        intermediate_dim=4,
        max_sequence_length=8,
    )
    bert.save_to_preset(str(tmp_path / "bert"))
    tiny_resnet().save_to_preset(str(tmp_path / "no_weights"))
    (tmp_path / "no_weights" / "model.weights.h5").unlink()
    cases = {
        "missing": "not found",
        "bert": "is not a vision backbone",
        "no_weights": "doesn't exist in preset directory",
    }
    for name, reason in cases.items():
        source = str(tmp_path / name)
        with pytest.raises(UserError) as error:
            hub.hub_encoder(source, (28, 28, 1))
        message = str(error.value)
        assert reason in message and repr(source) in message and "\n" not in message


def test_clip_features_are_the_image_tower_before_the_projection(tmp_path):
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(16, 16, 3),
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=10,
        embedding_dim=8,
        hidden_dim=8,
        num_layers=1,
        num_heads=1,
        intermediate_dim=8,
        max_sequence_length=4,
    )
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=8)
    preset = str(tmp_path / "clip_tiny")
    backbone.save_to_preset(preset)
    keras_hub.layers.CLIPImageConverter(
        image_size=(16, 16), scale=1 / 127.5, offset=-1.0
    ).save_to_preset(preset)
    x, _ = tiny_images(8, size=28, channels=1)
    features = extract_features(hub.hub_encoder(preset, (28, 28, 1)), x)

    rgb = np.repeat(x, 3, axis=-1).astype(np.float32)
    pixels = tf.image.resize(rgb, (16, 16), method="bilinear").numpy() / 127.5 - 1
    sequence = keras.ops.convert_to_numpy(vision({"images": pixels}))  # [8, 1 + 4, 16]
    assert features.shape == (8, 16)  # the tower's width, not the projection's 8
    np.testing.assert_allclose(features, sequence[:, 0], atol=1e-5)


def test_a_checkpoint_without_readable_preprocessing_is_refused(dinov2, monkeypatch):
    # What keras-hub returns for e.g. an hf:// Transformers DINOv2: no converter config.
    monkeypatch.setattr(keras_hub.layers.ImageConverter, "from_preset", lambda source: None)
    with pytest.raises(UserError, match="reads no image preprocessing"):
        hub.hub_encoder(str(dinov2[0]), (28, 28, 1))


def test_input_size_rebuilds_the_backbone_at_that_size(dinov2):
    preset, _ = dinov2
    x, _ = tiny_images(8, size=28, channels=1)
    features = extract_features(hub.hub_encoder(str(preset), (28, 28, 1), input_size=16), x)
    backbone = keras_hub.models.Backbone.from_preset(str(preset), image_shape=(16, 16, 3))
    rgb = np.repeat(x, 3, axis=-1).astype(np.float32)
    resized = tf.image.resize(rgb, (16, 16), method="bilinear").numpy()
    pixels = ((resized / 255 - MEAN) / STD).astype(np.float32)
    expected = keras.ops.convert_to_numpy(backbone({"images": pixels}))[:, 0]
    np.testing.assert_allclose(features, expected, atol=1e-5)
    with pytest.raises(ValueError, match="input_size must be an integer >= 8"):
        hub.hub_encoder(str(preset), (28, 28, 1), input_size=4)
