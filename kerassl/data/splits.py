"""Label-scarce splits: which few training examples keep their labels.

The semi-supervised protocol of SimCLR (Chen et al., 2020, "A Simple Framework for
Contrastive Learning of Visual Representations", Sec. B.5) and of the few-label MNIST
studies: pretrain on every training image without labels, then train a classifier on a
small, class-balanced labeled subset. Indices always point into ``x_train``; the test split
never enters a split.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from kerassl.errors import UserError


@dataclass
class Split:
    """Indices into ``x_train`` of the labeled examples a probe or baseline may use.

    Attributes:
        labeled: sorted int64 indices used to train the probe / supervised baseline.
        validation: sorted int64 indices carved from the chosen labeled examples for model
            selection (may be empty); disjoint from ``labeled``.
        seed: the seed that drew the split.
        labels: the label budget it was drawn with (int total, float fraction or "N/class").
        validation_fraction: the fraction of chosen labels moved to ``validation``.
    """

    labeled: np.ndarray
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    seed: int | None = None
    labels: int | float | str | None = None
    validation_fraction: float = 0.0

    @property
    def all_labeled(self) -> np.ndarray:
        """Sorted indices of every chosen labeled example (`labeled` + `validation`): what
        the final linear probe trains on once model selection is over."""
        return np.sort(np.concatenate([self.labeled, self.validation]))

    def to_json(self, y: np.ndarray, class_names: list[str]) -> dict:
        """A JSON-ready record: spec, seed, counts and index lists per class."""
        y = np.asarray(y)
        per_class, counts = {}, {}
        for label, name in enumerate(class_names):
            train = [int(i) for i in self.labeled if y[i] == label]
            val = [int(i) for i in self.validation if y[i] == label]
            per_class[name] = {"labeled": train, "validation": val}
            counts[name] = {"labeled": len(train), "validation": len(val)}
        return {
            "labels": self.labels,
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "num_labeled": int(len(self.labeled)),
            "num_validation": int(len(self.validation)),
            "counts": counts,
            "per_class": per_class,
            "labeled": [int(i) for i in self.labeled],
            "validation": [int(i) for i in self.validation],
        }

    @classmethod
    def from_json(cls, record: dict) -> Split:
        """Inverse of `to_json` (reads the flat index lists and the spec)."""
        return cls(
            labeled=np.asarray(record["labeled"], np.int64),
            validation=np.asarray(record.get("validation", []), np.int64),
            seed=record.get("seed"),
            labels=record.get("labels"),
            validation_fraction=record.get("validation_fraction", 0.0),
        )


_INT = re.compile(r"^\+?\d+$")
_PER_CLASS = re.compile(r"^\+?(\d+)\s*/\s*class$")


@dataclass(frozen=True)
class PerClass:
    """A label budget of `count` labeled examples in every class (``"10/class"``)."""

    count: int

    def __str__(self) -> str:
        return f"{self.count}/class"


LabelBudget = int | float | PerClass


def parse_labels(spec: str | int | float | PerClass) -> LabelBudget:
    """Parses a label budget: ``"100"`` → 100 labels in total; ``"10/class"`` → 10 of each
    class; ``"0.2"`` or ``"20%"`` → 0.2 of each class.

    Raises:
        UserError: not a positive integer, a positive count per class nor a fraction in
            (0, 1].
    """
    accepted = (
        "a total count such as 100, a count per class such as 10/class or a fraction of "
        "each class in (0, 1] such as 0.1"
    )
    if isinstance(spec, bool):
        raise UserError(f"labels must be {accepted}, got {spec!r}")
    if isinstance(spec, PerClass):
        spec = str(spec)
    per_class = _PER_CLASS.match(str(spec).strip())
    if per_class:
        count = int(per_class.group(1))
        if count < 1:
            raise UserError(f"labels must be {accepted}, got {spec!r}")
        return PerClass(count)
    if isinstance(spec, (int, np.integer)):
        value: int | float = int(spec)
    elif isinstance(spec, (float, np.floating)):
        value = float(spec)
    else:
        text = str(spec).strip()
        try:
            if _INT.match(text):
                value = int(text)
            elif text.endswith("%"):
                value = float(text[:-1]) / 100.0
            else:
                value = float(text)
        except ValueError:
            raise UserError(f"labels must be {accepted}, got {spec!r}") from None
    if isinstance(value, int):
        if value < 1:
            raise UserError(f"labels must be {accepted}, got {spec!r}")
        return value
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise UserError(f"labels must be {accepted}, got {spec!r}")
    return value


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _class_members(y: np.ndarray) -> dict[int, np.ndarray]:
    """Labeled class → sorted indices of its examples, in label order (y < 0 skipped)."""
    return {int(c): np.flatnonzero(y == c) for c in np.unique(y[y >= 0])}


def label_split(y: np.ndarray, labels: LabelBudget, seed: int, validation: float = 0.0) -> Split:
    """Draws a stratified, seeded label-scarce split of the training labels.

    Args:
        y: int labels of ``x_train`` [N]; -1 marks unlabeled examples, which are never
            chosen.
        labels: int N = N labels in total, spread evenly over the classes present (the
            remainder of N / num_classes goes to a seeded random subset of classes);
            `PerClass(n)`: n examples of every class; float f in (0, 1] = round(f * n_c)
            examples of each class c, at least 1.
        seed: seeds `np.random.default_rng`; same seed, same split.
        validation: fraction in [0, 1) of each class's chosen examples moved to the
            validation set (round half up, capped so that a class keeps at least one
            training example; a class with one chosen example keeps it for training).

    Returns:
        A `Split` with sorted, disjoint index arrays.

    Raises:
        UserError: no labeled examples, N < number of classes, a class with fewer examples
            than asked, or a bad ``labels`` / ``validation`` value.

    Example:
        >>> y = np.repeat(np.arange(10), 50)
        >>> split = label_split(y, 100, seed=0, validation=0.2)
        >>> len(split.labeled), len(split.validation)
        (80, 20)
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D. Received: shape={y.shape}")
    if isinstance(labels, bool) or not isinstance(
        labels, (int, float, np.integer, np.floating, PerClass)
    ):
        raise UserError(f"labels must be an int count or a float fraction, got {labels!r}")
    if not (0.0 <= validation < 1.0):
        raise UserError(f"validation fraction must be in [0, 1), got {validation!r}")
    classes = np.unique(y[y >= 0])
    if len(classes) == 0:
        raise UserError("no labeled training examples to draw labels from (every label is -1)")
    rng = np.random.default_rng(seed)
    members = _class_members(y)
    if isinstance(labels, PerClass):
        spec = str(labels)
        counts = {int(c): labels.count for c in classes}
    elif isinstance(labels, (int, np.integer)):
        total = spec = int(labels)
        if total < len(classes):
            raise UserError(
                f"labels={total} is fewer than the {len(classes)} classes; ask for at least "
                f"{len(classes)} (one per class) or a fraction such as 0.1"
            )
        base, remainder = divmod(total, len(classes))
        counts = {int(c): base for c in classes}
        for c in rng.choice(classes, remainder, replace=False):
            counts[int(c)] += 1
    else:
        fraction = spec = float(labels)
        if not (0.0 < fraction <= 1.0):
            raise UserError(f"label fraction must be in (0, 1], got {fraction!r}")
        counts = {c: max(1, _round_half_up(fraction * len(m))) for c, m in members.items()}
    short = [(c, counts[c], len(members[c])) for c in counts if counts[c] > len(members[c])]
    if short:
        detail = ", ".join(
            f"class {c} has {have} labeled examples, {want} asked" for c, want, have in short[:3]
        )
        more = f" (and {len(short) - 3} more classes)" if len(short) > 3 else ""
        raise UserError(
            f"too few labeled examples for labels={labels}: {detail}{more}; ask for fewer labels"
        )
    chosen, held = [], []
    for c in classes:
        picked = rng.choice(members[int(c)], counts[int(c)], replace=False)  # random order
        n_val = 0
        if validation > 0 and len(picked) >= 2:
            n_val = min(_round_half_up(validation * len(picked)), len(picked) - 1)
        held.append(picked[:n_val])
        chosen.append(picked[n_val:])
    return Split(
        labeled=np.sort(np.concatenate(chosen)).astype(np.int64),
        validation=np.sort(np.concatenate(held)).astype(np.int64),
        seed=seed,
        labels=spec,
        validation_fraction=float(validation),
    )


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (keep, held_out), holding out ``fraction`` of each labeled class.

    How a dataset without a test split gets one. A class with n >= 2 examples gives
    round(fraction * n) (half up) clipped to [1, n - 1]; a class with one example keeps it.
    Unlabeled examples (y < 0) always stay in ``keep``. Both index arrays are sorted; the
    split depends only on ``y``, ``fraction`` and ``seed``.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    held = []
    for members in _class_members(y).values():
        if len(members) >= 2:
            count = min(max(_round_half_up(fraction * len(members)), 1), len(members) - 1)
            held.append(rng.choice(members, count, replace=False))
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(y)), held_out)
    return keep.astype(np.int64), held_out.astype(np.int64)
