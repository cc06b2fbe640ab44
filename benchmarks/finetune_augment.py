"""Fine-tuning an SSL encoder with and without the baselines' label-set augmentation.

For a finished `kerassl train` run, fine-tunes its encoder as the `finetune` protocol does
(LP-FT head from the probe of the 80 training labels, encoder at 0.1x the head's rate, 20
validation labels) for a fixed number of epochs under each augmentation, and prints the
training loss and accuracy, the validation accuracy and the top-1 on the first 2,000 test
images every 20 epochs. A diagnostic: the test split is read here to *show* the effect,
never by kerassl to choose anything. It is why `finetune` and `distill` train on
un-augmented images (`kerassl/evaluation/finetune.py`).

Usage:
    python benchmarks/finetune_augment.py runs/simclr-fashion_mnist-... --epochs 100
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from kerassl.benchmarking.machine import numpy_matmul_gflops  # noqa: E402
from kerassl.evaluation.finetune import FineTuner  # noqa: E402
from kerassl.evaluation.probes import fit_linear_probe  # noqa: E402
from kerassl.evaluation.protocols import FeatureCache, copy_encoder  # noqa: E402
from kerassl.run_dir import open_run  # noqa: E402
from kerassl.supervised import evaluate_classifier, label_augmenter, train_classifier  # noqa: E402


class Report(keras.callbacks.Callback):
    """Prints the fit's figures and the fine-tuned network's test top-1 every 20 epochs."""

    def __init__(self, name: str, finetuner: FineTuner, x_test, y_test):
        super().__init__()
        self.name, self.finetuner, self.x_test, self.y_test = name, finetuner, x_test, y_test

    def on_epoch_end(self, epoch, logs=None):
        if epoch % 20 == 0:
            test = evaluate_classifier(self.finetuner.inference_model(), self.x_test, self.y_test)
            print(
                f"  {self.name:24} epoch {epoch + 1:3}: loss {logs['loss']:.3f} "
                f"accuracy {logs['accuracy']:.2f} validation {logs['val_accuracy']:.2f} "
                f"test {100 * test['top1']:.1f} %",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--flip", action="store_true", help="flips in the label augmentation")
    args = parser.parse_args()
    run = open_run(args.run)
    data, encoder, split = run.load_data(), run.load("encoder"), run.split()
    cache = FeatureCache(encoder, data.x_train, data.x_test)
    x, y = data.x_train[split.labeled], data.y_train[split.labeled]
    validation = (data.x_train[split.validation], data.y_train[split.validation])
    x_test, y_test = data.x_test[:2000], data.y_test[:2000]
    print(f"numpy float32 matmul 2048²: {numpy_matmul_gflops():.0f} GFLOP/s; {args.run.name}")
    for name in ("label-set augmentation", "none"):
        probe = fit_linear_probe(cache.train(split.labeled), y, data.num_classes, 0)
        keras.utils.set_random_seed(0)
        model = FineTuner(copy_encoder(encoder), probe.dense(), 0.1)

        augmenter = label_augmenter(flip=args.flip, seed=0) if name != "none" else None
        train_classifier(
            model,
            x,
            y,
            validation,
            epochs=args.epochs,
            batch_size=64,
            augmenter=augmenter,
            patience=args.epochs + 1,
            callbacks=[Report(name, model, x_test, y_test)],
        )


if __name__ == "__main__":
    main()
