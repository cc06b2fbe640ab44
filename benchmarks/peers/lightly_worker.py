"""PyTorch + lightly side of the side-by-side benchmark: one case's train step, eager or
`torch.compile`d, printed as one JSON line.

Run with the peer venv (`make bench-peers` creates it; never a kerassl dependency):
`.venv-peers/bin/python benchmarks/peers/lightly_worker.py --case simclr --mode eager`.

The step does the same work as kerassl's (`kerassl_worker.py`), layer for layer:

- Encoder: kerassl's `cnn` (`kerassl/models/encoders.py` `small_cnn`: 3 blocks of
  2 x (conv3x3 no-bias, BatchNorm, ReLU), 32/64/128 filters, a 2x2 max-pool after each
  block while the map is >= 2 px, global average pooling → 128-d) or kerassl's `resnet18`
  (the CIFAR variant: 3x3 stride-1 stem, no max-pool, 4 stages of 2 basic blocks
  64/128/256/512, 1x1 projection shortcuts, global average pooling → 512-d). BatchNorm
  momentum 0.1 in PyTorch's convention = 0.9 in Keras', epsilon 1e-3 as Keras'.
- Head: kerassl's `mlp` head (`kerassl/models/heads.py`: Dense(512, no bias), BN, ReLU,
  Dense(128) with bias) as lightly's `ProjectionHead` blocks (lightly's
  `SimCLRProjectionHead(batch_norm=True)` would also put a BatchNorm on the output, and
  `MoCoProjectionHead` has none on the hidden layer: neither is kerassl's head). Barlow
  Twins: kerassl's projector 1024-1024-1024 (`kerassl/models/barlow_twins.py`), which is
  lightly's `BarlowTwinsProjectionHead(128, 1024, 1024)` without its last layer's bias.
- Loss: lightly's `NTXentLoss(temperature=0.2)` (SimCLR; both views of the batch as
  negatives), `NTXentLoss(0.2, memory_bank_size=(4096, 128))` for MoCo (queries against
  their keys and the queue of 4096, InfoNCE as kerassl's `info_nce`), lightly's
  `BarlowTwinsLoss(lambda_param=5e-3)`.
- MoCo: kerassl's default Shuffling BN with 4 groups (queries encoded in 4 interleaved
  groups of 64, keys in 4 groups of a shuffled copy, then unshuffled), the key encoder
  and head a deep copy in training mode (batch statistics), updated by lightly's
  `update_momentum(m=0.99)` after the optimizer step (parameters only; kerassl also
  averages the BatchNorm statistics: 2 x 1.6 k numbers).
- Optimizer: `torch.optim.AdamW(lr=1e-3, weight_decay=1e-6, eps=1e-7)`, the biases and
  BatchNorm scales/offsets excluded from weight decay, and a per-step learning-rate
  schedule (linear warmup + cosine, as kerassl's `WarmupCosine`): what kerassl's default
  "adam" with weight decay 1e-6 builds (`keras.optimizers.AdamW`, epsilon 1e-7).
- Augmentation, inside the timed step on the batch tensor (not lightly's PIL transforms
  in a DataLoader, which would be other work on other threads): kerassl's `fashion`
  preset, two views per image, each the same ops as `kerassl.data.augment.Augmenter`:
  per image one random resized crop (area 30-100 %, aspect log-uniform in [3/4, 4/3]
  within the range keeping the crop inside the image) and a horizontal flip (p = 0.5)
  as ONE affine map resampled bilinearly with reflection at the borders
  (`F.affine_grid` + `F.grid_sample`, where kerassl gathers the 4 neighbours), then with
  p = 0.8 brightness and contrast jitter (factors in [0.2, 1.8], each clipped to [0, 1])
  in a random order per image, computed as kerassl's `color_jitter` does it (one stage
  per op position, each image selecting its op's factor), then a clip to [0, 1].
- Data: a batch of uint8 images gathered from a pool and divided by 255 each step (as
  kerassl's `tf.data` pipeline does), the loss read back every step (as `fit` does).

`torch.compile` (inductor, default mode) compiles the step's forward (augmentation,
networks, loss); backward runs through the compiled graph, the optimizer step eagerly.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from cases import (  # noqa: E402
    BN_GROUPS,
    BRIGHTNESS,
    BT_LAMBDA,
    CASES,
    COLOR_JITTER_PROB,
    CONTRAST,
    CROP_RATIO,
    CROP_SCALE,
    HIDDEN_DIM,
    LEARNING_RATE,
    MOCO_MOMENTUM,
    PROJECTION_DIM,
    PROJECTOR_DIMS,
    QUEUE_SIZE,
    TEMPERATURE,
    WEIGHT_DECAY,
    Case,
    step_flops,
)
from torch import nn  # noqa: E402

BN_MOMENTUM = 0.1  # PyTorch's convention: 1 - Keras' 0.9
BN_EPSILON = 1e-3  # Keras' default


def bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class SmallCNN(nn.Module):
    """kerassl's `small_cnn` (the default `cnn` encoder), layer for layer."""

    def __init__(self, channels: int, size: int, filters=(32, 64, 128), convs_per_block=2):
        super().__init__()
        layers: list[nn.Module] = []
        for width in filters:
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), bn2d(width)]
                layers.append(nn.ReLU(inplace=True))
                channels = width
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    """kerassl's `_basic_block`: conv3x3-BN-ReLU-conv3x3-BN + (1x1 conv-BN) shortcut, ReLU."""

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = bn2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = bn2d(width)
        self.shortcut = None
        if stride != 1 or c_in != width:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, width, 1, stride, bias=False), bn2d(width)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)), inplace=True)


