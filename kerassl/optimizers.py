"""Optimizers and learning-rate schedules for self-supervised pretraining.

`LARS` (You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional Networks") as
SimCLR uses it, the linear-warmup + cosine schedule of SimCLR/MoCo v2/Barlow Twins, and
`make_optimizer`, which turns an optimizer name into an object.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from kerassl.catalog import OPTIMIZERS, known
from kerassl.errors import UserError

# Substrings of the variable names excluded from weight decay by `make_optimizer`: biases and
# BatchNorm/LayerNorm scales and offsets (SimCLR excludes "bias" and "batch_normalization").
NO_DECAY_NAMES = ("bias", "gamma", "beta")


@keras.saving.register_keras_serializable(package="kerassl")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `base_lr`, then cosine decay to `final_lr` at `total_steps`.

    As in SimCLR (Chen et al. 2020, §B.1: "linear warmup for the first 10 epochs, and
    decay the learning rate with the cosine decay schedule without restarts"):

        lr(t) = base_lr · t / warmup_steps                                   if t < warmup
        lr(t) = final_lr + ½ (base_lr − final_lr)(1 + cos(π (t − warmup) / (total − warmup)))

    and `final_lr` after `total_steps`. Step t counts optimizer updates from 0 (so the
    first warmup update has learning rate 0, as in SimCLR's implementation).

    Args:
        base_lr: peak learning rate (> 0), reached at the end of the warmup.
        total_steps: number of optimizer steps of the whole run (>= 1).
        warmup_steps: linear-warmup steps, 0 <= warmup_steps <= total_steps.
        final_lr: learning rate at the end (>= 0).

    Example:
    ```python
    schedule = WarmupCosine(0.3 * batch_size / 256, total_steps=epochs * steps,
                            warmup_steps=10 * steps)
    optimizer = LARS(schedule, weight_decay=1e-6)
    ```
    """

    def __init__(
        self, base_lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0
    ):
        if not base_lr > 0:
            raise ValueError(f"base_lr must be > 0. Received: base_lr={base_lr}")
        if not total_steps >= 1:
            raise ValueError(f"total_steps must be >= 1. Received: total_steps={total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                "warmup_steps must be in [0, total_steps]. Received: "
                f"warmup_steps={warmup_steps}, total_steps={total_steps}"
            )
        if not final_lr >= 0:
            raise ValueError(f"final_lr must be >= 0. Received: final_lr={final_lr}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_lr = float(final_lr)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        warming = self.base_lr * step / max(warmup, 1.0)
        decay_steps = max(float(self.total_steps - self.warmup_steps), 1.0)
        progress = ops.clip((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = self.final_lr + 0.5 * (self.base_lr - self.final_lr) * (
            1.0 + ops.cos(math.pi * progress)
        )
        return ops.where(step < warmup, warming, cosine)

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_lr": self.final_lr,
        }


@keras.saving.register_keras_serializable(package="kerassl")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling with momentum, as used by SimCLR.

    For each variable w with gradient g (You et al. 2017, Algorithm 1; SimCLR's
    `lars_optimizer.py`):

        g ← g + β w                                   (weight decay, coupled)
        trust = η ‖w‖ / ‖g‖   (1 when ‖w‖ = 0 or ‖g‖ = 0)
        v ← m v + lr · trust · g
        w ← w − v             (Nesterov: w ← w − (m v + lr · trust · g))

    1-D variables (biases, BatchNorm γ and β) get neither weight decay nor the trust ratio
    (trust = 1), as SimCLR excludes "bias" and "batch_normalization" from both. With η =
    1e-3, useful learning rates are large (SimCLR: 0.3 × batch / 256).

    Args:
        learning_rate: float or `LearningRateSchedule`.
        momentum: m in [0, 1).
        weight_decay: β >= 0, coupled L2 decay of the multi-dimensional weights.
        eta: η > 0, trust coefficient.
        nesterov: Nesterov momentum.
        name: optimizer name.
        **kwargs: other `keras.optimizers.Optimizer` arguments (`clipnorm`, `use_ema`, ...).
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        nesterov: bool = False,
        name: str = "lars",
        **kwargs,
    ):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1). Received: momentum={momentum}")
        weight_decay = 0.0 if weight_decay is None else weight_decay
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0. Received: weight_decay={weight_decay}")
        if not eta > 0:
            raise ValueError(f"eta must be > 0. Received: eta={eta}")
        # The base class's (decoupled) weight decay stays off: LARS decays inside the update.
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        self.momentum = float(momentum)
        self.lars_weight_decay = float(weight_decay)
        self.eta = float(eta)
        self.nesterov = bool(nesterov)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        velocity = self.momentums[self._get_variable_index(variable)]
        if len(variable.shape) > 1:
            if self.lars_weight_decay > 0:
                gradient = gradient + ops.cast(self.lars_weight_decay, variable.dtype) * variable
            weight_norm = ops.sqrt(ops.sum(ops.square(variable)))
            gradient_norm = ops.sqrt(ops.sum(ops.square(gradient)))
            ratio = self.eta * weight_norm / ops.where(gradient_norm > 0, gradient_norm, 1.0)
            trust = ops.where(ops.logical_and(weight_norm > 0, gradient_norm > 0), ratio, 1.0)
            learning_rate = learning_rate * trust
        momentum = ops.cast(self.momentum, variable.dtype)
        step = learning_rate * gradient
        self.assign(velocity, momentum * velocity + step)
        if self.nesterov:
            self.assign_sub(variable, momentum * velocity + step)
        else:
            self.assign_sub(variable, velocity)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.lars_weight_decay,
                "eta": self.eta,
                "nesterov": self.nesterov,
            }
        )
        return config


def make_optimizer(
    name: str,
    learning_rate,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    eta: float = 0.001,
) -> keras.optimizers.Optimizer:
    """Builds an optimizer from its name (the CLI's `--optimizer`).

    - `"adam"`: Adam, or AdamW (decoupled weight decay, Loshchilov & Hutter 2019) when
      `weight_decay > 0`;
    - `"lars"`: `LARS` with `momentum`, `eta` and coupled weight decay;
    - `"sgd"`: SGD with `momentum` and decoupled weight decay.

    Adam(W) and SGD exclude biases and normalisation scales/offsets (variable names
    containing "bias", "gamma", "beta") from weight decay; LARS excludes 1-D variables.

    Args:
        name: one of "adam", "lars", "sgd" (case-insensitive).
        learning_rate: float or `LearningRateSchedule` (e.g. `WarmupCosine`).
        weight_decay: >= 0.
        momentum: momentum of SGD and LARS.
        eta: LARS trust coefficient.

    Raises:
        UserError: unknown name or negative weight decay.
    """
    key = str(name).strip().lower()
    known("optimizer", key, OPTIMIZERS)
    if not weight_decay >= 0:
        raise UserError(f"weight decay must be >= 0; got {weight_decay}")
    if key == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay, eta=eta)
    if key == "adam":
        if weight_decay > 0:
            optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
        else:
            optimizer = keras.optimizers.Adam(learning_rate)
    else:
        optimizer = keras.optimizers.SGD(
            learning_rate, momentum=float(momentum), weight_decay=weight_decay or None
        )
    if weight_decay > 0:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer
