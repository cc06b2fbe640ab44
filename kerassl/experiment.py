"""One training run end to end: plan → pretrain → evaluate → run directory, in stages.

This is the layer the CLIs (`kerassl.train`, `kerassl.tune`) call. The run is resolved
once into a `kerassl.plan.Plan`; pretraining is `kerassl.pretraining`'s; what to do with
the run directory was decided by `kerassl.resume`; the directory's files are
`kerassl.run_dir`'s. This module runs the stages, skipping those done, and writes the
run's header, progress, report and metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path

import keras
import tensorflow as tf

from kerassl import checkpoint
from kerassl import run_dir as files
from kerassl import semisupervised as semi
from kerassl.checkpoint import TrainingDiverged
from kerassl.checks import parse_duration
from kerassl.config import TrainConfig
from kerassl.data.preview import save_augmentation_grid
from kerassl.distribute import describe, is_chief, make_strategy
from kerassl.errors import RunFailed, UserError
from kerassl.evaluation.features import extract_features
from kerassl.evaluation.probes import linear_probe
from kerassl.plan import Plan, prepare
from kerassl.pretraining import budget_steps, measure_step_seconds, pretrain_with_state
from kerassl.resume import CONTINUE, DONE, Decision, decide
from kerassl.run_dir import RunDir, open_run
from kerassl.xla_choice import XLAChoice, choose_for_plan


def evaluate(plan: Plan, encoder: keras.Model) -> tuple[dict, keras.Model]:
    """Linear probe of the frozen encoder on all the labels of the split, scored once on
    the whole test split. Returns metrics and the classifier (encoder + probe)."""
    data, split = plan.data, plan.split
    labeled = split.all_labeled
    train_features = extract_features(encoder, data.x_train[labeled])
    test_features = extract_features(encoder, data.x_test)
    result, dense = linear_probe(
        train_features,
        data.y_train[labeled],
        test_features,
        data.y_test,
        num_classes=data.num_classes,
        seed=plan.config.seed,
    )
    inputs = keras.Input(data.image_shape, name="images")
    classifier = keras.Model(inputs, dense(encoder(inputs, training=False)), name="classifier")
    return {"linear_probe": dataclasses.asdict(result)}, classifier


def run(
    config: TrainConfig, decision: Decision | None = None, verbose="auto"
) -> tuple[Path | None, dict]:
    """The whole `kerassl train` job, continued where it stopped when its run directory
    has a part of it (`kerassl.resume`). Returns the run dir (None on a worker that is
    not the chief) and the metrics.

    The stages, each skipped when the run directory shows it done: pretraining (from
    its checkpoint; done once encoder.keras exists), the linear probe, the baseline, then
    metrics.json, written last, so that an interrupted run never looks finished. A
    `UserError` removes the run directory only if this invocation created it.

    Raises:
        UserError: bad settings or data, or settings other than the run directory's.
        RunFailed: the loss became NaN or Inf; the run stays resumable.
    """
    if decision is None:
        config, decision = decide(config)
    if decision.action == DONE:
        return decision.path, open_run(decision.path, finished=True).metrics
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()  # seeds: `keras.utils.set_random_seed`
    # The strategy first: a multi-worker strategy can only be made before TensorFlow runs
    # an op, and loading data runs some.
    strategy = make_strategy(config.strategy)
    plan = prepare(config, replicas=strategy.num_replicas_in_sync)
    chief = is_chief()
    run_dir, created = _open_run_dir(decision, chief)
    try:
        recorded = run_dir.read_json(files.CONFIG, {}) if decision.action == CONTINUE else None
        plan, xla, budget = settle(plan, strategy, recorded)
        if chief:
            _write_run_header(run_dir, plan, strategy, decision, config.to_json(), budget, xla)
        return run_dir.path if chief else None, _run_stages(plan, run_dir, chief, strategy, verbose)
    except UserError:
        if created:
            run_dir.remove()
        raise
    except TrainingDiverged as error:
        lower = f"{config.learning_rate / 10:g}"
        raise RunFailed(
            f"{error}. {run_dir} is left unfinished at its last good checkpoint; continue "
            f"it with a lower learning rate: kerassl train --resume {run_dir} --lr {lower}"
        ) from None


def settle(
    plan: Plan, strategy, recorded: dict | None = None
) -> tuple[Plan, XLAChoice, dict | None]:
    """The plan as it trains, for a run or a tuner trial: XLA on or off (`kerassl.
    xla_choice`: "auto" may measure both forms) and, under a `--time-budget`, as many
    steps as the budget holds (`budgeted`). `recorded` is a continued run's config.json:
    its choice and step count are kept (the fixed XLA rule of `plan` for a run started
    before the choice was recorded) and nothing is measured.

    Returns:
        (plan, the XLA choice, the budget's record or None).
    """
    fixed = {"jit_compile": plan.jit_compile}
    xla = choose_for_plan(plan, strategy, None if recorded is None else recorded.get("xla", fixed))
    plan = plan.with_jit_compile(xla.jit_compile)
    if plan.config.time_budget is None:
        return plan, xla, None
    budget = (recorded or {}).get("time_budget")
    plan, budget = budgeted(plan, strategy, budget, _chosen_timing(xla))
    return plan, xla, budget


def _chosen_timing(xla: XLAChoice):
    """The measured `StepTiming` of the chosen form, its `spent` that of both
    measurements (a `--time-budget` plans with it instead of measuring a third time);
    None when nothing was measured."""
    if not xla.timings:
        return None
    spent = sum(timing.spent for timing in xla.timings.values())
    return dataclasses.replace(xla.timings[xla.jit_compile], spent=spent)


def budgeted(plan: Plan, strategy, recorded: dict | None = None, timing=None) -> tuple[Plan, dict]:
    """The plan of a `--time-budget`: as many steps as the budget holds once the
    measurement (`measure_step_seconds`: a short `fit` as the run's) and what the run
    spends besides its steps (startup, epoch ends) are taken off, in epochs of at most
    one pass (`budget_steps`); `recorded` (a continued run's budget) keeps its step count.
    `timing`: the step already measured with the plan's XLA choice, if it was."""
    budget = recorded
    if budget is None:
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise UserError(
                "--time-budget is not supported on several workers yet (each would measure "
                "its own step time); give --epochs"
            )
        seconds = parse_duration(plan.config.time_budget)
        timing = timing or measure_step_seconds(plan, strategy)
        budget = {
            "seconds": seconds,
            "steps": budget_steps(seconds, timing, plan.steps_per_epoch),
            "step_seconds": round(timing.step, 4),
            "startup_seconds": round(timing.startup, 1),
            "first_epoch_end_seconds": round(timing.first_epoch_end, 2),
            "epoch_end_seconds": round(timing.epoch_end, 2),
            "measurement_seconds": round(timing.spent, 1),
        }
    return plan.with_steps(budget["steps"]), budget


def _open_run_dir(decision: Decision, chief: bool) -> tuple[RunDir, bool]:
    """The run directory and whether this invocation created it (only the chief does)."""
    path = decision.path
    if not chief or decision.action == CONTINUE:
        return RunDir(path), False
    existed = path.exists() and not decision.overwrite
    if decision.overwrite:
        RunDir(path).remove()
    return (RunDir(path) if existed else RunDir.create(path.parent, path.name)), not existed


def _run_stages(plan: Plan, run_dir: RunDir, chief: bool, strategy, verbose) -> dict:
    config, data = plan.config, plan.data
    progress = run_dir.read_json(files.PROGRESS, {})

    def done(stage: str, values, name: str | None = None, model=None) -> None:
        progress[stage] = values
        if chief:
            if model is not None:
                run_dir.save_model(name, model)
            run_dir.write_json(files.PROGRESS, progress)

    if run_dir.has(files.ENCODER) and "pretrain" in progress:
        encoder = open_run(run_dir.path).load("encoder")
    else:
        model, state = pretrain_with_state(plan, run_dir, verbose, strategy, writes=chief)
        if chief:
            # Views from the model's own augmenter, drawn after training so that drawing
            # them does not move its random stream.
            save_augmentation_grid(
                model.augmenter, plan.pool[:8], str(run_dir / files.AUGMENTATIONS)
            )
        seconds = max(state.seconds, 1e-9)
        done(
            "pretrain",
            {
                "seconds": round(seconds, 1),
                "images_per_second": round(plan.total_steps * config.batch_size / seconds, 1),
            },
            files.ENCODER,
            model.encoder,
        )
        if chief:
            RunDir(run_dir / files.CHECKPOINTS).remove()  # encoder.keras supersedes it
        encoder = model.encoder
    if "linear_probe" not in progress:
        probe, classifier = evaluate(plan, encoder)
        done("linear_probe", probe["linear_probe"], files.CLASSIFIER, classifier)
    if config.baseline != "none" and "baseline" not in progress:
        from kerassl.supervised import supervised_baseline

        result, baseline = supervised_baseline(
            data,
            plan.split,
            model=config.baseline,
            epochs=config.baseline_epochs,
            flip=plan.label_flip,
            seed=config.seed,
        )
        validation = plan.split.validation
        result["validation_accuracy"] = semi.validation_accuracy(
            baseline, data.x_train[validation], data.y_train[validation]
        )
        done("baseline", result, files.BASELINE, baseline)
    _semisupervised_stages(plan, run_dir, encoder, progress, done)
    metrics = {
        "linear_probe": progress["linear_probe"],
        "pretrain_seconds": progress["pretrain"]["seconds"],
        "pretrain_images_per_second": progress["pretrain"]["images_per_second"],
    }
    for stage in ("baseline", *semi.STAGES):
        if stage in progress:
            metrics[stage] = progress[stage]
    final = _final(plan, progress)
    metrics["final"] = final.to_json(_test_scores(progress, final.model))
    metrics["dataset"] = {
        "name": data.name,
        "num_classes": data.num_classes,
        "num_unlabeled": int(len(plan.pool)),
        "num_labeled": len(plan.split.all_labeled),
        "num_test": int(len(data.x_test)),
    }
    if chief:
        run_dir.write_text(files.REPORT, report(config, metrics))
        run_dir.write_json(files.METRICS, metrics)
    return metrics


def _semisupervised_stages(plan: Plan, run_dir: RunDir, encoder, progress: dict, done) -> None:
    """`--then finetune,distill` (`kerassl.semisupervised`), each stage skipped when done;
    a distillation resumed after its fine-tuning reuses the saved fine-tuned network."""
    stages = [stage for stage in semi.parse_stages(plan.config.then) if stage not in progress]
    if not stages:
        return
    from kerassl.evaluation.protocols import FeatureCache

    cache = FeatureCache(encoder, plan.data.x_train, plan.data.x_test)
    options = semi.stage_options(plan.config)
    for stage in stages:
        finetuned = None
        if stage == "distill" and "finetune" in progress and "finetune" not in stages:
            finetuned = open_run(run_dir.path).load("finetuned")
        result, classifier = semi.run_stage(stage, plan, cache, options, finetuned)
        model = semi.STAGE_MODELS[stage]
        done(stage, result, files.MODEL_FILES[model], classifier)


def _final(plan: Plan, progress: dict) -> semi.Final:
    """The run's final classifier, chosen on held-out labels (`semisupervised.choose_final`)."""
    held_out = {"classifier": progress["linear_probe"].get("cv_accuracy")}
    for stage, model in (*semi.STAGE_MODELS.items(), ("baseline", "baseline")):
        if stage in progress:
            held_out[model] = progress[stage].get("validation_accuracy")
    return semi.choose_final(held_out, len(plan.split.validation))


def _test_scores(progress: dict, model: str) -> dict:
    stage = {"classifier": "linear_probe", "baseline": "baseline"}
    stage |= {m: s for s, m in semi.STAGE_MODELS.items()}
    return progress[stage[model]]


def _write_run_header(
    run_dir: RunDir,
    plan: Plan,
    strategy: tf.distribute.Strategy,
    decision: Decision,
    settings: dict,
    budget: dict | None,
    xla: XLAChoice,
) -> None:
    """config.json and split.json of a new run; for a continued one, checks that the data
    still splits as it did, and records settings changed on `--resume`. `settings` are
    the settings as given; `plan.config` the resolved ones (a `--time-budget` run's epochs
    and steps per epoch); `xla` how the train step's XLA form was chosen."""
    config, data = plan.config, plan.data
    split = plan.split.to_json(data.y_train, data.class_names)
    if decision.action == CONTINUE:
        if run_dir.read_json(files.SPLIT) != json.loads(json.dumps(split)):
            raise UserError(
                f"the data of {config.dataset} no longer splits as it did when {run_dir} "
                "started (files added or removed?); start a new run"
            )
        if not decision.changes:
            return
    previous = run_dir.read_json(files.CONFIG, {})
    changes = previous.get("changes", [])
    at_step = _steps_done(run_dir, plan)
    changes += [
        {"setting": name, "from": old, "to": new, "step": at_step}
        for name, old, new in decision.changes
    ]
    resolved = config.to_json() | {
        "image_size": int(data.image_shape[0]),
        "channels": int(data.image_shape[-1]),
        "class_names": list(data.class_names),
        "augment": plan.preset,
        "source": data.source,
        "skipped_files": list(data.skipped),
        "distribution": describe(strategy),  # what --strategy resolved to
        "versions": {
            "kerassl": __import__("kerassl").__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
        "settings": settings,
        "changes": changes,
        "time_budget": budget,
        "xla": xla.to_json(),
    }
    run_dir.write_json(files.CONFIG, resolved)
    run_dir.write_json(files.SPLIT, split)


def _steps_done(run_dir: RunDir, plan: Plan) -> int:
    """Pretraining steps a run directory holds: all once encoder.keras exists, else its
    checkpoint's."""
    if run_dir.has(files.ENCODER):
        return plan.total_steps
    return checkpoint.saved_step(run_dir / files.CHECKPOINTS)


def report(config: TrainConfig, metrics: dict) -> str:
    """The run's Markdown summary."""
    probe = metrics["linear_probe"]
    lines = [
        f"# {config.method} on {config.dataset}",
        "",
        f"{metrics['dataset']['num_labeled']} labels, {metrics['dataset']['num_unlabeled']} "
        f"unlabeled images, {config.epochs} epochs of {config.encoder} + {config.head} head, "
        f"{metrics['pretrain_seconds']} s of pretraining.",
        "",
        "| classifier | top-1 | top-5 |",
        "|---|---|---|",
        f"| {config.method} + linear probe | {_pct(probe['top1'])} | {_pct(probe.get('top5'))} |",
    ]
    for stage, name in semi.stage_names():
        if stage in metrics:
            row = metrics[stage]
            lines.append(f"| {name} | {_pct(row['top1'])} | {_pct(row.get('top5'))} |")
    if "baseline" in metrics:
        base = metrics["baseline"]
        name = f"supervised {config.baseline} (same labels)"
        lines.append(f"| {name} | {_pct(base['top1'])} | {_pct(base.get('top5'))} |")
    final = metrics.get("final")
    if final:
        lines += ["", f"Final classifier: **{final['description']}** ({final['chosen_by']})."]
        if final.get("note"):
            lines.append(f"Note: {final['note']}.")
    lines += ["", "Augmented pairs: ![augmentations](augmentations.png)", ""]
    return "\n".join(lines)


def _pct(value) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.1f} %"
    )
