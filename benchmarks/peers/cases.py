"""The cases of the side-by-side benchmark, shared by the driver and both workers.

Plain Python (no TensorFlow, no PyTorch): the kerassl worker runs in kerassl's venv, the
lightly worker in `.venv-peers`, and both read the same definitions from here.

Each case is one kerassl `TrainConfig` setting (method, encoder, augmentation preset)
at one input shape and batch size; `lightly_worker.py` builds the same network, loss,
optimizer and augmentation in PyTorch with lightly's modules.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One side-by-side case.

    Attributes:
        name: the case's name on the command line and in the report.
        method: kerassl method (`kerassl train METHOD`).
        encoder: kerassl encoder name (`--encoder`).
        image_shape: (height, width, channels).
        batch_size: images per step (each step makes two views of each).
        preset: kerassl augmentation preset (`--augment`); the lightly worker implements
            the ops of the `fashion` preset only (crop, flip, brightness/contrast).
        steps: timed steps per worker (the kerassl worker rounds it to what
            `measure_step_seconds` times, see `kerassl_worker.py`).
    """

    name: str
    method: str
    encoder: str
    image_shape: tuple[int, int, int]
    batch_size: int
    preset: str = "fashion"
    steps: int = 7


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        # kerassl's default: `kerassl train simclr` on Fashion-MNIST.
        Case("simclr", "simclr", "cnn", (28, 28, 1), 256),
        Case("moco", "moco", "cnn", (28, 28, 1), 256),
        Case("barlow_twins", "barlow_twins", "cnn", (28, 28, 1), 256),
        # CIFAR-sized ResNet-18 (kerassl's CIFAR stem: 3x3 stride-1 conv, no max-pool).
        # Batch 32, not kerassl's default 256: a step is ~6.7 GFLOP per image (two views,
        # forward + backward), ~40 s at 256 on this 2-core CPU, and each round times 4 forms.
        Case("resnet18", "simclr", "resnet18", (32, 32, 3), 32, steps=5),
    )
}

# Settings both sides use: kerassl's defaults (kerassl/config.py `TrainConfig`, from which
# the kerassl worker builds) except the learning rate, which the worker passes (1e-3, the
# default when these cases were measured; the default is 2e-3 since; no work depends on it).
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-6  # > 0: kerassl's "adam" is AdamW (kerassl/optimizers.py)
TEMPERATURE = 0.2
MOCO_MOMENTUM = 0.99
QUEUE_SIZE = 4096
BN_GROUPS = 4  # MoCo's Shuffling BN groups
BT_LAMBDA = 5e-3
PROJECTION_DIM = 128
HIDDEN_DIM = 512
PROJECTOR_DIMS = (1024, 1024, 1024)
# The `fashion` preset (kerassl/data/presets.py).
CROP_SCALE = (0.3, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
BRIGHTNESS = 0.8
CONTRAST = 0.8
COLOR_JITTER_PROB = 0.8


def conv_dense_flops(layers: list[tuple]) -> float:
    """Forward FLOPs (2 per multiply-add) of one image through conv and dense layers.

    Args:
        layers: ("conv", out_h, out_w, k, c_in, c_out) or ("dense", n_in, n_out) rows.
    """
    total = 0.0
    for layer in layers:
        if layer[0] == "conv":
            _, height, width, k, c_in, c_out = layer
            total += 2.0 * height * width * k * k * c_in * c_out
        else:
            _, n_in, n_out = layer
            total += 2.0 * n_in * n_out
    return total


def step_flops(case: Case, encoder_layers: list[tuple], head_layers: list[tuple]) -> float:
    """FLOPs of one train step, counted analytically from the conv and dense layers.

    Forward x3 for forward + backward of each trained pass (the usual estimate: the
    backward is two products per forward product; it overcounts the first conv, whose
    input gradient is not needed); MoCo's key encoder and head only run forward (x1).
    Losses, BatchNorm, pooling, augmentation and the optimizer are not counted (the
    similarity matmuls are < 1 % of the conv FLOPs here).
    """
    per_image = conv_dense_flops(encoder_layers) + conv_dense_flops(head_layers)
    views = 2 * case.batch_size
    if case.method == "moco":
        return 3 * per_image * case.batch_size + per_image * case.batch_size
    return 3 * per_image * views
