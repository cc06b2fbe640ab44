"""The streamed input pipeline of a `folder:` dataset against the SimCLR train step it feeds.

Writes synthetic natural-looking JPEGs (random multi-scale colour textures of varied sizes,
120-200 px, in class subfolders) into a temporary folder, loads it as `folder:` at
`--image-size` through the on-disk cache (`load_dataset(..., stream=True)`) and prints, in
one run (ratios within one run are what count on a shared machine):

- the cache build (first load: parallel PIL decode + `preprocess_images`), images/s, and
  the second load (the cache read back: memmaps, no decode), seconds;
- the pretraining input as `kerassl train` reads it (`pretraining._pretrain_data`: batches
  gathered by index from the memmap, prefetched), images/s. Augmentation is not in it: it
  runs inside the train step (`SSLModel.train_step`), so the step's time includes it;
- the default SimCLR train step on these images (`kerassl train`'s defaults, timed by
  `measure_step_seconds` as `--time-budget` times it), images/s;
- the ratio pipeline / step (the input keeps up when it is well above 1), and NumPy's
  2048² float32 matmul GFLOP/s for the machine.

Usage: python benchmarks/input_pipeline.py [--images 3000] [--image-size 96]
       [--batch-size 256] [--steps 4] [--epochs 6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from kerassl.benchmarking.machine import numpy_matmul_gflops  # noqa: E402


def write_images(root: Path, count: int, classes: int = 10, seed: int = 0) -> None:
    """`count` JPEGs of random sizes (120-200 px a side) in `classes` subfolders: colour
    textures summed over octaves (smooth shapes plus fine grain, as photos have), each
    class with its own tint."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    tints = rng.uniform(0.5, 1.5, (classes, 3))
    for label in range(classes):
        (root / f"class{label:02d}").mkdir(parents=True)
    for index in range(count):
        label = index % classes
        width, height = (int(v) for v in rng.integers(120, 201, 2))
        texture = np.zeros((height, width, 3), np.float32)
        for octave, weight in ((4, 0.5), (16, 0.3), (64, 0.2)):
            coarse = rng.random((octave, octave, 3), dtype=np.float32) * 255
            layer = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), 2)
            texture += weight * np.asarray(layer, np.float32)
        pixels = np.clip(texture * tints[label], 0, 255).astype(np.uint8)
        path = root / f"class{label:02d}" / f"{index:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)


def pipeline_rate(dataset, batches: int) -> float:
    """Images/s read from `dataset` over `batches` batches, after one warm-up batch."""
    iterator = iter(dataset)
    next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        images += int(next(iterator).shape[0])
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="JPEG files to write")
    parser.add_argument("--image-size", type=int, default=96, help="side the model sees")
    parser.add_argument("--batch-size", type=int, default=256, help="pretraining batch")
    parser.add_argument("--steps", type=int, default=4, help="train steps per timed epoch")
    parser.add_argument("--epochs", type=int, default=6, help="epochs the pipeline is read")
    args = parser.parse_args()

    print(f"NumPy float32 2048² matmul: {numpy_matmul_gflops():.1f} GFLOP/s")
    from kerassl.config import TrainConfig
    from kerassl.data.registry import load_dataset
    from kerassl.data.splits import label_split, parse_labels
    from kerassl.plan import resolve, unlabeled_pool
    from kerassl.pretraining import _pretrain_data, measure_step_seconds

    with tempfile.TemporaryDirectory(prefix="kerassl-input-") as scratch:
        root, store = Path(scratch) / "photos", Path(scratch) / "cache"
        start = time.perf_counter()
        write_images(root, args.images)
        print(f"wrote {args.images} JPEGs (120-200 px) in {time.perf_counter() - start:.1f} s")

        name = f"folder:{root}"
        start = time.perf_counter()
        data = load_dataset(name, image_size=args.image_size, stream=True, cache_dir=store)
        build = time.perf_counter() - start
        total = len(data.x_train) + len(data.x_test)
        print(
            f"cache build (first load, {os.cpu_count()} decode threads): {total} images in "
            f"{build:.1f} s, {total / build:.0f} images/s"
        )
        start = time.perf_counter()
        data = load_dataset(name, image_size=args.image_size, stream=True, cache_dir=store)
        print(
            f"second load (from the cache, {type(data.x_train).__name__}): "
            f"{time.perf_counter() - start:.2f} s"
        )

        config = TrainConfig(dataset=name, image_size=args.image_size, batch_size=args.batch_size)
        config.validate()
        split = label_split(
            data.y_train, parse_labels(config.labels), config.seed, config.validation
        )
        plan = resolve(config, data, split, unlabeled_pool(data.x_train, None, config.seed))
        batches = args.epochs * plan.steps_per_epoch
        rate = pipeline_rate(_pretrain_data(plan, 0, args.epochs + 1, 0), batches)
        print(
            f"streamed pretraining input (memmap, batch {args.batch_size}, {batches} batches): "
            f"{rate:.0f} images/s"
        )
        timing = measure_step_seconds(plan, steps=args.steps)
        step_rate = args.batch_size / timing.step
        print(
            f"default SimCLR train step ({config.encoder} encoder, {args.image_size} px, "
            f"augmentation inside, XLA {'on' if plan.jit_compile else 'off'}): "
            f"{timing.step:.2f} s/step, {step_rate:.1f} images/s"
        )
        print(f"pipeline / step: {rate / step_rate:.0f}x")


if __name__ == "__main__":
    main()
