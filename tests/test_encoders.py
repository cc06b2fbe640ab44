import keras
import numpy as np
import pytest

from kerassl.errors import UserError
from kerassl.models.encoders import ImageAdapter, build_encoder
from kerassl.models.heads import build_head


@pytest.mark.parametrize(
    "name, kwargs, dim",
    [
        ("cnn", {}, 128),
        ("cnn", {"pooling": "flatten", "filters": (8, 16)}, 16 * 4 * 4),
        ("resnet18", {"width": 4}, 32),
    ],
)
def test_small_encoders_map_images_to_vectors(name, kwargs, dim):
    encoder = build_encoder(name, (16, 16, 1), **kwargs)
    out = encoder(np.random.rand(2, 16, 16, 1).astype("float32"))
    assert out.shape == (2, dim)


def _batch_norms(model):
    return [
        lay for lay in model._flatten_layers() if isinstance(lay, keras.layers.BatchNormalization)
    ]


def test_batchnorm_uses_momentum_suited_to_tiny_labeled_sets():
    """Every BatchNorm kerassl builds (encoders, heads, projectors, predictors) uses 0.9:
    Keras' 0.99 collapses networks trained on ~100 labeled images."""
    from kerassl.models import barlow_twins, simsiam
    from kerassl.models.heads import build_predictor

    models = [
        build_encoder("cnn", (16, 16, 1)),
        build_encoder("resnet18", (16, 16, 1), width=4),
        build_head("deep_mlp", 8, 4, 8),
        build_predictor(8, 8),
        barlow_twins.build_projector(8, (8, 8)),
        simsiam.build_projector(8, (8, 8)),
    ]
    for model in models:
        norms = _batch_norms(model)
        assert norms and {layer.momentum for layer in norms} == {0.9}, model.name


@pytest.mark.parametrize("name", ["resnet50", "inceptionv3"])
def test_applications_accept_small_grayscale_images(name):
    encoder = build_encoder(name, (16, 16, 1), weights=None)
    assert encoder(np.zeros((1, 16, 16, 1), "float32")).shape == (1, 2048)
    # Their BatchNorm too runs at kerassl's momentum, not Keras' 0.99.
    assert {layer.momentum for layer in _batch_norms(encoder)} == {0.9}


def test_image_adapter_repeats_channels_resizes_and_preprocesses():
    x = np.full((1, 8, 8, 1), 0.5, "float32")
    tf_mode = ImageAdapter(channels=3, min_size=16, mode="tf")(x)
    assert tf_mode.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(np.asarray(tf_mode), 0.0, atol=1e-6)
    caffe = np.asarray(ImageAdapter(channels=3, mode="caffe")(np.ones((1, 2, 2, 3), "float32")))
    np.testing.assert_allclose(
        caffe[0, 0, 0], [255 - 103.939, 255 - 116.779, 255 - 123.68], rtol=1e-6
    )


def test_encoder_save_load_round_trip(tmp_path):
    encoder = build_encoder("resnet50", (16, 16, 1))
    x = np.random.rand(2, 16, 16, 1).astype("float32")
    path = tmp_path / "encoder.keras"
    encoder.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(encoder(x)), atol=1e-5)


@pytest.mark.parametrize("kind, hidden", [("linear", 0), ("mlp", 1), ("deep_mlp", 2)])
def test_heads(kind, hidden):
    head = build_head(kind, 32, output_dim=8, hidden_dim=16)
    assert head(np.zeros((4, 32), "float32")).shape == (4, 8)
    dense = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == hidden + 1


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="unknown encoder 'vgg'"):
        build_encoder("vgg", (16, 16, 1))
    with pytest.raises(UserError, match="unknown head"):
        build_head("transformer", 8)
    with pytest.raises(UserError, match="no pretrained weights"):
        build_encoder("cnn", (16, 16, 1), weights="imagenet")