class ResNet18(nn.Module):
    """kerassl's `resnet18`: the CIFAR variant (3x3 stride-1 stem, no max-pool)."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False), bn2d(width), nn.ReLU(True)
        )
        blocks, c_in = [], width
        for stage in range(4):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(c_in, width * 2**stage, stride))
                c_in = width * 2**stage
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


def build_head(case: Case, input_dim: int) -> nn.Module:
    from lightly.models.modules.heads import ProjectionHead

    if case.method == "barlow_twins":
        a, b, c = PROJECTOR_DIMS
        return ProjectionHead(
            [
                (input_dim, a, nn.BatchNorm1d(a), nn.ReLU()),
                (a, b, nn.BatchNorm1d(b), nn.ReLU()),
                (b, c, None, None, False),
            ]
        )
    return ProjectionHead(
        [
            (input_dim, HIDDEN_DIM, nn.BatchNorm1d(HIDDEN_DIM), nn.ReLU()),
            (HIDDEN_DIM, PROJECTION_DIM, None, None),
        ]
    )


def augment(x: torch.Tensor) -> torch.Tensor:
    """One random view of a [B, C, H, W] batch in [0, 1]: kerassl's `fashion` preset."""
    batch, _, height, width = x.shape
    u = torch.rand(batch, 8, device=x.device)
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u[:, 0]
    log_lo = torch.clamp(torch.log(area), min=math.log(CROP_RATIO[0]))
    log_hi = torch.clamp(-torch.log(area), max=math.log(CROP_RATIO[1]))
    log_hi = torch.maximum(log_hi, log_lo)
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    crop_w = torch.clamp(torch.sqrt(area * ratio), max=1.0)
    crop_h = torch.clamp(torch.sqrt(area / ratio), max=1.0)
    # Normalised coordinates (align_corners=False): a centred shift of s pixels is 2s/size.
    shift_x = (u[:, 2] - 0.5) * (1.0 - crop_w) * 2.0
    shift_y = (u[:, 3] - 0.5) * (1.0 - crop_h) * 2.0
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(area)
    theta = torch.stack(
        [
            torch.stack([crop_w * flip, zero, shift_x], dim=-1),
            torch.stack([zero, crop_h, shift_y], dim=-1),
        ],
        dim=1,
    )  # [B, 2, 3]
    grid = F.affine_grid(theta, [batch, x.shape[1], height, width], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Colour jitter: two stages, each image applying brightness or contrast at each.
    b = (1.0 - BRIGHTNESS) + 2.0 * BRIGHTNESS * u[:, 5]
    c = (1.0 - CONTRAST) + 2.0 * CONTRAST * u[:, 6]
    brightness_first = u[:, 7] < 0.5  # a random order of the two ops per image
    jittered = x
    for stage in range(2):
        use_brightness = brightness_first if stage == 0 else ~brightness_first
        factor = torch.where(use_brightness, b, c)[:, None, None, None]
        gain = torch.where(use_brightness, torch.ones_like(c), c)[:, None, None, None]
        mean = jittered.mean(dim=(2, 3), keepdim=True)
        jittered = torch.clamp(factor * jittered + (1.0 - gain) * mean, 0.0, 1.0)
    apply = torch.rand(batch, device=x.device) < COLOR_JITTER_PROB
    x = torch.where(apply[:, None, None, None], jittered, x)
    return torch.clamp(x, 0.0, 1.0)


def in_groups(fn, x: torch.Tensor, groups: int) -> torch.Tensor:
    """`fn` on `groups` interleaved groups of rows, rows back in order (kerassl's)."""
    parts = [fn(x[g::groups]) for g in range(groups)]
    return torch.stack(parts, dim=1).reshape(-1, parts[0].shape[-1])


class Method(nn.Module):
    """The case's networks and loss; `forward(images)` is the loss of one step."""

    def __init__(self, case: Case):
        super().__init__()
        from lightly.loss import BarlowTwinsLoss, NTXentLoss

        height, _, channels = case.image_shape
        self.case = case
        if case.encoder == "cnn":
            self.encoder, dim = SmallCNN(channels, height), 128
        else:
            self.encoder, dim = ResNet18(channels), 512
        self.head = build_head(case, dim)
        if case.method == "simclr":
            self.criterion = NTXentLoss(temperature=TEMPERATURE)
        elif case.method == "moco":
            self.criterion = NTXentLoss(TEMPERATURE, memory_bank_size=(QUEUE_SIZE, PROJECTION_DIM))
            self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
            self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        else:
            self.criterion = BarlowTwinsLoss(lambda_param=BT_LAMBDA)

    def project(self, x):
        return self.head(self.encoder(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        v1, v2 = augment(x), augment(x)
        n = x.shape[0]
        if self.case.method == "simclr":
            z = self.project(torch.cat([v1, v2]))  # one pass: BatchNorm sees all 2N views
            return self.criterion(z[:n], z[n:])
        if self.case.method == "barlow_twins":
            return self.criterion(self.project(v1), self.project(v2))  # BN per view
        q = in_groups(self.project, v1, BN_GROUPS)
        with torch.no_grad():
            order = torch.randperm(n, device=x.device)
            shuffled = in_groups(lambda v: self.key_head(self.key_encoder(v)), v2[order], BN_GROUPS)
            k = shuffled[torch.argsort(order)]
        return self.criterion(q, k)

    def after_step(self):
        if self.case.method == "moco":
            from lightly.models.utils import update_momentum

            update_momentum(self.encoder, self.key_encoder, MOCO_MOMENTUM)
            update_momentum(self.head, self.key_head, MOCO_MOMENTUM)


def make_optimizer(model: Method, total_steps: int = 1000, warmup_steps: int = 10):
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim > 1]
    no_decay = [p for p in trained if p.ndim <= 1]  # biases, BatchNorm scales and offsets
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0}],
        lr=LEARNING_RATE,
        eps=1e-7,
    )

    def factor(step):
        if step < warmup_steps:
            return step / warmup_steps
        progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def layer_rows(model: nn.Module, shape) -> list[tuple]:
    """("conv", h, w, k, c_in, c_out) / ("dense", n_in, n_out) of a forward, in order."""
    rows: list[tuple] = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            _, c_out, height, width = output.shape
            rows.append(("conv", height, width, module.kernel_size[0], module.in_channels, c_out))
        elif isinstance(module, nn.Linear):
            rows.append(("dense", module.in_features, module.out_features))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, shape[2], shape[0], shape[1]))
    model.train()
    for handle in handles:
        handle.remove()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--mode", choices=("eager", "compile"), default="eager")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: case's)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    case = CASES[args.case]
    steps = args.steps or case.steps
    model = Method(case)
    encoder_rows = layer_rows(model.encoder, case.image_shape)
    head_rows = _head_rows(model.head)
    flops = step_flops(case, encoder_rows, head_rows)
    params = sum(p.numel() for m in (model.encoder, model.head) for p in m.parameters())
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, schedule = make_optimizer(model)
    loss_of = torch.compile(model) if args.mode == "compile" else model
    generator = torch.Generator().manual_seed(0)
    height, width, channels = case.image_shape
    pool = torch.randint(0, 256, (4 * case.batch_size, channels, height, width), dtype=torch.uint8)

    def step():
        index = torch.randint(0, len(pool), (case.batch_size,), generator=generator)
        images = pool[index]
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = loss_of(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        model.after_step()
        return loss.item()

    started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warm = time.perf_counter()
    for _ in range(steps):
        loss = step()
    seconds = (time.perf_counter() - warm) / steps
    result = {
        "side": "lightly",
        "case": case.name,
        "form": args.mode + ("-channels-last" if args.channels_last else ""),
        "step_seconds": seconds,
        "images_per_second": case.batch_size / seconds,
        "timed_steps": steps,
        "warmup_steps": args.warmup,
        "startup_seconds": warm - started,
        "wall_seconds": time.perf_counter() - started,
        "flops_per_step": flops,
        "trainable_params": params,
        "loss": loss,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    import lightly

    result["lightly"] = lightly.__version__
    print(json.dumps(result), flush=True)


def _head_rows(head: nn.Module) -> list[tuple]:
    return [
        ("dense", m.in_features, m.out_features) for m in head.modules() if isinstance(m, nn.Linear)
    ]


if __name__ == "__main__":
    main()
