"""HyperModels: search-space specs, hp → constructor arguments, one fit step per sample."""

from __future__ import annotations

import re

import keras
import keras_tuner as kt
import numpy as np
import pytest

from kerassl.config import TrainConfig
from kerassl.models import classifiers
from kerassl.tuning.hypermodels import (
    CNNHyperModel,
    MLPHyperModel,
    Param,
    SSLHyperModel,
    TransferHyperModel,
    make_hypermodel,
    parse_space,
)


def _data(n: int, size: int = 16, channels: int = 1, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, channels), np.uint8)
    return x, np.arange(n) % classes


def _samples(hypermodel, count: int) -> list[kt.HyperParameters]:
    """`count` random points of the hypermodel's space (seeded, as a tuner would draw)."""
    declared = kt.HyperParameters()
    hypermodel.values(declared)
    samples = []
    for seed in range(count):
        hp = kt.HyperParameters()
        for index, param in enumerate(declared.space):
            hp.values[param.name] = param.random_sample(seed * 100 + index)
        samples.append(hp)
    return samples


# ------------------------------------------------------------------------ search specs


def test_param_parse_kinds():
    log = Param.parse("learning_rate", {"min": "1e-4", "max": 1e-2, "sampling": "log"})
    assert (log.kind, log.min, log.max, log.sampling) == ("float", 1e-4, 1e-2, "log")
    assert Param.parse("units", {"min": 16, "max": 64, "step": 16}).kind == "int"
    assert Param.parse("rate", {"min": 0, "max": 0.5}).kind == "float"
    assert Param.parse("batch_size", [16, 32]).values == (16, 32)
    assert Param.parse("mixed", [1, 0.5]).values == (1.0, 0.5)
    assert Param.parse("pooling", ["avg", "flatten"]).kind == "choice"
    fixed = Param.parse("dropout", 0.25)
    assert (fixed.kind, fixed.values) == ("fixed", (0.25,))

    hp = kt.HyperParameters()
    assert log.define(hp, "learning_rate") == pytest.approx(1e-4)
    assert Param.parse("units", {"min": 16, "max": 64, "step": 16}).define(hp, "units") == 16
    assert fixed.define(hp, "dropout") == 0.25
    sampled = [hp.space[0].random_sample(seed) for seed in range(50)]
    assert all(1e-4 <= value <= 1e-2 for value in sampled)
    # Log sampling: about as many draws below 1e-3 (the geometric middle) as above.
    assert 15 <= sum(value < 1e-3 for value in sampled) <= 35


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"min": 0.1, "max": 0.01}, "min must be <= max"),
        ({"min": 0.0, "max": 1.0, "sampling": "log"}, "log sampling needs min > 0"),
        ({"min": 0.0, "max": 1.0, "sampling": "cubic"}, "sampling must be one of"),
        ({"min": 0.0}, "a range needs min and max"),
        ({"min": 0.0, "max": 1.0, "stride": 2}, "a range needs min and max"),
        ({"min": "low", "max": 1.0}, "min must be a number"),
        ({"min": 0.0, "max": 1.0, "step": -1}, "step must be > 0"),
        ([], "must not be empty"),
        ([1, "a"], "share one type"),
        ([16, 16], "distinct"),
    ],
)
def test_param_parse_rejects(spec, message):
    with pytest.raises(ValueError, match=message):
        Param.parse("x", spec)


def test_parse_space_merges_and_rejects_unknown_names():
    space = parse_space({"a": [1, 2], "b": 0.5}, {"b": {"min": 0.1, "max": 0.9}})
    assert space["a"].values == (1, 2) and space["b"].kind == "float"
    with pytest.raises(ValueError, match="^unknown hyperparameter depth; tunable: a, b$"):
        parse_space({"a": [1, 2], "b": 0.5}, {"depth": [1]})
    close = "unknown hyperparameters batch, zzz; did you mean batch_size? tunable: batch_size, lr"
    with pytest.raises(ValueError, match=f"^{re.escape(close)}$"):
        parse_space({"batch_size": [16], "lr": 0.1}, {"zzz": 0.2, "batch": [8]})


# ----------------------------------------------------------------- supervised HyperModels


def test_cnn_hypermodel_maps_hp_onto_builder_arguments():
    hypermodel = CNNHyperModel((16, 16, 1), 3)
    name, kwargs = hypermodel.classifier_args(
        {"base_filters": 16, "convs_per_block": 2, "dropout": 0.3, "pooling": "avg",
         "dense_units": 0, "dense_dropout": 0.5}
    )  # fmt: skip
    assert name == "cnn"
    assert kwargs == {"filters": (16, 32, 64), "convs_per_block": 2, "dropout": 0.3,
                      "pooling": "avg"}  # fmt: skip
    name, kwargs = hypermodel.classifier_args(
        {"base_filters": 32, "convs_per_block": 1, "dropout": 0.0, "pooling": "flatten",
         "dense_units": 128, "dense_dropout": 0.4}
    )  # fmt: skip
    assert name == "cnn_deep" and kwargs["dense_units"] == (128,)
    assert kwargs["dense_dropout"] == 0.4


@pytest.mark.parametrize("cls, samples", [(CNNHyperModel, 3), (MLPHyperModel, 2)])
def test_hypermodel_builds_and_fits_for_sampled_hyperparameters(cls, samples):
    x, y = _data(12)
    hypermodel = cls((16, 16, 1), 3, epochs=1, patience=1)
    seen = set()
    for hp in _samples(hypermodel, samples):
        model = hypermodel.build(hp)
        assert model.output_shape == (None, 3)
        history = hypermodel.fit(hp, model, x[:8], y[:8], validation_data=(x[8:], y[8:]))
        assert np.isfinite(history.history["loss"][0])
        assert 0.0 <= history.history["val_accuracy"][0] <= 1.0
        assert model.optimizer.learning_rate.numpy() == pytest.approx(hp["learning_rate"])
        seen.add(tuple(sorted(hp.values.items())))
    assert len(seen) == samples  # the samples differ


