"""A run's stages after the linear probe, and the choice of its final classifier.

`kerassl train … --then finetune,distill,consistency` fine-tunes the pretrained network on
the labeled examples, distils it into a student on the unlabeled pool, and trains it with
FixMatch's consistency loss on the labels and the pool: the evaluation protocols
`finetune`, `distill` and `consistency` (`kerassl.evaluation.finetune`, `.distill`,
`.consistency`) run on the run's own split, so a run and `kerassl evaluate` compute a
stage the same way.

The final classifier (`metrics.json` "final", what `kerassl export` exports by default) is
the candidate with the best accuracy on held-out labels: the linear probe's by its
cross-validation on the labels it was fitted to (it is fitted to the validation labels
too), every other classifier's (fine-tuned, student, supervised baseline) on the
validation labels it early-stopped on, less one standard error (that figure is optimistic:
its epoch was chosen on those labels). Ties go to the earlier candidate in
`CANDIDATES` order. Without validation labels (1 label per class) nothing is held out and
the linear probe is final. No test label is read to choose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerassl.errors import UserError

STAGES = ("finetune", "distill", "consistency")
# Stage → the run's model file name in `kerassl.run_dir.MODEL_FILES`.
STAGE_MODELS = {"finetune": "finetuned", "distill": "student", "consistency": "fixmatch"}
# A run's classifiers in the order ties are broken: SSL first, the baseline last.
CANDIDATES = ("classifier", "finetuned", "student", "fixmatch", "baseline")
# What each candidate is called in reports.
DESCRIPTIONS = {
    "classifier": "linear probe",
    "finetuned": "fine-tuned",
    "student": "distilled student",
    "fixmatch": "FixMatch-trained",
    "baseline": "supervised baseline",
}


def stage_names() -> list[tuple[str, str]]:
    """(stage, what its classifier is called in reports), in stage order."""
    return [(stage, DESCRIPTIONS[STAGE_MODELS[stage]]) for stage in STAGES]


def parse_stages(text: str) -> tuple[str, ...]:
    """`"finetune,distill"` → ("finetune", "distill"), in stage order; `distill` brings
    `finetune` (its teacher is the better of the probe and the fine-tuned network); ""
    → ()."""
    names = [name.strip() for name in str(text or "").split(",") if name.strip()]
    for name in names:
        if name not in STAGES:
            raise UserError(
                f"--then: unknown stage {name!r}; choose from {', '.join(STAGES)} "
                "(comma-separated, e.g. finetune,distill)"
            )
    if "distill" in names:
        names.append("finetune")
    return tuple(stage for stage in STAGES if stage in names)


@dataclass(frozen=True)
class Final:
    """The chosen classifier: `model` (a `CANDIDATES` name), its held-out accuracy per
    candidate (None: nothing held out) and the rule that chose it, in words."""

    model: str
    held_out: dict
    rule: str

    def to_json(self, test: dict) -> dict:
        """metrics.json "final": the choice, its test scores and the held-out figures."""
        return {
            "model": self.model,
            "description": DESCRIPTIONS[self.model],
            "top1": test.get("top1"),
            "top5": test.get("top5"),
            "held_out_accuracy": self.held_out,
            "chosen_by": self.rule,
            "note": self.note(),
        }

    def note(self) -> str | None:
        """One line when the supervised baseline beat every SSL classifier."""
        if self.model != "baseline":
            return None
        best = max((v, k) for k, v in self.held_out.items() if k != "baseline" and v is not None)
        return (
            f"the supervised baseline beat every self-supervised classifier on held-out "
            f"labels ({100 * self.held_out['baseline']:.1f} % against the "
            f"{DESCRIPTIONS[best[1]]}'s {100 * best[0]:.1f} %): it is the final classifier"
        )


def choose_final(held_out: dict[str, float | None], num_validation: int) -> Final:
    """The final classifier among `held_out` (candidate → held-out accuracy or None).

    The probe's figure is a cross-validation estimate; every other candidate's is its
    accuracy on the validation labels it chose its epoch on, which is optimistic (the
    epoch was picked for scoring well on them). Those are compared by their accuracy less
    one standard error of it, √(p(1 − p)/n) with p = (correct + 1)/(n + 2): on 20 labels
    a baseline at 80 % counts as 70.6 %, and does not replace a probe at 75.4 % (the
    demo's run, where the baseline then scored 62.9 % on the test split and the probe
    73.0 %); at 95 % it counts as 88.6 %.
    """
    if num_validation == 0 or all(v is None for v in held_out.values()):
        return Final("classifier", held_out, "no validation labels: the linear probe")
    scored = [
        (name, _handicapped(name, value, num_validation))
        for name in CANDIDATES
        if (value := held_out.get(name)) is not None
    ]
    best = max(scored, key=lambda item: item[1])  # max keeps the first of equals
    return Final(
        best[0],
        held_out,
        f"best held-out accuracy: the probe's cross-validation, the others' on the "
        f"{num_validation} validation labels less one standard error",
    )


def _handicapped(name: str, accuracy: float, num_validation: int) -> float:
    """What `choose_final` compares: the probe's estimate as it is, the others'
    `kerassl.stopping.discounted_accuracy`."""
    from kerassl.stopping import discounted_accuracy

    return accuracy if name == "classifier" else discounted_accuracy(accuracy, num_validation)


def validation_accuracy(model, x: np.ndarray, y: np.ndarray) -> float | None:
    """Top-1 of a classifier on the validation images (None without any)."""
    if not len(x):
        return None
    from kerassl.evaluation.features import extract_features

    return float(np.mean(np.argmax(extract_features(model, x), axis=1) == y))


def stage_options(config):
    """The protocols' settings for a run's stages: the evaluation defaults, the pool
    capped by `--distill-pool` and `--max-unlabeled`, `--consistency-steps`."""
    from kerassl.evaluation.options import ProtocolOptions

    pool = min(config.distill_pool, config.max_unlabeled or config.distill_pool)
    return ProtocolOptions(distill_pool=pool, consistency_steps=config.consistency_steps)


def run_stage(stage: str, plan, cache, options, finetuned=None) -> tuple[dict, object]:
    """Runs `stage` ("finetune" or "distill") on the run's split; returns its results
    (test top-1/top-5 scored once, validation accuracy, schedule, choices, seconds) and
    its classifier. `finetuned`: the fine-tuned classifier of an earlier invocation of
    this run, which `distill` compares with the probe as its teacher."""
    import time

    from kerassl.evaluation.metrics import topk_accuracy
    from kerassl.evaluation.protocols import Outcome, Task

    data, split = plan.data, plan.split
    task = Task.of(data, split, plan.preset, plan.config.seed)
    if finetuned is not None:
        cache.remember("finetune", task, options, Outcome(np.zeros((0, 0)), "", {}, finetuned))
    start = time.perf_counter()
    outcome = cache.outcome(stage, task, options)
    seconds = time.perf_counter() - start
    val_x, val_y = data.x_train[split.validation], data.y_train[split.validation]
    result = {
        **topk_accuracy(outcome.scores, data.y_test),
        "validation_accuracy": validation_accuracy(outcome.classifier, val_x, val_y),
        "schedule": outcome.schedule,
        "selected": outcome.selected,
        "seconds": round(seconds, 1),
    }
    return result, outcome.classifier
