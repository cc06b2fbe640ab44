"""Self-distillation (SimCLRv2's third step), the run's stages after the probe and the
choice of its final classifier."""

import json

import numpy as np
import pytest
import tensorflow as tf

from kerassl.data.splits import Split
from kerassl.errors import UserError
from kerassl.evaluation.distill import _soft_targets, distillation_loss
from kerassl.evaluation.protocols import Task, unlabeled_pool
from kerassl.semisupervised import choose_final, parse_stages


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
def test_distillation_loss_is_the_papers(tau):
    """SimCLRv2 eq. (2): −Σ_y P_T(y|x; τ) log P_S(y|x; τ), averaged over the batch."""
    rng = np.random.default_rng(0)
    teacher = _softmax(rng.normal(size=(6, 5)) / tau)
    logits = rng.normal(size=(6, 5)) * 3
    log_student = np.log(_softmax(logits / tau))
    expected = -np.mean(np.sum(teacher * log_student, axis=1))
    got = float(distillation_loss(tf.constant(teacher), tf.constant(logits), tau))
    assert got == pytest.approx(expected, rel=1e-5)


def test_soft_targets_are_the_teachers_softmax_at_tau():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3)) * 2
    probabilities = _softmax(logits)
    np.testing.assert_allclose(_soft_targets(probabilities, 1.0), probabilities, atol=1e-6)
    np.testing.assert_allclose(_soft_targets(probabilities, 2.0), _softmax(logits / 2), atol=1e-6)


def test_the_pool_holds_no_validation_image_and_is_capped():
    split = Split(labeled=np.array([0, 1, 2]), validation=np.array([3, 4]))
    x = np.zeros((50, 2, 2, 1), np.uint8)
    task = Task(x, np.zeros(50, np.int64), split, x[:2], num_classes=2, seed=3)
    pool = unlabeled_pool(task, 10)
    assert len(pool) == 10 and not set(pool) & {3, 4}
    assert np.array_equal(pool, unlabeled_pool(task, 10))  # seeded
    assert set(unlabeled_pool(task)) == set(range(50)) - {3, 4}


def test_stages_parse_in_order_and_distill_brings_finetune():
    assert parse_stages("") == ()
    assert parse_stages("distill") == ("finetune", "distill")
    assert parse_stages("distill, finetune") == ("finetune", "distill")
    with pytest.raises(UserError, match="unknown stage 'fixmatch'"):
        parse_stages("finetune,fixmatch")


def test_final_is_the_best_held_out_with_ties_to_ssl_and_says_when_the_baseline_wins():
    final = choose_final({"classifier": 0.7, "finetuned": 0.8, "student": 0.8, "baseline": 0.6}, 20)
    assert final.model == "finetuned" and final.note() is None
    lost = choose_final({"classifier": 0.7, "student": 0.75, "baseline": 0.9}, 20)
    assert lost.model == "baseline"
    assert lost.note().startswith("the supervised baseline beat every self-supervised")
    assert "90.0 %" in lost.note() and "distilled student's 75.0 %" in lost.note()
    alone = choose_final({"classifier": None, "baseline": None}, 0)
    assert alone.model == "classifier" and "no validation labels" in alone.rule


def test_a_classifier_stopped_on_the_validation_labels_must_beat_the_probe_by_a_standard_error():
    # The demo's run: the baseline's 80 % on the 20 labels it stopped on against the probe's
    # 75.4 % cross-validation; the baseline then scored 62.9 % on the test split, the probe 73 %.
    assert choose_final({"classifier": 0.754, "baseline": 0.80}, 20).model == "classifier"
    # p = (16 + 1) / 22: 0.80 − √(p (1 − p) / 20) = 0.7064
    assert choose_final({"classifier": 0.706, "baseline": 0.80}, 20).model == "baseline"
    assert choose_final({"classifier": 0.707, "baseline": 0.80}, 20).model == "classifier"
    assert choose_final({"classifier": 0.756, "baseline": 0.95}, 20).model == "baseline"
    # Between two stopped classifiers the same handicap applies to both.
    assert choose_final({"classifier": 0.5, "finetuned": 0.85, "baseline": 0.8}, 20).model == (
        "finetuned"
    )


def test_pretrain_finetune_distill_on_digits_end_to_end(tmp_path, capsys):
    """`kerassl train … --then finetune,distill` keeps both models, names the final
    classifier, reports every stage, exports the final one by default, and a run stopped
    before its distillation does only that on the re-run (reusing the fine-tuned net)."""
    from kerassl.export import main as export_main
    from kerassl.run_dir import open_run
    from kerassl.train import main

    argv = ["simclr", "--dataset", "digits", "--labels", "50", "--max-unlabeled", "256",
            "--batch-size", "32", "--epochs", "1", "--baseline-epochs", "3",
            "--then", "distill", "--distill-pool", "64", "--out", str(tmp_path),
            "--run-name", "run", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fine-tuned: top-1" in out and "distilled student: top-1" in out
    assert "final classifier:" in out
    run_path = tmp_path / "run"
    run = open_run(run_path, finished=True)
    metrics = run.metrics
    assert run.config["then"] == "distill"
    for stage in ("finetune", "distill"):
        assert 0 <= metrics[stage]["top1"] <= 1
        assert 0 <= metrics[stage]["validation_accuracy"] <= 1
    assert metrics["distill"]["selected"]["pool"] == 64
    assert metrics["distill"]["selected"]["teacher"] in ("linear", "finetune")
    final = metrics["final"]
    held = final["held_out_accuracy"]
    assert set(held) == {"classifier", "finetuned", "student", "baseline"}
    assert choose_final(held, len(run.split().validation)).model == final["model"]
    assert run.has("finetuned") and run.has("student")
    student = run.load("student")
    assert student.predict(np.zeros((2, *run.image_shape), np.float32), verbose=0).shape == (2, 10)

    assert export_main([str(run_path), "--name", "digits", "--out", str(tmp_path / "x")]) == 0
    exported = json.loads(
        next((tmp_path / "x").glob("digits/1/assets.extra/kerassl.json")).read_text()
    )
    assert exported["model"] == final["model"]

    # Stopped before its distillation: the re-run trains only the student.
    progress = json.loads((run_path / "progress.json").read_text())
    del progress["distill"]
    (run_path / "progress.json").write_text(json.dumps(progress))
    (run_path / "metrics.json").unlink()
    finetuned_written = (run_path / "finetuned.keras").stat().st_mtime_ns
    assert main(argv) == 0
    again = open_run(run_path, finished=True).metrics
    assert (run_path / "finetuned.keras").stat().st_mtime_ns == finetuned_written
    assert again["finetune"] == metrics["finetune"] and "distill" in again
