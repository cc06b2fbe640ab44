"""The supervised baseline under two stopping rules, side by side: test top-1 at 100 labels.

- `val_loss`: the rule before `kerassl.stopping` (Keras' EarlyStopping on the validation
  loss, best weights restored).
- `best_epoch`: today's rule (`kerassl.stopping.BestEpoch`: smoothed validation accuracy,
  loss breaking ties).

Both with today's ReduceLROnPlateau on the training loss (it was on the validation loss).

Each dataset × seed trains `kerassl train`'s default baseline (the CNN, label-set
augmentation, 80 training + 20 validation labels) under both rules and scores it on the
test split (here the test split is the *measurement*, never a choice of the run).
`colour` is a hard synthetic 32-px colour set made from Fashion-MNIST (objects scaled,
placed and tinted on textured colour backgrounds): the case where the validation loss is
lowest at the first epoch. Pass `idx:PATH` and other dataset names to add real sets.

Usage:
    python benchmarks/stopping.py --datasets digits,fashion_mnist,colour --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kerassl.supervised as supervised  # noqa: E402
from kerassl.benchmarking.machine import numpy_matmul_gflops  # noqa: E402
from kerassl.data.presets import label_flip  # noqa: E402
from kerassl.data.registry import default_preset, load_dataset  # noqa: E402
from kerassl.data.splits import label_split, parse_labels  # noqa: E402


class ValLossStopping(keras.callbacks.EarlyStopping):
    """The previous rule: lowest validation loss (training loss without validation)."""

    def __init__(self, patience: int, validation: bool):
        monitor = "val_loss" if validation else "loss"
        super().__init__(monitor, patience=patience, restore_best_weights=True)


@contextmanager
def rule(name: str):
    """Trains the baseline under the named rule for the duration of the block."""
    saved = supervised.BestEpoch
    if name == "val_loss":
        supervised.BestEpoch = ValLossStopping
    try:
        yield
    finally:
        supervised.BestEpoch = saved


def colour_set(folder: Path, train: int = 20000, test: int = 5000) -> str:
    """Writes the synthetic colour set as an .npz; returns its `npz:` name."""
    import tensorflow as tf

    fashion = load_dataset("fashion_mnist")
    rng = np.random.default_rng(0)

    def make(x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), 32, 32, 3), np.uint8)
        for i, image in enumerate(x.astype(np.float32) / 255):
            size = int(rng.integers(18, 29))
            texture = tf.image.resize(rng.random((1, 8, 8, 3)), (32, 32)).numpy()[0] * 0.5
            canvas = np.clip(rng.random((1, 1, 3)) * 0.8 + texture - 0.25, 0, 1)
            glyph = tf.image.resize(image, (size, size)).numpy()
            y0, x0 = rng.integers(0, 33 - size, 2)
            patch = canvas[y0 : y0 + size, x0 : x0 + size]
            colour = rng.random(3) * 0.9 + 0.1
            canvas[y0 : y0 + size, x0 : x0 + size] = patch * (1 - glyph) + glyph * colour
            out[i] = (canvas * 255).astype(np.uint8)
        return out

    path = folder / "colour.npz"
    np.savez(
        path,
        train_images=make(fashion.x_train[:train]),
        train_labels=fashion.y_train[:train],
        test_images=make(fashion.x_test[:test]),
        test_labels=fashion.y_test[:test],
    )
    return f"npz:{path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,fashion_mnist,colour")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--labels", default="100")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"numpy float32 matmul 2048²: {numpy_matmul_gflops():.0f} GFLOP/s")
    print("dataset          rule        top-1 mean ± std (per seed)           epochs  seconds")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            source = colour_set(Path(tmp)) if name == "colour" else name
            data = load_dataset(source)
            flip = label_flip(default_preset(source))
            for rule_name in ("val_loss", "best_epoch"):
                scores, epochs, started = [], [], time.perf_counter()
                for seed in seeds:
                    split = label_split(data.y_train, parse_labels(args.labels), seed, 0.2)
                    with rule(rule_name):
                        result, _ = supervised.supervised_baseline(
                            data, split, flip=flip, seed=seed
                        )
                    scores.append(100 * result["top1"])
                    epochs.append(result["epochs_run"])
                spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
                each = " ".join(f"{s:.1f}" for s in scores)
                print(
                    f"{name[:16]:16} {rule_name:11} {statistics.mean(scores):5.1f} ± "
                    f"{spread:4.1f} ({each})".ljust(66)
                    + f"{statistics.mean(epochs):6.0f}  {time.perf_counter() - started:7.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
