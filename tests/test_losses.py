"""Losses against plain NumPy transcriptions of the papers, analytic cases, invariances."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerassl.losses import (
    BarlowTwinsLoss,
    InfoNCE,
    NTXent,
    barlow_twins,
    barlow_twins_from_correlation,
    batch_moments,
    cross_correlation,
    cross_correlation_from_moments,
    info_nce,
    nt_xent,
)
from kerassl.testing.references import np_barlow_twins, np_info_nce, np_nt_xent_per_anchor


def randn(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------- NT-Xent


def np_nt_xent_dot_per_anchor(z1, z2, tau):
    return np_nt_xent_per_anchor(z1, z2, tau, similarity="dot")


NT_XENT_REFERENCES = {"cosine": np_nt_xent_per_anchor, "dot": np_nt_xent_dot_per_anchor}


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("n, d, tau", [(2, 3, 0.5), (5, 8, 0.1), (8, 4, 1.0), (16, 32, 0.2)])
def test_nt_xent_matches_paper_transcription(n, d, tau, similarity):
    z1, z2 = randn(n, n, d), randn(n + 100, n, d)
    loss, logits, labels = nt_xent(z1, z2, tau, similarity=similarity)
    expected = NT_XENT_REFERENCES[similarity](z1, z2, tau).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert logits.shape == (2 * n, 2 * n)
    np.testing.assert_array_equal(np.asarray(labels), np.r_[np.arange(n) + n, np.arange(n)])


def test_nt_xent_dot_is_not_cosine_and_scales_with_the_norms():
    z1, z2 = randn(0, 6, 5), randn(1, 6, 5)
    cosine = float(nt_xent(z1, z2, 0.5)[0])
    assert float(nt_xent(3 * z1, 3 * z2, 0.5)[0]) == pytest.approx(cosine, rel=1e-5)
    dot = float(nt_xent(3 * z1, 3 * z2, 0.5, similarity="dot")[0])
    np.testing.assert_allclose(dot, np_nt_xent_dot_per_anchor(3 * z1, 3 * z2, 0.5).mean(), 1e-5)
    assert abs(dot - cosine) > 0.1


@pytest.mark.parametrize("similarity, positive", [("cosine", 1.0), ("dot", 9.0)])
@pytest.mark.parametrize("n, tau", [(2, 0.5), (4, 0.1), (7, 1.0)])
def test_nt_xent_identical_one_hot_views_closed_form(n, tau, similarity, positive):
    # N pairs of identical vectors 3·e_i: positive similarity 1 (cosine: the scale does not
    # matter) or 3² = 9 (dot), all 2N-2 negatives 0.
    z = np.eye(n, n + 2, dtype=np.float32) * 3.0
    loss, logits, labels = nt_xent(z, z, tau, similarity=similarity)
    s = positive / tau
    expected = -np.log(np.exp(s) / (np.exp(s) + 2 * n - 2))
    # atol: at small τ the loss is ~1e-4..1e-6, below float32 resolution of logits ~1/τ.
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=2e-6)
    # The positive is ranked first for every anchor: contrastive accuracy 1.
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), axis=1), np.asarray(labels))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("replicas, n", [(2, 4), (3, 3)])
def test_nt_xent_global_negatives_equal_the_restricted_global_loss(replicas, n, similarity):
    tau = 0.3
    g = replicas * n
    z1_global, z2_global = randn(1, g, 6), randn(2, g, 6)
    per_anchor = NT_XENT_REFERENCES[similarity](z1_global, z2_global, tau)  # [2G]
    replica_losses = []
    for replica in range(replicas):
        rows = np.arange(replica * n, (replica + 1) * n)
        loss, logits, labels = nt_xent(
            z1_global[rows],
            z2_global[rows],
            tau,
            z1_negatives=z1_global,
            z2_negatives=z2_global,
            offset=tf.constant(replica * n),
            similarity=similarity,
        )
        expected = np.r_[per_anchor[rows], per_anchor[rows + g]].mean()
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
        assert logits.shape == (2 * n, 2 * g)
        np.testing.assert_array_equal(np.asarray(labels), np.r_[rows + g, rows])
        replica_losses.append(float(loss))
    single_device, _, _ = nt_xent(z1_global, z2_global, tau, similarity=similarity)
    np.testing.assert_allclose(np.mean(replica_losses), float(single_device), rtol=1e-5)


def test_nt_xent_dot_stays_finite_for_logits_beyond_float32_exp():
    # Logits of several hundred: exp overflows float32 (above ~88) but not float64, so the
    # transcription still holds; at 1e6 only finiteness can be checked.
    z1, z2 = 3 * randn(3, 6, 8), 3 * randn(4, 6, 8)
    loss, logits, _ = nt_xent(z1, z2, 0.2, similarity="dot")
    off_self = np.abs(np.asarray(logits))[np.asarray(logits) > -1e8]
    assert 88 < off_self.max() < 700
    np.testing.assert_allclose(float(loss), np_nt_xent_dot_per_anchor(z1, z2, 0.2).mean(), 1e-5)
    for scale in (1.0, 300.0):
        v1, v2 = tf.Variable(scale * z1), tf.Variable(scale * z2)
        with tf.GradientTape() as tape:
            loss, _, _ = nt_xent(v1, v2, 0.2, similarity="dot")
        grads = tape.gradient(loss, [v1, v2])
        assert np.isfinite(float(loss)) and all(np.isfinite(g.numpy()).all() for g in grads)


def test_nt_xent_gradients_are_finite_even_for_degenerate_inputs():
    z1 = tf.Variable(np.r_[randn(0, 3, 4), np.zeros((1, 4), np.float32)])  # a zero vector
    z2 = tf.Variable(z1.numpy())  # identical views
    with tf.GradientTape() as tape:
        loss, _, _ = nt_xent(z1, z2, 0.05)
    grads = tape.gradient(loss, [z1, z2])
    assert np.isfinite(float(loss))
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    assert np.abs(grads[0].numpy()[:3]).sum() > 0


def test_nt_xent_rejects_bad_arguments():
    z = randn(0, 4, 3)
    with pytest.raises(ValueError, match=r"temperature must be > 0. Received: temperature=0"):
        nt_xent(z, z, 0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        NTXent(temperature=-0.1)
    with pytest.raises(ValueError, match="given together"):
        nt_xent(z, z, 0.5, z1_negatives=z)
    bad = r"similarity must be one of cosine, dot. Received: similarity='euclid'"
    with pytest.raises(ValueError, match=bad):
        nt_xent(z, z, 0.5, similarity="euclid")
    with pytest.raises(ValueError, match=bad):
        NTXent(similarity="euclid")


# ---------------------------------------------------------------- InfoNCE


@pytest.mark.parametrize("n, d, k, tau", [(2, 4, 3, 0.2), (6, 8, 16, 0.07), (4, 16, 1, 1.0)])
def test_info_nce_matches_paper_transcription(n, d, k, tau):
    q, key = randn(n, n, d), randn(n + 1, n, d)
    queue = randn(k, k, d)
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    loss, logits, labels = info_nce(q, key, queue, tau)
    np.testing.assert_allclose(float(loss), np_info_nce(q, key, queue, tau), rtol=1e-5)
    assert logits.shape == (n, 1 + k)
    np.testing.assert_array_equal(np.asarray(labels), np.zeros(n))


@pytest.mark.parametrize("k, tau", [(1, 0.2), (5, 0.07), (9, 0.5)])
def test_info_nce_orthogonal_queue_closed_form(k, tau):
    q = np.zeros((3, k + 1), np.float32)
    q[:, 0] = 2.0  # q == k, unnormalised on purpose
    queue = np.eye(k + 1, dtype=np.float32)[1:]  # K unit keys orthogonal to q
    loss, _, _ = info_nce(q, q, queue, tau)
    expected = -np.log(np.exp(1 / tau) / (np.exp(1 / tau) + k))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=2e-6)  # float32 at 1/τ


def test_info_nce_keys_and_queue_get_no_gradient():
    q, key, queue = (tf.Variable(randn(s, 4, 5)) for s in (0, 1, 2))
    with tf.GradientTape() as tape:
        loss, _, _ = info_nce(q, key, queue, 0.2)
    grad_q, grad_key, grad_queue = tape.gradient(loss, [q, key, queue])
    assert np.isfinite(grad_q.numpy()).all() and np.abs(grad_q.numpy()).sum() > 0
    assert grad_key is None and grad_queue is None


# ---------------------------------------------------------------- Barlow Twins


@pytest.mark.parametrize(
    "n, d, lambd, eps",
    [(2, 3, 5e-3, 1e-5), (8, 4, 0.1, 1e-5), (16, 16, 5e-3, 1e-3), (5, 7, 1.0, 0)],
)
def test_barlow_twins_matches_algorithm_1(n, d, lambd, eps):
    z1, z2 = randn(n, n, d), randn(n + 7, n, d) + 3.0
    loss, c = barlow_twins(z1, z2, lambd, eps)
    expected_loss, expected_c = np_barlow_twins(z1.astype(np.float64), z2, lambd, eps)
    np.testing.assert_allclose(np.asarray(c), expected_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)


def test_barlow_twins_is_invariant_to_per_dimension_affine_maps():
    z1, z2 = randn(0, 12, 5), randn(1, 12, 5)
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.2, 5.0, 5).astype(np.float32), rng.normal(0, 10, 5).astype(np.float32)
    reference, _ = barlow_twins(z1, z2, 0.05, epsilon=1e-9)
    for affine_z1, affine_z2 in [(a * z1 + b, z2), (z1, a * z2 + b), (a * z1, z2 - b)]:
        loss, _ = barlow_twins(affine_z1, affine_z2, 0.05, epsilon=1e-9)
        np.testing.assert_allclose(float(loss), float(reference), rtol=1e-4)
    # Swapping the views transposes C and leaves the loss unchanged.
    _, c = barlow_twins(z1, z2)
    _, c_swapped = barlow_twins(z2, z1)
    np.testing.assert_allclose(np.asarray(c_swapped), np.asarray(c).T, atol=1e-6)


def test_barlow_twins_is_zero_for_identical_whitened_inputs():
    n, d = 16, 6
    centred = randn(0, n, d) - randn(0, n, d).mean(0)
    q, _ = np.linalg.qr(centred)  # orthonormal columns orthogonal to the ones vector
    z = (np.sqrt(n) * q).astype(np.float32)  # mean 0, biased variance 1, decorrelated
    loss, c = barlow_twins(z, z, lambda_=1.0)
    np.testing.assert_allclose(np.asarray(c), np.eye(d), atol=1e-5)
    assert float(loss) < 1e-8
    # Independent noise as the second view is far from that optimum.
    assert float(barlow_twins(z, randn(1, n, d), lambda_=1.0)[0]) > 1.0


def test_cross_correlation_from_moments_sums_to_the_global_matrix():
    z1, z2 = randn(0, 12, 4), randn(1, 12, 4)
    mean1, var1 = batch_moments(z1)
    mean2, var2 = batch_moments(z2)
    partial = [
        cross_correlation_from_moments(z1[r], z2[r], mean1, var1, mean2, var2, 12)
        for r in (slice(0, 4), slice(4, 8), slice(8, 12))
    ]
    c = cross_correlation(z1, z2)
    np.testing.assert_allclose(np.sum(partial, axis=0), np.asarray(c), rtol=1e-5, atol=1e-6)
    loss, _ = barlow_twins(z1, z2, 0.01)
    np.testing.assert_allclose(
        float(barlow_twins_from_correlation(np.sum(partial, axis=0), 0.01)), float(loss), rtol=1e-5
    )


def test_barlow_twins_gradients_finite_with_a_constant_dimension():
    z1 = tf.Variable(np.c_[randn(0, 6, 3), np.ones((6, 1), np.float32)])  # zero variance
    z2 = tf.Variable(randn(1, 6, 4))
    with tf.GradientTape() as tape:
        loss, _ = barlow_twins(z1, z2)
    grads = tape.gradient(loss, [z1, z2])
    assert np.isfinite(float(loss))
    assert all(np.isfinite(g.numpy()).all() for g in grads)


def test_barlow_twins_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"lambda_ must be >= 0. Received: lambda_=-1"):
        BarlowTwinsLoss(lambda_=-1)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        barlow_twins(randn(0, 4, 2), randn(1, 4, 2), epsilon=-1e-5)


# ---------------------------------------------------------------- all losses


def test_losses_compile_with_xla_and_any_batch_size():
    @tf.function(jit_compile=True)
    def compute(z1, z2, queue):
        return (
            nt_xent(z1, z2, 0.5)[0],
            info_nce(z1, z2, queue, 0.2)[0],
            barlow_twins(z1, z2, 5e-3)[0],
        )

    queue = randn(9, 7, 6)
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    for n in (4, 10):  # nothing about the batch is baked in
        z1, z2 = randn(n, n, 6), randn(n + 1, n, 6)
        compiled = compute(z1, z2, queue)
        eager = (nt_xent(z1, z2, 0.5)[0], info_nce(z1, z2, queue)[0], barlow_twins(z1, z2)[0])
        np.testing.assert_allclose(np.array(compiled), np.array(eager), rtol=1e-5)


@pytest.mark.parametrize(
    "loss, y_true, function",
    [
        (NTXent(temperature=0.3), "z2", lambda z1, z2: nt_xent(z1, z2, 0.3)[0]),
        (
            NTXent(temperature=0.3, similarity="dot"),
            "z2",
            lambda z1, z2: nt_xent(z1, z2, 0.3, similarity="dot")[0],
        ),
        (
            InfoNCE(temperature=0.1),
            "keys+queue",
            lambda z1, z2: info_nce(z1, z2, np.eye(6, dtype="float32")[:3], 0.1)[0],
        ),
        (
            BarlowTwinsLoss(lambda_=0.02, epsilon=1e-4),
            "z2",
            lambda z1, z2: barlow_twins(z1, z2, 0.02, 1e-4)[0],
        ),
    ],
)
def test_loss_wrappers_round_trip_and_agree_with_functions(loss, y_true, function):
    z1, z2 = randn(0, 5, 6), randn(1, 5, 6)
    target = z2 if y_true == "z2" else np.r_[z2, np.eye(6, dtype="float32")[:3]]
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    np.testing.assert_allclose(float(restored(target, z1)), float(function(z1, z2)), rtol=1e-5)
