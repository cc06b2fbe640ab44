"""The checks every self-supervised method passes, in one place.

In the spirit of keras-hub's `TestCase.run_layer_test`: a method's test file calls
`run_method_contract` with the method (its class or registry name), tiny constructor
arguments and a reference for its loss, and gets, on a tiny CNN encoder and 16-px images
(`build_tiny`, `kerassl.testing.synthetic.tiny_float_images`):

1. config round trip (`check_config_round_trip`): `get_config` holds every constructor
   hyperparameter (the given ones with their values) and `from_config` gives the same
   config back, with a real augmentation preset inside;
2. one training step (`check_train_step`) with identity augmentation (`"none"`: both views
   are the batch) under XLA, whose logs equal `reference_loss(model, images)` — the
   paper's loss (NumPy, `kerassl.testing.references`) on the model's own projections,
   computed just before the step — and which moves the weights;
3. `.keras` save/load of that trained model (`check_save_load`): the same class and config,
   every weight equal (queues, momentum encoders, BatchNorm statistics), every optimizer
   variable equal, the same embeddings and projections, and the encoder alone (what a run
   directory keeps) giving the same embeddings;
4. checkpoint → restore → continue (`check_resume`): a model trained 2 steps, saved with
   `kerassl.checkpoint`, restored into a freshly built one and trained 2 more ends with
   every variable (weights, BatchNorm statistics, queue and pointer, momentum encoder,
   augmenter and shuffle seed states) and optimizer variable equal to a model trained 4
   steps straight, with a real augmentation preset and the method's own options;
5. mixed precision (`check_precision`, each test file's `test_mixed_precision`): built
   under `mixed_bfloat16` and `mixed_float16` as `kerassl train --precision` builds it,
   two steps from float32's weights give float32's losses within 16-bit rounding, with
   float32 features and loss and, for float16, a `LossScaleOptimizer`.

The distributed check — two steps under MirroredStrategy on 2 logical CPUs (2 replicas of 4
images, synchronised BatchNorm) equal to one device — needs TensorFlow started with a
split CPU, so `run_distributed` runs it for many methods in ONE subprocess
(`python -m kerassl.testing.method_contract JSON`, `compare_distributed`) and
`check_distributed` judges each result. `tests/test_distributed.py` runs it for every
method of `kerassl.methods.METHODS`, with the `CONTRACT_KWARGS` of its test file.

Adding a method costs one module under `kerassl/models/` (an `SSLModel` subclass whose
`get_config` adds its constructor arguments), its entry in `kerassl.methods.METHODS`, and
one short `tests/test_<name>.py`:

```python
CONTRACT_KWARGS = {"temperature": 0.3}  # tiny, non-default values of its arguments


def reference_loss(model, images):  # both views are `images`
    z = np.asarray(model.project(np.concatenate([images, images]), training=True))
    return references.np_my_loss(z[: len(images)], z[len(images) :], model.temperature)


def test_method_contract(tmp_path):
    run_method_contract(MyMethod, CONTRACT_KWARGS, reference_loss, tmp_path)
```

plus whatever is special about the method (fit lowers the loss, bad arguments).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kerassl.testing.synthetic import tiny_float_images

IMAGE_SHAPE = (16, 16, 1)
HEAD_WIDTHS = (32, 16)  # the shared MLP head: hidden width, projection width
PROJECTOR_WIDTHS = (32, 32, 24)  # a method's own projector (Barlow Twins)
STEP_BATCH = 8  # images of the contract's training step
GLOBAL_BATCH = 8  # images per step of the distributed comparison (4 per replica)
STEPS = 2  # steps of the distributed comparison
# Arguments every method takes from `SSLModel`, not hyperparameters of its own.
_NETWORK_ARGUMENTS = ("self", "encoder", "head", "augmenter")


def resolve_method(method: str | type) -> tuple[type, Any]:
    """`(class, MethodSpec or None)` of a registry name or an `SSLModel` subclass."""
    from kerassl.methods import METHODS, get_method

    if isinstance(method, str):
        spec = get_method(method)
        return spec.load(), spec
    target = f"{method.__module__}:{method.__qualname__}"
    spec = next((s for s in METHODS.values() if s.target == target), None)
    return method, spec


def build_tiny(
    method: str | type,
    kwargs: Mapping[str, Any] | None = None,
    preset: str = "none",
    seed: int | None = 0,
    sync_bn: bool = False,
    head_widths: Sequence[int] | None = None,
    precision: str = "float32",
):
    """A method on the tiny CNN encoder and a small head (or the method's own projector).

    Args:
        method: an `SSLModel` subclass or its registry name (`kerassl.methods.METHODS`).
        kwargs: the method's constructor arguments (besides encoder, head, augmenter).
        preset: augmentation preset; "none" makes both views the batch itself.
        seed: seeds Keras (weights, augmenter) before building; None leaves the global
            seed alone.
        sync_bn: synchronised BatchNorm (under a strategy).
        head_widths: widths of the head's layers, the last being the loss space: the
            method's own projector takes all of them (default `PROJECTOR_WIDTHS`), the
            shared MLP head `(hidden_dim, output_dim)` (default `HEAD_WIDTHS`).
        precision: the dtype policy the model is built under, as `kerassl.pretraining.
            build_method` builds it (`kerassl.models.base.dtype_policy`, the encoder's
            features cast to float32 by `float32_outputs`).

    Returns:
        The uncompiled, built model.
    """
    import keras

    from kerassl.data.augment import make_augmenter
    from kerassl.models.base import dtype_policy, float32_outputs
    from kerassl.models.encoders import build_encoder
    from kerassl.models.heads import build_head

    cls, spec = resolve_method(method)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    with dtype_policy(precision):
        encoder = float32_outputs(
            build_encoder("cnn", IMAGE_SHAPE, filters=(8, 16), convs_per_block=1, sync_bn=sync_bn)
        )
        features = encoder.output_shape[-1]
        build_projector = spec.load_projector() if spec is not None else None
        if build_projector is not None:
            widths = tuple(head_widths or PROJECTOR_WIDTHS)
            head = build_projector(features, widths, sync_bn=sync_bn)
        else:
            hidden, output = head_widths or HEAD_WIDTHS
            head = build_head(
                "mlp", features, output_dim=output, hidden_dim=hidden, sync_bn=sync_bn
            )
        augmenter = make_augmenter(preset, seed=0 if seed is None else seed)
        return cls(encoder, head, augmenter, **dict(kwargs or {}))


def _json(config: dict) -> Any:
    return json.loads(json.dumps(config, default=str))


def hyperparameters(cls: type) -> list[str]:
    """Constructor arguments of `cls` and its `SSLModel` bases, networks excluded."""
    import keras

    names: list[str] = []
    for klass in cls.__mro__:
        if klass is keras.Model:
            break
        if "__init__" not in vars(klass):
            continue
        for parameter in inspect.signature(klass.__init__).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if parameter.name not in _NETWORK_ARGUMENTS and parameter.name not in names:
                names.append(parameter.name)
    return names


def check_config_round_trip(model, kwargs: Mapping[str, Any]) -> None:
    """`get_config` holds every hyperparameter (given ones with their value); `from_config`
    rebuilds a model of the same class, hyperparameters and config."""
    config = model.get_config()
    missing = [name for name in hyperparameters(type(model)) if name not in config]
    assert not missing, f"get_config() lacks constructor arguments {missing}"
    for key, value in kwargs.items():
        assert config[key] == value, f"get_config()[{key!r}] = {config[key]!r}, given {value!r}"
    expected = _json(config)  # before `from_config`, which empties the networks' configs
    restored = type(model).from_config(config)
    assert type(restored) is type(model)
    for name in hyperparameters(type(model)):
        if hasattr(model, name):
            assert getattr(restored, name) == getattr(model, name), name
    assert _json(restored.get_config()) == expected


def check_train_step(model, reference_loss: Callable, images: np.ndarray) -> None:
    """One XLA-compiled `train_on_batch` reports what `reference_loss(model, images)`,
    computed just before it, says, and updates the weights.

    The model must have an identity augmenter. `reference_loss` returns the loss, or a dict
    of expected logs (e.g. also `contrastive_accuracy`); it may read the model's state (a
    queue) as the step will find it.
    """
    import keras

    expected = reference_loss(model, images)
    if not isinstance(expected, Mapping):
        expected = {"loss": expected}
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=True)
    before = [np.asarray(w) for w in model.trainable_weights]
    logs = model.train_on_batch(images, return_dict=True)
    reported = {"loss", "contrastive_accuracy"} if model.reports_accuracy else {"loss"}
    assert set(logs) == reported, logs
    assert np.isfinite(logs["loss"]), logs
    for key, value in expected.items():
        np.testing.assert_allclose(logs[key], float(value), rtol=1e-4, err_msg=key)
    moved = max(
        float(np.abs(np.asarray(w) - b).max())
        for w, b in zip(model.trainable_weights, before, strict=True)
    )
    assert moved > 1e-4, f"the step left the weights unchanged (moved {moved})"


def check_save_load(model, path: Path, images: np.ndarray) -> None:
    """`.keras` save/load keeps the class, config, every weight and optimizer variable, the
    embeddings and the projections; so does the encoder saved alone."""
    import keras

    path = Path(path)
    file = path / f"{model.name}.keras"
    model.save(file)
    restored = keras.saving.load_model(file)
    assert type(restored) is type(model)
    assert _json(restored.get_config()) == _json(model.get_config())
    for name in hyperparameters(type(model)):
        if hasattr(model, name):
            assert getattr(restored, name) == getattr(model, name), name
    assert [w.path for w in restored.weights] == [w.path for w in model.weights]
    for a, b in zip(restored.weights, model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=b.path)
    if model.optimizer is not None:
        variables = model.optimizer.variables
        assert len(restored.optimizer.variables) == len(variables)
        for a, b in zip(restored.optimizer.variables, variables, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=b.path)
    for outputs in (lambda m: m(images), lambda m: m.project(images, training=False)):
        np.testing.assert_allclose(
            np.asarray(outputs(restored)), np.asarray(outputs(model)), atol=1e-5
        )
    model.encoder.save(path / "encoder.keras")
    encoder = keras.saving.load_model(path / "encoder.keras")
    np.testing.assert_allclose(
        np.asarray(encoder(images)), np.asarray(model.encoder(images)), atol=1e-5
    )


def check_resume(
    method: str | type,
    kwargs: Mapping[str, Any],
    path: Path,
    head_widths: Sequence[int] | None = None,
    steps: int = 2,
) -> None:
    """Check 4: `steps` steps, checkpoint, restore into a new model, `steps` more ==
    `2 * steps` steps straight (atol 1e-6), on the "digits" augmentation preset."""
    import keras

    from kerassl import checkpoint

    images = tiny_float_images(STEP_BATCH)

    def trained(model, n):
        for _ in range(n):
            model.train_on_batch(images)
        return model

    def fresh():
        model = build_tiny(method, kwargs, preset="digits", head_widths=head_widths)
        model.compile(optimizer=keras.optimizers.AdamW(1e-2), jit_compile=False)
        return model

    straight = trained(fresh(), 2 * steps)
    state_file = Path(path) / checkpoint.STATE
    checkpoint.save(trained(fresh(), steps), state_file, checkpoint.TrainingState(step=steps))
    resumed = fresh()
    assert checkpoint.restore(resumed, state_file).step == steps
    trained(resumed, steps)
    pairs = [(straight.variables, resumed.variables)]
    pairs.append((straight.optimizer.variables, resumed.optimizer.variables))
    for expected, got in pairs:
        assert len(expected) == len(got)
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, err_msg=a.path)


# Check 5 (`check_precision`): how far a few mixed-precision steps may be from float32's.
PRECISION_STEPS = 2
PRECISION_TOLERANCE = {  # (relative, absolute) on each step's loss
    "mixed_bfloat16": (0.05, 0.01),
    "mixed_float16": (0.01, 0.002),
}
PRECISION_LOSS_SCALE = 2.0**10  # the float16 loss scale of the check (see check_precision)


def check_precision(
    method: str | type,
    kwargs: Mapping[str, Any],
    head_widths: Sequence[int] | None = None,
    precisions: Sequence[str] = tuple(PRECISION_TOLERANCE),
) -> None:
    """Check 5: the method built under each mixed precision trains like float32.

    From the float32 model's initial weights (copied: variables, BatchNorm statistics,
    queues and seed states are float32 under every policy) and on the same 8 images
    (identity augmentation), `PRECISION_STEPS` SGD steps give at every step a finite loss
    within `rtol * |loss_float32| + atol` of float32's (`PRECISION_TOLERANCE`): the first
    step's loss tests the forward pass, the second the gradients of the first (scaled and
    unscaled again under float16). The tolerance is the rounding of 16-bit compute:
    bfloat16 keeps 8 significant bits (2^-9 ≈ 0.2 % per op), float16 11 (2^-12 ≈ 0.02 %),
    compounded through convolutions, BatchNorms and the losses' 1/τ and 1/σ. Measured on
    the six methods' contract settings: bfloat16 within 2.3 % (SimSiam, whose loss is near
    0: 0.002 absolute) and 0.054 absolute (BYOL, loss 3.5); float16 within 0.6 % and
    0.0025 absolute. Hence 5 % + 0.01 and 1 % + 0.002, about 3x the measured worst; a
    gradient left scaled (x 2^10) or a skipped step would be far outside.

    A policy not applied would pass those, so the dtypes are checked too: the encoder's
    layers compute in 16 bits, its output (`model(images)`, `model.encoder`) and the loss
    are float32, the global policy is float32 again after the build, and the float16
    optimizer is a `LossScaleOptimizer` (bfloat16 has float32's exponent range and needs
    none). Its scale starts at `PRECISION_LOSS_SCALE` rather than Keras' 2^15, which
    overflows these networks' float16 gradients in the first step or two: those steps are
    then skipped and the scale halved (by design), no longer step for step with float32.
    Not XLA-compiled, to keep the check a few seconds.
    """
    import keras

    from kerassl.models.base import loss_scaled

    images = tiny_float_images(STEP_BATCH)

    def trained(precision, initial=None):
        model = build_tiny(method, kwargs, head_widths=head_widths, precision=precision)
        assert keras.config.dtype_policy().name == "float32", "the policy leaked"
        if initial is not None:
            paths, values = initial
            assert [w.path for w in model.weights] == paths
            model.set_weights(values)
        start = [w.path for w in model.weights], model.get_weights()
        optimizer = loss_scaled(keras.optimizers.SGD(0.01), precision)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer.initial_scale = PRECISION_LOSS_SCALE  # no skipped step (docstring)
        model.compile(optimizer=optimizer, jit_compile=False, auto_scale_loss=False)
        losses = [
            float(model.train_on_batch(images, return_dict=True)["loss"])
            for _ in range(PRECISION_STEPS)
        ]
        assert int(model.optimizer.iterations) == PRECISION_STEPS, f"{precision}: a step skipped"
        return model, start, losses

    _, initial, expected = trained("float32")
    for precision in precisions:
        model, _, losses = trained(precision, initial)
        sixteen = precision.removeprefix("mixed_")
        computes = {layer.compute_dtype for layer in model.encoder.layers}
        assert sixteen in computes, f"{precision}: the encoder computes in {computes}"
        for name, output in (("model", model(images)), ("encoder", model.encoder(images))):
            dtype = keras.backend.standardize_dtype(output.dtype)
            assert dtype == "float32", f"{precision}: {name} output is {dtype}"
        loss = model.compute_ssl_loss(images, images, training=False)[0]
        assert keras.backend.standardize_dtype(loss.dtype) == "float32", precision
        scaling = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert scaling == (precision == "mixed_float16"), (precision, model.optimizer)
        assert np.isfinite(losses).all(), (precision, losses)
        rtol, atol = PRECISION_TOLERANCE[precision]
        np.testing.assert_allclose(
            losses, expected, rtol=rtol, atol=atol, err_msg=f"{precision} vs float32"
        )


def run_method_contract(
    method: str | type,
    kwargs: Mapping[str, Any],
    reference_loss: Callable,
    tmp_path: Path,
    step_kwargs: Mapping[str, Any] | None = None,
    head_widths: Sequence[int] | None = None,
) -> None:
    """Runs checks 1–4 of the module docstring.

    Args:
        method: the `SSLModel` subclass (or its registry name).
        kwargs: tiny constructor arguments; the test file's `CONTRACT_KWARGS`, which the
            distributed check uses too.
        reference_loss: `(model, images) -> loss or dict of logs`: the paper's loss of a
            step whose two views are both `images`, from the model's own projections.
        tmp_path: scratch directory for the `.keras` files.
        step_kwargs: overrides of `kwargs` for the step and save/load (e.g. MoCo without
            Shuffling BN, so that its keys are computable without the random shuffle).
        head_widths: see `build_tiny`.
    """
    check_config_round_trip(
        build_tiny(method, kwargs, preset="digits", head_widths=head_widths), kwargs
    )
    images = tiny_float_images(STEP_BATCH)
    model = build_tiny(method, {**kwargs, **(step_kwargs or {})}, head_widths=head_widths)
    check_train_step(model, reference_loss, images)
    check_save_load(model, tmp_path, images)
    check_resume(method, kwargs, tmp_path, head_widths=head_widths)


# ------------------------------------------------------------------- 2 replicas = 1 device


def run_distributed(cases: Mapping[str, Mapping[str, Any]], timeout: float = 600) -> dict:
    """`compare_distributed` of every `{registry name: constructor kwargs}` in one fresh
    interpreter whose CPU is split in 2 logical devices; returns `{name: result}`."""
    import kerassl

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    root = str(Path(kerassl.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    process = subprocess.run(
        [sys.executable, "-m", "kerassl.testing.method_contract", json.dumps(dict(cases))],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def build_for_distribution(name: str, kwargs: Mapping[str, Any], sync_bn: bool):
    """The model both sides train: no reseeding (the caller copies the weights) and no XLA
    (XLA's random bits differ from TensorFlow's kernels', and MoCo's key shuffle is random;
    XLA does not compile cross-replica collectives on CPU devices anyway)."""
    import keras

    model = build_tiny(name, kwargs, seed=None, sync_bn=sync_bn)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    return model


def _train(model, images) -> list[float]:
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(images).batch(GLOBAL_BATCH).repeat()
    history = model.fit(dataset, epochs=STEPS, steps_per_epoch=1, verbose=0)
    return history.history["loss"]


def compare_distributed(name: str, kwargs: Mapping[str, Any], strategy) -> dict:
    """Trains `name` for `STEPS` steps on one device and under `strategy` (2 replicas)
    from the same weights on the same views; returns the largest differences."""
    import keras

    from kerassl.evaluation.features import extract_features

    images = tiny_float_images(GLOBAL_BATCH)
    keras.utils.set_random_seed(0)
    single = build_for_distribution(name, kwargs, sync_bn=False)
    initial = [w.numpy() for w in single.weights]
    with strategy.scope():
        mirrored = build_for_distribution(name, kwargs, sync_bn=True)
        for weight, value in zip(mirrored.weights, initial, strict=True):
            weight.assign(value)
    single_losses = _train(single, images)
    mirrored_losses = _train(mirrored, images)

    def replicas(variable):
        return [np.asarray(v) for v in variable.value.values]

    weight_diffs, replica_diffs = [], []
    for a, b in zip(single.weights, mirrored.weights, strict=True):
        per_replica = replicas(b)
        weight_diffs.append(float(np.abs(a.numpy() - per_replica[0]).max()))
        replica_diffs.append(float(np.abs(per_replica[0] - per_replica[1]).max()))
    moved = max(
        float(np.abs(w.numpy() - start).max())
        for w, start in zip(single.weights, initial, strict=True)
        if w.path.endswith("kernel")
    )
    pixels = (images * 255).round().astype("uint8")
    single_features = extract_features(single.encoder, pixels)
    mirrored_features = extract_features(mirrored.encoder, pixels)
    same_shape = single_features.shape == mirrored_features.shape
    result = {
        "single_losses": single_losses,
        "mirrored_losses": mirrored_losses,
        "weights": max(weight_diffs),
        "replicas": max(replica_diffs),
        "moved": moved,
        "feature_shapes": [list(single_features.shape), list(mirrored_features.shape)],
        "features": float(np.abs(single_features - mirrored_features).max())
        if same_shape
        else None,
    }
    queue = getattr(mirrored, "queue", None)  # MoCo's negatives
    if queue is not None:
        queues = replicas(queue.keys)
        result["queue"] = float(np.abs(single.queue.keys.numpy() - queues[0]).max())
        result["queue_replicas"] = float(np.abs(queues[0] - queues[1]).max())
        result["pointers"] = [int(single.queue.pointer.numpy())] + [
            int(p) for p in replicas(queue.pointer)
        ]
        result["queue_size"] = int(single.queue.size)
        # Keys enqueued per step: the global batch, twice when symmetric.
        result["keys_per_step"] = GLOBAL_BATCH * (2 if getattr(single, "symmetric", False) else 1)
    return result


def check_distributed(result: dict) -> None:
    """Training happened and the 2-replica run reproduced it: the global batch's losses,
    every weight (BatchNorm statistics included) within 2e-5 of one device's and identical
    on both replicas, probe/kNN features with one row per image (not one per replica), and
    a queue (MoCo) filled in global-batch order, identically on every replica."""
    assert result["moved"] > 1e-3, result
    np.testing.assert_allclose(result["single_losses"], result["mirrored_losses"], atol=1e-5)
    assert result["weights"] < 2e-5, result
    assert result["replicas"] == 0.0, result
    assert result["feature_shapes"][0] == result["feature_shapes"][1], result
    assert result["features"] < 2e-4, result
    if "queue" in result:
        assert result["queue"] < 2e-5, result
        assert result["queue_replicas"] == 0.0, result
        pointer = STEPS * result["keys_per_step"] % result["queue_size"]
        assert result["pointers"] == [pointer] * 3, result


if __name__ == "__main__":
    # python -m kerassl.testing.method_contract '{"simclr": {...}, ...}': prints the
    # comparison of every method given, as JSON on the last line.
    from kerassl.distribute import split_cpu

    split_cpu(2)
    import tensorflow as tf

    # One strategy for all methods: a second MirroredStrategy in the same process reuses
    # collective instance keys and aborts.
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    cases = json.loads(sys.argv[1])
    print(json.dumps({name: compare_distributed(name, kw, mirrored) for name, kw in cases.items()}))
