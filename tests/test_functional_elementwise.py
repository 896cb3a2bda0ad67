"""ReLU, dense, dropout and softmax cross-entropy, on every namespace."""

import numpy as np
import pytest
from helpers import assert_gradient, cross_entropy_naive, host, on

from gpucnn.functional import (
    dense_backward,
    dense_forward,
    dropout_backward,
    dropout_forward,
    relu_backward,
    relu_forward,
    softmax,
    softmax_cross_entropy,
)


def away_from_zero(rng, shape):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 1e-3, 0.5, x)  # keep central differences off the kink


def test_relu_forward_and_backward(xp, rng):
    x = away_from_zero(rng, (3, 4, 5, 2))
    out = relu_forward(on(xp, x))
    np.testing.assert_array_equal(host(out), np.where(x > 0, x, 0.0))
    g = rng.standard_normal(x.shape)
    grad = relu_backward(on(xp, g), out)
    assert_gradient(lambda v: float(np.sum(host(relu_forward(on(xp, v))) * g)), x, host(grad))


def test_dense_forward_matches_loops_and_backward_matches_differences(xp, rng):
    x, w, b = rng.standard_normal((4, 6)), rng.standard_normal((6, 3)), rng.standard_normal(3)
    out = host(dense_forward(on(xp, x), on(xp, w), on(xp, b)))
    expected = np.array(
        [[sum(x[n, d] * w[d, o] for d in range(6)) + b[o] for o in range(3)] for n in range(4)]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    g = rng.standard_normal((4, 3))
    grad_x, grad_w, grad_b = dense_backward(on(xp, g), on(xp, x), on(xp, w))

    def loss(x_, w_, b_):
        return float(np.sum(host(dense_forward(on(xp, x_), on(xp, w_), on(xp, b_))) * g))

    assert_gradient(lambda v: loss(v, w, b), x, host(grad_x))
    assert_gradient(lambda v: loss(x, v, b), w, host(grad_w))
    assert_gradient(lambda v: loss(x, w, v), b, host(grad_b))


def test_dropout_scales_kept_units_and_reuses_the_mask(xp, rng):
    x, u = rng.standard_normal((50, 40)), rng.random((50, 40))
    out, scale = dropout_forward(on(xp, x), 0.25, on(xp, u))
    np.testing.assert_allclose(host(out), np.where(u >= 0.25, x / 0.75, 0.0))
    g = rng.standard_normal(x.shape)
    np.testing.assert_allclose(
        host(dropout_backward(on(xp, g), scale)), np.where(u >= 0.25, g / 0.75, 0.0)
    )


def test_cross_entropy_matches_naive_and_its_gradient(xp, rng):
    logits, labels = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    loss, grad = softmax_cross_entropy(on(xp, logits), on(xp, labels))
    np.testing.assert_allclose(float(loss), cross_entropy_naive(logits, labels), rtol=1e-12)
    assert_gradient(
        lambda v: float(softmax_cross_entropy(on(xp, v), on(xp, labels))[0]), logits, host(grad)
    )


def test_label_smoothing_matches_naive_and_its_gradient(xp, rng):
    logits, labels, eps = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2]), 0.2
    target = np.full((5, 4), eps / 4) + (1 - eps) * np.eye(4)[labels]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss, grad = softmax_cross_entropy(on(xp, logits), on(xp, labels), label_smoothing=eps)
    np.testing.assert_allclose(float(loss), -np.sum(target * log_probs) / 5, rtol=1e-12)
    assert_gradient(
        lambda v: float(softmax_cross_entropy(on(xp, v), on(xp, labels), label_smoothing=eps)[0]),
        logits, host(grad),
    )  # fmt: skip


def test_cross_entropy_is_stable_for_huge_logits(xp):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=np.float32)
    loss, grad = softmax_cross_entropy(on(xp, logits), on(xp, np.array([1, 2])))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(host(grad)))
    np.testing.assert_allclose(float(loss), 2e4 / 2, rtol=1e-6)
    probs = host(softmax(on(xp, logits)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "labels,message",
    [
        ([0, 4], r"labels in \[0, 3\]; received labels in \[0, 4\]"),
        ([-1, 0], r"received labels in \[-1, 0\]"),
        ([0.0, 1.0], "integer class labels"),
        ([0, 1, 2], r"labels of shape \(2,\)"),
    ],
)
def test_cross_entropy_rejects_bad_labels(xp, labels, message):
    with pytest.raises(ValueError, match=message):
        softmax_cross_entropy(on(xp, np.zeros((2, 4))), on(xp, np.array(labels)))
