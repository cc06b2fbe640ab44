"""What `kerassl evaluate` and `kerassl benchmark` are asked to do: protocols, label budgets,
seeds and the protocols' settings, parsed and checked without TensorFlow.

A bad value raises `UserError` before any model or data loads.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from kerassl.checks import POSITIVE, Rule, integer_at_least
from kerassl.data.splits import LabelBudget, parse_labels
from kerassl.errors import UserError

# Evaluation protocols (`kerassl.evaluation.protocols`): frozen-feature protocols first.
PROTOCOLS = ("linear", "mlp", "knn", "1nn", "finetune", "distill", "consistency")
FEATURE_PROTOCOLS = ("linear", "mlp", "knn", "1nn")

_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def _items(text: str | int | float, what: str) -> list[str]:
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(not item for item in items):
        raise UserError(f"{what} must be a comma-separated list; got {text!r}")
    return items


def parse_protocols(text: str) -> tuple[str, ...]:
    """`"linear,knn"` → ("linear", "knn"), in the order given, without repeats."""
    names = _items(text, "--protocol")
    for name in names:
        if name not in PROTOCOLS:
            raise UserError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return tuple(dict.fromkeys(names))


def parse_budgets(text: str | int | float) -> tuple[LabelBudget, ...]:
    """`"1/class,100,0.1"` → (PerClass(1), 100, 0.1) (`kerassl.data.splits.parse_labels`)."""
    budgets = []
    for item in _items(text, "--labels"):
        try:
            budgets.append(parse_labels(item))
        except UserError as error:
            raise UserError(f"--labels: {error}") from None
    return tuple({budget_name(budget): budget for budget in budgets}.values())


def parse_seeds(text: str | int) -> tuple[int, ...]:
    """`"0,1,2"` or `"0-4"` (inclusive) or `"3"` → the split seeds."""
    seeds: list[int] = []
    for item in _items(text, "--seeds"):
        span = _RANGE.match(item)
        if span:
            first, last = int(span.group(1)), int(span.group(2))
            if last < first:
                raise UserError(f"--seeds range {item!r} ends before it starts")
            seeds.extend(range(first, last + 1))
        elif item.isdigit():
            seeds.append(int(item))
        else:
            raise UserError(
                f"--seeds must be integers >= 0 as a list (0,1,2) or a range (0-4); got {item!r}"
            )
    return tuple(dict.fromkeys(seeds))


def budget_name(budget: LabelBudget | str) -> str:
    """The label budget as written on the command line and in tables: 100, 10/class, 0.1,
    100% (every label: not "1", which would read as one label)."""
    if isinstance(budget, float) and budget == 1.0:
        return "100%"
    return f"{budget:g}" if isinstance(budget, (int, float)) else str(budget)


@dataclass(frozen=True)
class ProtocolOptions:
    """Settings of the protocols (the defaults are the field's usual ones).

    Attributes:
        knn_k: neighbours of the weighted kNN (Wu et al. 2018 use 200 on ImageNet; the
            kNN monitors of SimCLR/MoCo/DINO code bases 20 on small sets).
        knn_temperature: τ of its exp(s/τ) votes.
        mlp_hidden: width of the MLP protocol's hidden layer (study A: 512).
        max_epochs: most epochs of the trained protocols (mlp, finetune); early stopping on
            the validation labels usually ends sooner.
        patience: early-stopping patience in epochs.
        max_steps: most training steps of mlp, finetune and distill (`max_epochs` and
            `fixed_epochs` are cut to fit): at 10 % or 100 % of a 60,000-image set an
            epoch is hundreds of steps, and 200 of them would take a CPU days.
        min_steps: training steps of mlp, finetune and distill before an epoch may be kept
            (`kerassl.stopping.BestEpoch`): at 100 labels an epoch is a step, and the
            probe-initialised network of the first step can top 20 validation images by
            luck.
        fixed_epochs: epochs of a trained protocol when no validation labels remain (at
            1/class): a fixed schedule instead of early stopping.
        learning_rate: learning rate of the new head (mlp, finetune).
        encoder_lr_scale: the fine-tuned encoder's learning rate as a fraction of the
            head's (SimCLR fine-tunes the whole network at a lower rate).
        batch_size: labeled images per step of the trained protocols.
        distill_pool: most unlabeled images the `distill` student is trained on (drawn
            with the split's seed; a CPU budget rarely affords the whole pool).
        distill_epochs: most passes over that pool (early stopping on the validation
            labels usually ends sooner).
        distill_batch_size: pool images per student step (beside `batch_size` labeled).
        distill_temperature: τ of the teacher's and the student's softmax (SimCLRv2: 1).
        distill_alpha: weight of the distillation term; 1 − α weighs the labeled
            cross-entropy (SimCLRv2's α).
        consistency_threshold: FixMatch's confidence threshold τ for a pseudo-label.
        consistency_weight: λ_u, the weight of the unlabeled (pseudo-label) term.
        consistency_ratio: μ, pool images per labeled image in a step.
        consistency_steps: most steps of `consistency` (early stopping on the validation
            labels usually keeps an earlier epoch).
    """

    knn_k: int = 20
    knn_temperature: float = 0.07
    mlp_hidden: int = 512
    max_epochs: int = 200
    patience: int = 20
    max_steps: int = 3000
    min_steps: int = 100
    fixed_epochs: int = 50
    learning_rate: float = 1e-3
    encoder_lr_scale: float = 0.1
    batch_size: int = 64
    distill_pool: int = 20000
    distill_epochs: int = 10
    distill_batch_size: int = 256
    distill_temperature: float = 1.0
    distill_alpha: float = 0.5
    consistency_threshold: float = 0.95
    consistency_weight: float = 1.0
    consistency_ratio: int = 7
    consistency_steps: int = 1000

    def __post_init__(self) -> None:
        for name in (
            "knn_k",
            "mlp_hidden",
            "max_epochs",
            "patience",
            "max_steps",
            "fixed_epochs",
            "distill_pool",
            "distill_epochs",
            "distill_batch_size",
            "consistency_ratio",
            "consistency_steps",
        ):
            _user_check(name, getattr(self, name), integer_at_least(1))
        _user_check("batch_size", self.batch_size, integer_at_least(1))
        _user_check("min_steps", self.min_steps, integer_at_least(0))
        if self.min_steps > self.max_steps:
            raise UserError(
                f"--min-steps ({self.min_steps}) must not exceed --max-steps ({self.max_steps})"
            )
        for name in (
            "knn_temperature",
            "learning_rate",
            "distill_temperature",
            "consistency_weight",
        ):
            _user_check(name, getattr(self, name), POSITIVE)
        if not 0 < self.consistency_threshold <= 1:
            raise UserError(
                f"--consistency-threshold must be in (0, 1]; got {self.consistency_threshold}"
            )
        if not 0 <= self.distill_alpha <= 1:
            raise UserError(f"--distill-alpha must be in [0, 1]; got {self.distill_alpha}")
        if not 0 < self.encoder_lr_scale <= 1:
            raise UserError(f"--encoder-lr-scale must be in (0, 1]; got {self.encoder_lr_scale}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _user_check(name: str, value, rule: Rule) -> None:
    if not rule.holds(value):
        raise UserError(f"{_flag(name)} must be {rule.accepted}; got {value}")
