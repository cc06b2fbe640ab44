"""KerasTuner HyperModels of the supervised baselines and of SSL pretraining.

Each HyperModel maps `hp` onto the ordinary constructor arguments of
`kerassl.models.classifiers.build_classifier` (or onto a `TrainConfig` for any SSL
method, `SSLHyperModel`) and trains through the untuned code path
(`kerassl.supervised.train_classifier`, `kerassl.pretraining.pretrain`); nothing is built
or trained here that a plain run does not build or train too. A HyperModel's `space`
argument (name → range, list of choices or value; see `kerassl.tuning.spaces`) overrides
entries of its default space.

Example:
    >>> hypermodel = CNNHyperModel((28, 28, 1), num_classes=10,
    ...                            space={"learning_rate": {"min": 1e-4, "max": 1e-2}})
    >>> tuner = keras_tuner.RandomSearch(hypermodel, "val_accuracy", max_trials=10)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from kerassl import supervised
from kerassl.methods import METHODS
from kerassl.models.classifiers import TRANSFER, build_classifier
from kerassl.tuning.config import SUPERVISED_MODELS
from kerassl.tuning.spaces import (
    CNN_SPACE,
    MLP_SPACE,
    TRANSFER_SPACE,
    Param,
    parse_space,
    ssl_space,
)

__all__ = ["Param", "parse_space"]  # re-exported for convenience


class ClassifierHyperModel(kt.HyperModel):
    """Base of the supervised HyperModels: `build` returns a `build_classifier` model,
    `fit` trains it with `train_classifier` (label-set augmentation, the epoch kept by
    `kerassl.stopping` on the validation data KerasTuner passes, ReduceLROnPlateau).

    Subclasses define `DEFAULT_SPACE` and `classifier_args(values)`.

    Args:
        input_shape: (height, width, channels) of the [0, 1] images.
        num_classes: number of classes.
        space: overrides of `DEFAULT_SPACE` (name → spec, see module docstring).
        epochs: maximum epochs of a trial (Hyperband sets its own budgets).
        patience: early-stopping patience in epochs.
        flip: value of the `flip` hyperparameter (horizontal flips in the label-set
            augmentation) unless `space` tunes it. The caller decides it from the resolved
            augmentation: flips preserve the labels of natural images, not of digits.
        seed: seed of initialisation, shuffling and augmentation in every trial.
    """

    MODEL = ""
    DEFAULT_SPACE: dict[str, Any] = {}

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        space: Mapping[str, Any] | None = None,
        epochs: int = 100,
        patience: int = 40,
        flip: bool = False,
        seed: int = 0,
        name: str | None = None,
        tunable: bool = True,
    ):
        super().__init__(name=name or self.MODEL, tunable=tunable)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2. Received: num_classes={num_classes}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1. Received: epochs={epochs}")
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.space = parse_space({**self.DEFAULT_SPACE, "flip": flip}, space)
        self.epochs = epochs
        self.patience = patience
        self.seed = seed

    def values(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Registers the search space in `hp` and returns the values of this trial."""
        return {name: param.define(hp, name) for name, param in self.space.items()}

    def classifier_args(self, values: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """(`build_classifier` name, keyword arguments) for hyperparameter `values`."""
        raise NotImplementedError

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        values = self.values(hp)
        name, kwargs = self.classifier_args(values)
        keras.utils.set_random_seed(self.seed)
        # Uncompiled: `fit` compiles with this trial's learning rate and weight decay.
        return build_classifier(name, self.input_shape, self.num_classes, **kwargs)

    def fit(
        self,
        hp: kt.HyperParameters,
        model: keras.Model,
        x: np.ndarray,
        y: np.ndarray,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        epochs: int | None = None,
        initial_epoch: int = 0,
        callbacks: list | None = None,
        verbose: int = 0,
        **kwargs: Any,
    ) -> keras.callbacks.History:
        """Trains one trial's model on the labeled arrays, selecting on `validation_data`."""
        values = self.values(hp)
        augmenter = supervised.label_augmenter(
            rotation=values.get("rotation", 0.0),
            translation=values.get("translation", 0.0),
            zoom=values.get("zoom", 0.0),
            flip=bool(values.get("flip", False)),
            seed=self.seed,
        )
        return supervised.train_classifier(
            model,
            x,
            y,
            validation=validation_data,
            epochs=epochs or self.epochs,
            initial_epoch=initial_epoch,
            batch_size=int(values["batch_size"]),
            learning_rate=values["learning_rate"],
            weight_decay=values["weight_decay"],
            augmenter=augmenter,
            patience=self.patience,
            fine_tune_blocks=int(values.get("fine_tune_blocks", 0)),
            callbacks=callbacks or (),
            seed=self.seed,
            verbose=verbose,
        )


class CNNHyperModel(ClassifierHyperModel):
    """The source studies' small CNN: study A's 3-block CNN (`dense_units: 0`) or the
    deeper variant with a dense classifier (`dense_units > 0`, `"cnn_deep"`).

    Tunes learning rate, weight decay, batch size, width (`base_filters` → b, 2b, 4b),
    convolutions per block, dropout, pooling, the dense classifier and the strength of the
    label-set augmentation.
    """

    MODEL = "cnn"
    DEFAULT_SPACE = CNN_SPACE

    def classifier_args(self, values):
        base = int(values["base_filters"])
        kwargs = {
            "filters": (base, 2 * base, 4 * base),
            "convs_per_block": int(values["convs_per_block"]),
            "dropout": float(values["dropout"]),
            "pooling": values["pooling"],
        }
        if int(values["dense_units"]) == 0:
            return "cnn", kwargs
        kwargs["dense_units"] = (int(values["dense_units"]),)
        kwargs["dense_dropout"] = float(values["dense_dropout"])
        return "cnn_deep", kwargs


class MLPHyperModel(ClassifierHyperModel):
    """A multilayer perceptron on flattened pixels: `hidden_layers` dense-BN-ReLU-dropout
    layers of `hidden_units`, halving in width with depth."""

    MODEL = "mlp"
    DEFAULT_SPACE = MLP_SPACE

    def classifier_args(self, values):
        units = int(values["hidden_units"])
        hidden = tuple(max(units // 2**i, 16) for i in range(int(values["hidden_layers"])))
        return "mlp", {"hidden_units": hidden, "dropout": float(values["dropout"])}


class TransferHyperModel(ClassifierHyperModel):
    """Transfer learning with a frozen ResNet-50 or InceptionV3 base (the source studies
    tuned InceptionV3's classifier on Stanford Dogs: learning rate, two dense layers and
    dropout), optionally fine-tuning the top `fine_tune_blocks` blocks in a second phase.

    `dense1`/`dense2` are the widths of the classifier's dense layers (0 = no layer).
    ImageNet weights are used when cached locally (`weights="auto"`), random otherwise.

    Args:
        base: `"resnet50"` or `"inceptionv3"`.
        weights: `"auto"`, `"imagenet"` or None.
        **kwargs: `ClassifierHyperModel` arguments.
    """

    DEFAULT_SPACE = TRANSFER_SPACE

    def __init__(self, input_shape, num_classes, base: str = "inceptionv3", weights="auto", **kw):
        if base not in TRANSFER:
            raise ValueError(f"base must be one of {TRANSFER}. Received: base={base!r}")
        self.MODEL = base
        self.base = base
        self.weights = weights
        super().__init__(input_shape, num_classes, **kw)

    def classifier_args(self, values):
        dense = tuple(int(values[k]) for k in ("dense1", "dense2") if int(values[k]) > 0)
        return self.base, {
            "weights": self.weights,
            "dense_units": dense,
            "dropout": float(values["dropout"]),
        }


class SSLHyperModel(kt.HyperModel):
    """Pretraining hyperparameters of any SSL method of `kerassl.methods.METHODS`, mapped
    onto a `TrainConfig`; the objective is linear-probe accuracy on the labeled validation
    split (the probe is trained on `split.labeled` features).

    The default space is `kerassl.tuning.spaces.ssl_space(method)`: the method's own
    hyperparameters (SimCLR's and MoCo's temperature, MoCo's momentum and queue, Barlow
    Twins' λ, BYOL's τ_base, VICReg's weights, the predictor's width of BYOL and SimSiam)
    plus learning rate, batch size and, for the methods using the shared projection head,
    the head.

    `build(hp)` returns the trial's `TrainConfig` (not a model; `kerassl.pretraining.
    build_method` builds and compiles it as an untuned run would); `fit` pretrains with
    `kerassl.pretraining.pretrain` on the trial's `Plan` and probes. Use it with
    `kerassl.tuning.search`, whose tuners run such trials.

    Args:
        method: the method's registry name (`simclr`, `moco`, `byol` …).
        base_config: the `TrainConfig` every trial starts from (dataset, encoder, epochs …).
        space: overrides of the method's default space (name → spec).

    Example:
        >>> hypermodel = SSLHyperModel("byol", TrainConfig(dataset="digits", epochs=5),
        ...                            space={"batch_size": [64]})
    """

    def __init__(
        self,
        method: str,
        base_config: Any,
        space: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        if method not in METHODS:
            raise ValueError(
                f"method must be one of {', '.join(METHODS)}. Received: method={method!r}"
            )
        super().__init__(name=method, **kwargs)
        self.method = method
        self.base_config = base_config
        self.space = parse_space(ssl_space(method), space)
        self.last_model = None  # the last trial's SSL model and --time-budget record
        self.last_budget = None

    def values(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Registers the search space in `hp` and returns the values of this trial."""
        return {name: param.define(hp, name) for name, param in self.space.items()}

    def build(self, hp: kt.HyperParameters) -> Any:
        """The trial's `TrainConfig`: `base_config` with this trial's values, checked as
        `kerassl train` checks its settings (`UserError`, e.g. a MoCo batch size that is
        no multiple of `bn_groups`)."""
        values = self.values(hp)
        for name in _INTEGER_SETTINGS & set(values):
            values[name] = int(values[name])
        config = dataclasses.replace(self.base_config, method=self.method, **values)
        config.validate()
        return config

    def fit(self, hp, config, plan, verbose: int = 0, **kwargs) -> dict[str, float]:
        """Pretrains with `config` on `plan` (a `kerassl.plan.Plan` whose data holds no test
        images, re-resolved for the trial's settings), then returns
        `{"val_accuracy": probe accuracy}`."""
        import tensorflow as tf

        from kerassl.evaluation.features import extract_features
        from kerassl.evaluation.probes import linear_probe
        from kerassl.experiment import settle
        from kerassl.pretraining import pretrain

        data, split = plan.data, plan.split
        # As `kerassl train` would run the trial: its XLA choice and its --time-budget.
        trial_plan, _, self.last_budget = settle(
            plan.with_config(config), tf.distribute.get_strategy()
        )
        model = pretrain(trial_plan, verbose=verbose)
        train_features = extract_features(model.encoder, data.x_train[split.labeled])
        val_features = extract_features(model.encoder, data.x_train[split.validation])
        result, _ = linear_probe(
            train_features,
            data.y_train[split.labeled],
            val_features,
            data.y_train[split.validation],
            num_classes=data.num_classes,
            seed=config.seed,
        )
        self.last_model = model
        return {"val_accuracy": float(result.top1)}


# `TrainConfig` integer fields a space may hold as float choices (`[64, 128.0]`).
_INTEGER_SETTINGS = {"batch_size", "queue_size", "hidden_dim"}


def make_hypermodel(
    model: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    space: Mapping[str, Any] | None = None,
    weights: str | None = "auto",
    **kwargs: Any,
) -> ClassifierHyperModel:
    """The HyperModel of a supervised baseline by name: cnn, mlp, resnet50, inceptionv3."""
    if model == "cnn":
        return CNNHyperModel(input_shape, num_classes, space=space, **kwargs)
    if model == "mlp":
        return MLPHyperModel(input_shape, num_classes, space=space, **kwargs)
    if model in TRANSFER:
        return TransferHyperModel(
            input_shape, num_classes, base=model, weights=weights, space=space, **kwargs
        )
    raise ValueError(f"model must be one of {SUPERVISED_MODELS}. Received: model={model!r}")
