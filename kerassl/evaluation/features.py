"""Feature extraction: a frozen model run over uint8 images, batch by batch.

The one place images meet a frozen network for evaluation: the linear probe, the kNN
monitor and the supervised baselines' test scores all embed (or classify) through
`extract_features`. Images stay uint8 in memory and are scaled to [0, 1] one batch at a
time, so no float32 copy of a split is ever made.
"""

from __future__ import annotations

import keras
import numpy as np


def extract_features(
    encoder: keras.Model, x_uint8: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Embeds images with a frozen encoder (inference mode, no augmentation).

    Args:
        encoder: model mapping [0, 1] float images to [D] vectors (a classifier's [K]
            probabilities are its "features" too).
        x_uint8: uint8 images [N, H, W, C], scaled to [0, 1] batch by batch (float images
            are taken as already scaled).
        batch_size: images per forward pass.

    Returns:
        float32 [N, D] features (trailing output axes flattened into D).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    x = np.asarray(x_uint8)
    scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    if len(x) == 0:
        return np.zeros((0, encoder.output_shape[-1]), np.float32)
    predict = encoder.predict_on_batch
    if encoder.distribute_strategy.num_replicas_in_sync > 1:
        # An encoder built under a multi-replica strategy: `predict_on_batch` would run the
        # whole batch on every replica and concatenate the replicas' outputs (replicas x N
        # rows; under MultiWorkerMirroredStrategy gathered from every worker, a collective
        # that hangs unless all workers call it). Every replica holds the same weights, so
        # the local copy embeds the batch alone.
        def predict(batch):
            return encoder(batch, training=False)

    chunks = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].astype(np.float32) * scale
        chunks.append(np.asarray(predict(batch), np.float32))
    features = np.concatenate(chunks)
    return features.reshape(len(x), -1)