def test_hypermodel_builds_what_hp_says():
    hypermodel = CNNHyperModel((16, 16, 1), 3)
    hp = kt.HyperParameters()
    hp.values.update({"base_filters": 16, "dense_units": 128, "convs_per_block": 1})
    model = hypermodel.build(hp)
    trunk = model.get_layer("cnn_deep_trunk").layers
    convs = [layer.filters for layer in trunk if isinstance(layer, keras.layers.Conv2D)]
    assert convs == [16, 32, 64] and model.name == "cnn_deep"
    mlp = MLPHyperModel((16, 16, 1), 3)
    hp = kt.HyperParameters()
    hp.values.update({"hidden_units": 256, "hidden_layers": 3})
    dense = [layer.units for layer in mlp.build(hp).layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [256, 128, 64, 3]


def test_space_override_fixes_a_value():
    hypermodel = CNNHyperModel((16, 16, 1), 3, space={"batch_size": 8, "pooling": ["avg"]})
    for hp in _samples(hypermodel, 2):
        assert hp["batch_size"] == 8 and hp["pooling"] == "avg"
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        CNNHyperModel((16, 16, 1), 3, space={"temperature": 0.1})


def test_transfer_hypermodel_frozen_base_then_fine_tunes_top_block():
    x, y = _data(8, size=16, channels=1, classes=2)
    hypermodel = make_hypermodel("resnet50", (16, 16, 1), 2, weights=None, epochs=2, patience=2)
    assert isinstance(hypermodel, TransferHyperModel)
    hp = kt.HyperParameters()
    hp.values.update({"dense1": 32, "dense2": 16, "dropout": 0.2, "fine_tune_blocks": 1})
    model = hypermodel.build(hp)
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [32, 16, 2]
    frozen = model.count_params() - sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert frozen > 2e7  # ResNet-50's 23.5M parameters are frozen
    head_weights = {id(w) for w in model.trainable_weights}
    history = hypermodel.fit(hp, model, x[:6], y[:6], validation_data=(x[6:], y[6:]))
    assert len(history.history["loss"]) == 2  # head phase + fine-tuning phase
    # After fine-tuning the top block, its convolutions train; BatchNorm stays frozen.
    tuned = {w.path.split("/")[-2] for w in model.trainable_weights if id(w) not in head_weights}
    assert tuned == {f"conv5_block3_{i}_conv" for i in (1, 2, 3)}


def test_unfreeze_top_blocks_of_inceptionv3():
    model = classifiers.build_classifier("inceptionv3", (16, 16, 1), 3, weights=None)
    assert model.get_layer("inceptionv3").output_shape == (None, 2048)
    head = len(model.trainable_weights)
    assert classifiers.unfreeze_top_blocks(model, 0) == 0 and len(model.trainable_weights) == head
    count = classifiers.unfreeze_top_blocks(model, 1)
    base = model.get_layer("inceptionv3").get_layer("inception_v3")
    names = [layer.name for layer in base.layers]
    after = set(names[names.index("mixed9") + 1 :])
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable and trainable <= after and count == len(trainable)
    assert all(
        not isinstance(base.get_layer(n), keras.layers.BatchNormalization) for n in trainable
    )
    with pytest.raises(ValueError, match="fine_tune_blocks must be <= 10"):
        classifiers.unfreeze_top_blocks(model, 11)


# --------------------------------------------------------------------------- SimCLR


def test_simclr_hypermodel_maps_hp_onto_train_config():
    base = TrainConfig(dataset="digits", epochs=3, encoder="cnn")
    hypermodel = SSLHyperModel("simclr", base, space={"batch_size": [32, 64]})
    hp = kt.HyperParameters()
    hp.values.update({"temperature": 0.2, "learning_rate": 3e-3, "batch_size": 64,
                      "head": "linear"})  # fmt: skip
    config = hypermodel.build(hp)
    assert isinstance(config, TrainConfig)
    assert (config.temperature, config.learning_rate, config.batch_size, config.head) == (
        0.2,
        3e-3,
        64,
        "linear",
    )
    assert (config.dataset, config.epochs, config.method) == ("digits", 3, "simclr")
    assert base.temperature == TrainConfig().temperature  # the base is not modified


# ---------------------------------------------------------------- every SSL method

# Each method's own hyperparameters in its default space (TrainConfig fields), as the papers
# name them; a method registered without an entry here fails below.
OWN = {
    "simclr": {"temperature"},
    "moco": {"temperature", "momentum", "queue_size"},
    "barlow_twins": {"bt_lambda"},
    "byol": {"momentum", "hidden_dim"},
    "simsiam": {"hidden_dim"},
    "vicreg": {"vicreg_lambda", "vicreg_mu", "vicreg_nu"},
}
# The methods building their own projector take no --head: it is not tuned for them.
WITH_HEAD = {"simclr", "moco", "byol"}
# Small enough for a model build in about a second.
SSL_BASE = TrainConfig(
    dataset="digits", encoder="cnn", epochs=1, projection_dim=16, projector_dims="32,32"
)


def test_every_registered_method_is_tunable():
    from kerassl.methods import METHODS
    from kerassl.tuning.config import MODELS

    assert set(OWN) == set(METHODS)
    assert set(METHODS) <= set(MODELS)


@pytest.mark.parametrize("method", sorted(OWN))
def test_ssl_space_holds_the_method_s_hyperparameters_only(method):
    space = SSLHyperModel(method, SSL_BASE).space
    shared = {"learning_rate", "batch_size"} | ({"head"} if method in WITH_HEAD else set())
    assert set(space) == OWN[method] | shared
    others = set().union(*OWN.values()) - OWN[method]
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        SSLHyperModel(method, SSL_BASE, space={sorted(others)[0]: 1.0})


@pytest.mark.parametrize("method", sorted(OWN))
def test_ssl_hypermodel_builds_a_compiled_method_from_a_sample(method):
    from kerassl.methods import METHODS
    from kerassl.pretraining import build_method

    hypermodel = SSLHyperModel(method, SSL_BASE)
    (hp,) = _samples(hypermodel, 1)
    config = hypermodel.build(hp)
    assert config.method == method and config.encoder == "cnn"
    assert {name: getattr(config, name) for name in hp.values} == pytest.approx(hp.values)
    model = build_method(config, (16, 16, 1), "digits", total_steps=4)
    assert model.compiled and model.optimizer is not None
    # The sample reached the method's constructor (and its saved config).
    saved = model.get_config()
    for name in OWN[method]:
        assert saved[METHODS[method].arguments[name]] == pytest.approx(hp[name]), name
    schedule = model.optimizer.get_config()["learning_rate"]["config"]
    assert schedule["base_lr"] == pytest.approx(hp["learning_rate"])


def test_ssl_hypermodel_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="^method must be one of simclr, moco, .*method='dino'"):
        SSLHyperModel("dino", SSL_BASE)


def test_a_trial_s_settings_are_checked_as_kerassl_train_checks_them():
    from kerassl.errors import UserError

    hypermodel = SSLHyperModel("moco", SSL_BASE, space={"batch_size": [30, 32]})
    hp = kt.HyperParameters()
    hypermodel.values(hp)
    hp.values["batch_size"] = 30
    with pytest.raises(UserError, match=r"--batch-size must be a multiple of --bn-groups \(4\)"):
        hypermodel.build(hp)
    hp.values["batch_size"] = 32
    assert hypermodel.build(hp).batch_size == 32
