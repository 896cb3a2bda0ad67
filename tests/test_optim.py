"""Optimizer updates against the textbook formulas, written out independently here."""

import numpy as np
import pytest
from helpers import host, on

from gpucnn import SGD, Adam, Sequential
from gpucnn.layers import Dense


def tiny_model(xp):
    return Sequential([Dense(3)], input_shape=(4,), dtype="float64", backend=xp, seed=0)


def run_steps(xp, optimizer, grads):
    model = tiny_model(xp)
    layer = model.layers[0]
    w0, b0 = host(layer.params["weight"]).copy(), host(layer.params["bias"]).copy()
    for gw, gb in grads:
        layer.grads = {"weight": on(xp, gw), "bias": on(xp, gb)}
        optimizer.step(model)
    return w0, b0, host(layer.params["weight"]), host(layer.params["bias"])


@pytest.fixture
def grads(rng):
    return [(rng.standard_normal((4, 3)), rng.standard_normal(3)) for _ in range(3)]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_and_weight_decay(xp, grads, nesterov):
    lr, mu, wd = 0.1, 0.9, 0.01
    w0, b0, w, b = run_steps(xp, SGD(lr, momentum=mu, nesterov=nesterov, weight_decay=wd), grads)
    expected = []
    for p, decay, index in ((w0.copy(), wd, 0), (b0.copy(), 0.0, 1)):  # no decay on biases
        v = None
        for pair in grads:
            g = pair[index] + decay * p
            v = g if v is None else mu * v + g
            p = p - lr * (g + mu * v if nesterov else v)
        expected.append(p)
    np.testing.assert_allclose(w, expected[0], rtol=1e-12)
    np.testing.assert_allclose(b, expected[1], rtol=1e-12)


def test_plain_sgd(xp, grads):
    w0, _, w, _ = run_steps(xp, SGD(0.5), grads)
    np.testing.assert_allclose(w, w0 - 0.5 * sum(g for g, _ in grads), rtol=1e-12)


def test_adam_with_decoupled_weight_decay(xp, grads):
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    w0, b0, w, b = run_steps(xp, Adam(lr, b1, b2, eps, weight_decay=wd), grads)
    for start, final, decay, index in ((w0, w, wd, 0), (b0, b, 0.0, 1)):
        p, m, v = start.copy(), 0.0, 0.0
        for t, pair in enumerate(grads, start=1):
            g = pair[index]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            p = p - lr * decay * p
            p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(final, p, rtol=1e-10)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: SGD(lr=0), "learning rate lr > 0; received 0"),
        (lambda: SGD(lr=float("nan")), "learning rate"),
        (lambda: SGD(momentum=1.0), r"momentum in \[0, 1\)"),
        (lambda: SGD(nesterov=True), "Nesterov momentum needs momentum > 0"),
        (lambda: Adam(beta2=1.5), r"beta2 in \[0, 1\)"),
        (lambda: SGD(weight_decay=-1), "weight_decay >= 0"),
    ],
)
def test_bad_optimizer_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
