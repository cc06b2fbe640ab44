"""`python -m kerassl.train METHOD [options]`: pretrain, probe, compare with a baseline."""

from __future__ import annotations

import argparse
import sys

from kerassl import resume
from kerassl.config import TrainConfig
from kerassl.data.presets import OPS, PRESETS
from kerassl.data.registry import DATASET_FORMS
from kerassl.errors import ArgumentParser, UserError, cli_entry
from kerassl.methods import METHODS
from kerassl.settings_file import given_options

DATASET_HELP = "dataset to load: " + "; ".join(
    f"{form} ({what})" for form, what in DATASET_FORMS.items()
)


def build_parser() -> ArgumentParser:
    d = TrainConfig()
    p = ArgumentParser(
        prog="kerassl train",
        description="Pretrain an encoder without labels, then classify with a few labels "
        "(linear probe) beside a supervised baseline trained on the same labels.",
    )
    p.add_argument(
        "method",
        nargs="?",
        default=d.method,
        help=f"SSL method: {', '.join(METHODS)} (default {d.method})",
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, help=DATASET_HELP)
    g.add_argument(
        "--data-dir",
        help="where local data lives (IDX files, TFDS data_dir); also $KERASSL_DATA_DIR",
    )
    g.add_argument(
        "--offline",
        action="store_true",
        help="never download; fail with instructions if data is missing",
    )
    g.add_argument(
        "--image-size", type=int, help="resize images to this square size (default: the dataset's)"
    )
    g.add_argument(
        "--labels",
        default=d.labels,
        help="labeled examples: a total stratified over classes (100 = 10 per class on 10 "
        "classes) or a fraction (0.1)",
    )
    g.add_argument(
        "--validation",
        type=float,
        default=d.validation,
        help="fraction of the labeled examples held out for model selection (default %(default)s)",
    )
    g.add_argument(
        "--max-unlabeled", type=int, help="use at most this many unlabeled images (quick runs)"
    )
    g.add_argument(
        "--augment",
        help=f"augmentation preset: {', '.join(PRESETS)} (default: chosen from the dataset); "
        f"or single ops joined with + (crop+blur): {', '.join(OPS)}",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--encoder", default=d.encoder, help="cnn (default), resnet18, resnet50, inceptionv3"
    )
    g.add_argument(
        "--weights", default=None, help="none (default) or imagenet (resnet50/inceptionv3)"
    )
    g.add_argument(
        "--head", default=d.head, help="projection head: linear, mlp (default), deep_mlp"
    )
    g.add_argument(
        "--projection-dim",
        type=int,
        default=d.projection_dim,
        help="size of the head's output (default %(default)s)",
    )
    g.add_argument(
        "--hidden-dim",
        type=int,
        default=d.hidden_dim,
        help="size of the head's hidden layers, and of the predictor's of byol and simsiam "
        "(default %(default)s)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=d.temperature,
        help="NT-Xent temperature (default %(default)s)",
    )
    g.add_argument(
        "--similarity",
        default=d.similarity,
        help="SimCLR's NT-Xent similarity: cosine (default) or dot (raw dot products of "
        "the projections / temperature, no l2 normalisation; SimCLR Table 5)",
    )
    g = p.add_argument_group("moco and byol")
    g.add_argument(
        "--momentum",
        type=float,
        default=d.momentum,
        help="moving-average momentum: moco's m of the key encoder; byol's τ_base of the "
        "target network, raised to 1 by a cosine over the run (default %(default)s)",
    )
    g.add_argument(
        "--queue-size",
        type=int,
        default=d.queue_size,
        help="negative keys K in the queue (default %(default)s; 65536 in the paper)",
    )
    g.add_argument(
        "--symmetric",
        action="store_true",
        help="symmetric loss: also contrast the second view's queries with the first view's keys",
    )
    g.add_argument(
        "--bn-groups",
        type=int,
        default=d.bn_groups,
        help="Shuffling BN groups against BatchNorm leakage, dividing the batch; "
        "1 = plain BatchNorm (default %(default)s)",
    )
    g = p.add_argument_group("barlow_twins, simsiam and vicreg")
    g.add_argument(
        "--bt-lambda",
        type=float,
        default=d.bt_lambda,
        help="barlow_twins' weight λ of the off-diagonal term (default %(default)s)",
    )
    g.add_argument(
        "--projector-dims",
        default=d.projector_dims,
        help="widths of the linear layers of the projector (barlow_twins, simsiam) or "
        "expander (vicreg), replacing --head/--projection-dim (default %(default)s)",
    )
    g = p.add_argument_group("vicreg")
    g.add_argument(
        "--vicreg-lambda",
        type=float,
        default=d.vicreg_lambda,
        help="weight λ of the invariance (mean squared error) term (default %(default)s)",
    )
    g.add_argument(
        "--vicreg-mu",
        type=float,
        default=d.vicreg_mu,
        help="weight μ of the variance (standard-deviation hinge) term (default %(default)s)",
    )
    g.add_argument(
        "--vicreg-nu",
        type=float,
        default=d.vicreg_nu,
        help="weight ν of the covariance (off-diagonal) term (default %(default)s)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--epochs", type=int, default=d.epochs, help="pretraining epochs (default %(default)s)"
    )
    g.add_argument(
        "--time-budget",
        help="pretrain for this wall-clock time (90s, 5m, 1h) instead of --epochs: the "
        "step count and learning-rate schedule are set from the step time measured after "
        "compilation (an equal-compute comparison); a resumed run keeps its step count",
    )
    g.add_argument(
        "--steps-per-epoch",
        type=int,
        help="cap steps per epoch (default: one pass over the unlabeled pool)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="pretraining batch size (default %(default)s)",
    )
    g.add_argument(
        "--optimizer",
        default=d.optimizer,
        help="adam (default; AdamW with weight decay), lars (use --lr ≈ 0.3 x batch/256), sgd",
    )
    g.add_argument(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        type=float,
        default=d.learning_rate,
        help="peak learning rate (default %(default)s), linear warmup then cosine decay",
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="weight decay (default %(default)s)",
    )
    g.add_argument(
        "--warmup-epochs",
        type=float,
        default=d.warmup_epochs,
        help="linear learning-rate warmup in epochs (default %(default)s)",
    )
    g.add_argument(
        "--xla",
        dest="jit_compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="XLA-compile the whole train step: auto (default) = on GPUs; on CPUs, runs of "
        ">= 100 steps time both forms once and keep the faster (cached under $KERAS_HOME); "
        "the augmentation is always one XLA cluster",
    )
    g.add_argument(
        "--no-xla", dest="jit_compile", action="store_const", const="off", help="same as --xla off"
    )
    g.add_argument(
        "--precision",
        default=d.precision,
        help="dtype policy of the networks: float32 (default), mixed_bfloat16, mixed_float16 "
        "(16-bit compute, float32 weights, losses and features; float16 with loss scaling)",
    )
    g.add_argument(
        "--strategy",
        default=d.strategy,
        help="auto (default), default, mirrored, multi_worker (TF_CONFIG or SLURM)",
    )
    g.add_argument(
        "--cpu-devices",
        type=int,
        default=0,
        help="split the CPU into N logical devices (test MirroredStrategy without GPUs)",
    )
    g = p.add_argument_group("evaluation and output")
    g.add_argument(
        "--baseline",
        default=d.baseline,
        help="supervised baseline on the same labels: cnn (default), cnn_deep, mlp, "
        "resnet50, inceptionv3, none",
    )
    g.add_argument(
        "--baseline-epochs",
        type=int,
        default=d.baseline_epochs,
        help="max baseline epochs; early stopping on the validation labels (default %(default)s)",
    )
    g.add_argument(
        "--then",
        default=d.then,
        metavar="STAGES",
        help="stages after the linear probe: finetune (the whole network on the labels), "
        "distill (a student on the fine-tuned teacher's soft labels of the unlabeled pool; "
        "brings finetune), consistency (FixMatch's pseudo-label consistency on the labels "
        "and the pool, from the probe), comma-separated. The final classifier is the best on "
        "held-out labels (default: none)",
    )
    g.add_argument(
        "--distill-pool",
        type=int,
        default=d.distill_pool,
        help="most unlabeled images the distilled student trains on (default %(default)s)",
    )
    g.add_argument(
        "--consistency-steps",
        type=int,
        default=d.consistency_steps,
        help="most steps of the consistency stage (default %(default)s)",
    )
    g.add_argument(
        "--knn-every",
        type=int,
        default=d.knn_every,
        help="kNN monitor every N epochs, 0 to disable (default %(default)s)",
    )
    g.add_argument(
        "--online-probe",
        action="store_true",
        help="train a linear probe on the labeled examples alongside pretraining "
        "(stop-gradient features; probe_accuracy in history.csv)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of the split, augmentation and initialisation (default %(default)s)",
    )
    g.add_argument("--out", default=d.out, help="parent of the run directory (default %(default)s)")
    g = p.add_argument_group("run directory, resuming and determinism")
    g.add_argument(
        "--run-name",
        help="run directory name (default METHOD-DATASET-TIMESTAMP, or METHOD-DATASET-"
        "slurmJOBID under SLURM). Running a command again with the same --run-name and "
        "settings continues that run where it stopped; a finished run is not run again",
    )
    g.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR with its own settings; only --lr may change (recorded in "
        "its config.json with the step), e.g. to go on from the last good checkpoint of a "
        "run whose loss became NaN",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="DELETE the run directory named by --out/--run-name with everything in it "
        "(checkpoints, models, metrics) and start the run afresh",
    )
    g.add_argument(
        "--config",
        metavar="FILE",
        help="take the settings from a YAML or JSON file, such as a run's config.json (to "
        "repeat the run; its name is not reused); options given on the command line win",
    )
    g.add_argument(
        "--checkpoint-every",
        default=d.checkpoint_every,
        help="save the pretraining state every N steps or every duration (30s, 5m, 1h) "
        "and at each epoch's end: a kill loses at most that (default %(default)s)",
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="op determinism: two runs of a command, or a run killed and continued, end "
        "with the same weights and metrics (slower; see the README)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


# Command-line options that are not `TrainConfig` settings.
_NOT_SETTINGS = ("offline", "cpu_devices", "quiet", "resume", "overwrite", "config")


def given_settings(parser: ArgumentParser, argv) -> set[str]:
    """The settings given explicitly on the command line (not left at their defaults)."""
    given = given_options(parser, argv)
    if "offline" in given:
        given.add("download")
    return given - set(_NOT_SETTINGS)


@cli_entry
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_settings(parser, argv)
    config = settings_of(args, given)
    config.validate()  # usage errors before TensorFlow loads
    config, decision = resume.decide(
        config, resume=args.resume, overwrite=args.overwrite, given=given
    )
    if decision.action == resume.DONE:
        print(f"run {decision.path} is finished (it has metrics.json): nothing to do")
        return 0
    if args.cpu_devices:
        from kerassl.distribute import split_cpu

        split_cpu(args.cpu_devices)
    from kerassl import checkpoint, experiment  # heavy imports (TensorFlow) after validation

    # SIGTERM (SLURM's preemption notice, `kill`): checkpoint at the end of the step, exit 130.
    with checkpoint.stop_on_sigterm():
        run_dir, metrics = experiment.run(config, decision, verbose=0 if args.quiet else "auto")
    print(summary(config, metrics, run_dir))
    return 0


def settings_of(args: argparse.Namespace, given: set[str]) -> TrainConfig:
    """The settings of a command line: `--config FILE`'s, overridden by the options given
    explicitly, else the defaults."""
    options = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    options["jit_compile"] = {"on": True, "off": False}.get(options["jit_compile"], "auto")
    options["download"] = not args.offline
    if args.config is not None:
        if args.resume is not None:
            raise UserError("--config and --resume exclude each other")
        loaded = TrainConfig.load_settings(args.config)
        options = {**options, **loaded, **{k: options[k] for k in given if k in options}}
    return TrainConfig(**options)


def summary(config: TrainConfig, metrics: dict, run_dir) -> str:
    probe = metrics["linear_probe"]
    lines = [f"{config.method} + linear probe: top-1 {100 * probe['top1']:.1f} %"]
    from kerassl.semisupervised import stage_names

    for stage, name in stage_names():
        if stage in metrics:
            lines.append(f"{name}: top-1 {100 * metrics[stage]['top1']:.1f} %")
    if "baseline" in metrics:
        lines.append(
            f"supervised {config.baseline} baseline: "
            f"top-1 {100 * metrics['baseline']['top1']:.1f} %"
        )
    final = metrics.get("final")
    if final:
        lines.append(
            f"final classifier: {final['description']} (top-1 {100 * final['top1']:.1f} %; "
            f"{final['chosen_by']})"
        )
        if final.get("note"):
            lines.append(f"note: {final['note']}")
    lines.append(f"({metrics['dataset']['num_labeled']} labels; run dir: {run_dir})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
