"""MirroredStrategy on 2 logical CPU devices gives the single-device result, for every method.

The CPU can only be split before TensorFlow initialises its devices, so the comparison runs
in a fresh interpreter: this file executed as a script (`python tests/test_distributed.py
METHOD…`) trains each method twice from identical weights on identical views (augmentation
preset "none") — on one device, and under MirroredStrategy with 2 replicas of 4 images and
synchronised BatchNorm — and prints the largest differences as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GLOBAL_BATCH = 8
STEPS = 2


def _build(method: str, sync_bn: bool):
    import keras

    from kerassl.data.augment import make_augmenter
    from kerassl.models.barlow_twins import BarlowTwins, build_projector
    from kerassl.models.encoders import build_encoder
    from kerassl.models.heads import build_head
    from kerassl.models.moco import MoCo
    from kerassl.models.simclr import SimCLR

    encoder = build_encoder("cnn", (16, 16, 1), filters=(8, 16), convs_per_block=1, sync_bn=sync_bn)
    features = encoder.output_shape[-1]
    augmenter = make_augmenter("none")
    if method == "simclr":
        head = build_head("mlp", features, output_dim=16, hidden_dim=32, sync_bn=sync_bn)
        model = SimCLR(encoder, head, augmenter, temperature=0.5)
    elif method == "moco":
        head = build_head("mlp", features, output_dim=16, hidden_dim=32, sync_bn=sync_bn)
        # Queue of 12 with 8 keys a step: the second step wraps around.
        model = MoCo(encoder, head, augmenter, queue_size=12, bn_groups=2, momentum=0.9, seed=3)
    else:
        head = build_projector(features, (32, 32, 32), sync_bn=sync_bn)
        model = BarlowTwins(encoder, head, augmenter, lambda_=0.01)
    # No XLA on either side: XLA's random bits differ from TensorFlow's kernels', and
    # MoCo's key shuffle is random.
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    return model


def _train(model, images):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(images).batch(GLOBAL_BATCH).repeat()
    history = model.fit(dataset, epochs=STEPS, steps_per_epoch=1, verbose=0)
    return history.history["loss"]


def compare(method: str, strategy) -> dict:
    """Trains `method` on one device and under `strategy` (2 replicas); returns differences."""
    import keras
    import numpy as np

    from kerassl.evaluation.features import extract_features
    from kerassl.testing.synthetic import tiny_images

    images = tiny_images(GLOBAL_BATCH, 16)[0].astype("float32") / 255
    keras.utils.set_random_seed(0)
    single = _build(method, sync_bn=False)
    initial = [w.numpy() for w in single.weights]
    with strategy.scope():
        mirrored = _build(method, sync_bn=True)
        for weight, value in zip(mirrored.weights, initial, strict=True):
            weight.assign(value)

    single_losses = _train(single, images)
    mirrored_losses = _train(mirrored, images)

    def replicas(variable):
        return [np.asarray(v) for v in variable.value.values]

    weight_diffs = []
    replica_diffs = []
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
    result = {
        "single_losses": single_losses,
        "mirrored_losses": mirrored_losses,
        "weights": max(weight_diffs),
        "replicas": max(replica_diffs),
        "moved": moved,
        "feature_shapes": [list(single_features.shape), list(mirrored_features.shape)],
        "features": float(np.abs(single_features - mirrored_features).max())
        if single_features.shape == mirrored_features.shape
        else None,
    }
    if method == "moco":
        queues = replicas(mirrored.queue.keys)
        pointers = replicas(mirrored.queue.pointer)
        result["queue"] = float(np.abs(single.queue.keys.numpy() - queues[0]).max())
        result["queue_replicas"] = float(np.abs(queues[0] - queues[1]).max())
        result["pointers"] = [int(single.queue.pointer.numpy())] + [int(p) for p in pointers]
    return result


METHODS = ("simclr", "moco", "barlow_twins")


@pytest.fixture(scope="module")
def results() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    process = subprocess.run(
        [sys.executable, __file__, *METHODS], capture_output=True, text=True, env=env, timeout=600
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_two_replicas_match_one_device(results, method):
    result = results[method]
    # Training happened, and the 2-replica run reproduced it: losses of the global batch,
    # every weight (BatchNorm statistics included) identical on both replicas.
    assert result["moved"] > 1e-3, result
    assert result["single_losses"] == pytest.approx(result["mirrored_losses"], abs=1e-5), result
    assert result["weights"] < 2e-5, result
    assert result["replicas"] == 0.0, result
    # Probe/kNN features of the mirrored encoder: one row per image, not one per replica.
    assert result["feature_shapes"][0] == result["feature_shapes"][1], result
    assert result["features"] < 2e-4, result
    if method == "moco":
        # Keys of both replicas enter the queue in global-batch order, on every replica.
        assert result["queue"] < 2e-5, result
        assert result["queue_replicas"] == 0.0, result
        assert result["pointers"] == [(STEPS * GLOBAL_BATCH) % 12] * 3, result


if __name__ == "__main__":
    from kerassl.distribute import split_cpu

    split_cpu(2)
    import tensorflow as tf

    # One strategy for all methods: a second MirroredStrategy in the same process reuses
    # collective instance keys and aborts.
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(json.dumps({method: compare(method, mirrored) for method in sys.argv[1:]}))
