"""FixMatch-style consistency training (the `consistency` protocol): its loss against a
NumPy transcription of the paper's Algorithm 1, and the protocol on a tiny separable set."""

import numpy as np
import pytest
import tensorflow as tf

from kerassl.evaluation.consistency import fixmatch_loss


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _fixmatch_numpy(labels, p_labeled, q_weak, p_strong, tau, lam):
    """Sohn et al. 2020, Algorithm 1: ℓ_s = 1/B Σ H(p_b, p_m(y|α(x_b))); ℓ_u = 1/(μB) Σ
    1{max q_b ≥ τ} H(argmax q_b, p_m(y|A(u_b))); loss ℓ_s + λ_u ℓ_u."""
    l_s = np.mean([-np.log(p_labeled[b, labels[b]]) for b in range(len(labels))])
    terms = []
    for b in range(len(q_weak)):
        if q_weak[b].max() >= tau:
            terms.append(-np.log(p_strong[b, q_weak[b].argmax()]))
        else:
            terms.append(0.0)
    return l_s + lam * np.mean(terms)


@pytest.mark.parametrize("tau, lam", [(0.95, 1.0), (0.5, 2.0), (1.0, 1.0)])
def test_fixmatch_loss_is_the_papers(tau, lam):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 4)
    p_labeled = _softmax(rng.normal(size=(4, 5)))
    q_weak = _softmax(rng.normal(size=(12, 5)) * 4)  # some above 0.5 and 0.95, not all
    p_strong = _softmax(rng.normal(size=(12, 5)))
    expected = _fixmatch_numpy(labels, p_labeled, q_weak, p_strong, tau, lam)
    loss, mask_rate = fixmatch_loss(labels, p_labeled, q_weak, p_strong, tau, lam)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(mask_rate) == pytest.approx(np.mean(q_weak.max(axis=1) >= tau))
    if tau == 0.95:
        assert 0 < float(mask_rate) < 1  # the mask is exercised both ways


def test_no_gradient_flows_through_the_weak_view():
    rng = np.random.default_rng(1)
    weak = tf.Variable(_softmax(rng.normal(size=(6, 3)) * 5))
    strong = tf.Variable(_softmax(rng.normal(size=(6, 3))))
    with tf.GradientTape(persistent=True) as tape:
        loss, _ = fixmatch_loss(
            np.array([0, 1]), _softmax(rng.normal(size=(2, 3))), weak, strong, 0.5, 1.0
        )
    assert tape.gradient(loss, weak) is None
    assert tape.gradient(loss, strong) is not None


def test_consistency_protocol_learns_a_separable_set_and_reports_its_mask():
    import keras

    from kerassl.data.splits import Split
    from kerassl.evaluation.options import ProtocolOptions
    from kerassl.evaluation.protocols import FeatureCache, Task, run_protocol

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 16)
    x = rng.integers(0, 50, (64, 8, 8, 1))
    for c in range(4):  # class c lights quadrant c
        r, k = divmod(c, 2)
        x[labels == c, 4 * r : 4 * r + 4, 4 * k : 4 * k + 4] += 180
    x = x.astype(np.uint8)
    y = labels.copy()
    split = Split(
        labeled=np.array([0, 16, 32, 48, 1, 17, 33, 49]), validation=np.array([2, 18, 34, 50])
    )
    y[np.setdiff1d(np.arange(64), np.r_[split.labeled, split.validation])] = -1  # unlabeled
    task = Task(x, y, split, x[::4], num_classes=4, preset="digits", seed=0)
    inputs = keras.Input((8, 8, 1))
    pooled = keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(inputs))
    encoder = keras.Model(inputs, keras.layers.Dense(8, activation="relu")(pooled))
    options = ProtocolOptions(batch_size=8, consistency_ratio=2, consistency_steps=100, min_steps=0)
    outcome = run_protocol(
        "consistency", task, encoder, FeatureCache(encoder, x, task.x_test), options
    )
    assert np.mean(np.argmax(outcome.scores, axis=1) == labels[::4]) >= 0.9
    assert 0.0 <= outcome.selected["mask_rate"] <= 1.0 and outcome.selected["pool"] == 60
    assert outcome.classifier.predict(x[:3], verbose=0).shape == (3, 4)


def test_train_then_consistency_keeps_the_fixmatch_classifier(tmp_path, capsys):
    """`kerassl train … --then consistency`: the stage runs on the run's split, its model
    is kept and exportable, and it competes for the final classifier."""
    import json

    from kerassl.run_dir import open_run
    from kerassl.train import main

    argv = ["simclr", "--dataset", "digits", "--labels", "50", "--max-unlabeled", "256",
            "--batch-size", "32", "--epochs", "1", "--baseline", "none",
            "--then", "consistency", "--consistency-steps", "50", "--out", str(tmp_path),
            "--run-name", "run", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "FixMatch-trained: top-1" in capsys.readouterr().out
    run = open_run(tmp_path / "run", finished=True)
    result = run.metrics["consistency"]
    assert 0 <= result["top1"] <= 1 and 0 <= result["validation_accuracy"] <= 1
    assert result["selected"]["epochs_run"] == 1  # 50 steps: one epoch of 50
    assert set(run.metrics["final"]["held_out_accuracy"]) == {"classifier", "fixmatch"}
    classifier = run.load("fixmatch")
    assert classifier.predict(np.zeros((2, *run.image_shape), np.float32), verbose=0).shape == (
        2,
        10,
    )
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["consistency"]
