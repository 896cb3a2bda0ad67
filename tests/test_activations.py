"""LeakyReLU, sigmoid, tanh, SiLU, GELU, erf and global average pooling against naive
per-element references (plain Python ``math``), on every namespace; extreme inputs give no
warning. The gradients are checked by central differences in tests/test_layers.py."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from helpers import host, on

from gpucnn.functional import (
    erf,
    gelu_backward,
    gelu_forward,
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
    leaky_relu_backward,
    leaky_relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    silu_backward,
    silu_forward,
    tanh_backward,
    tanh_forward,
)


def naive_sigmoid(v: float) -> float:
    # the two algebraically equal forms, each where math.exp cannot overflow
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def naive_gelu_tanh(v: float) -> float:
    return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


NAIVE = {
    "leaky_relu": lambda v: v if v > 0 else 0.2 * v,
    "sigmoid": naive_sigmoid,
    "tanh": math.tanh,
    "silu": lambda v: v * naive_sigmoid(v),
    "gelu": lambda v: v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))),
    "gelu_tanh": naive_gelu_tanh,
}
FORWARD = {
    "leaky_relu": lambda x: leaky_relu_forward(x, 0.2),
    "sigmoid": sigmoid_forward,
    "tanh": tanh_forward,
    "silu": lambda x: silu_forward(x)[0],
    "gelu": lambda x: gelu_forward(x)[0],
    "gelu_tanh": lambda x: gelu_forward(x, "tanh")[0],
}


# overflow, 0 * inf and division by zero are errors; underflow to 0 is how a tail saturates
RAISE = {"over": "raise", "invalid": "raise", "divide": "raise"}


def naive(name: str, x: np.ndarray) -> np.ndarray:
    return np.vectorize(NAIVE[name], otypes=[np.float64])(x)


@pytest.mark.parametrize("name", sorted(NAIVE))
def test_forward_matches_the_naive_formula(xp, rng, name):
    x = np.concatenate([rng.standard_normal(200) * 3, np.linspace(-12, 12, 97)]).reshape(3, -1)
    out = FORWARD[name](on(xp, x))
    assert out.dtype == xp.float64 and tuple(out.shape) == x.shape
    np.testing.assert_allclose(host(out), naive(name, x), rtol=1e-13, atol=1e-15)
    out32 = host(FORWARD[name](on(xp, x.astype(np.float32))))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, naive(name, x), rtol=3e-6, atol=3e-6)


@pytest.mark.parametrize("name", sorted(NAIVE))
def test_extreme_inputs_saturate_without_warnings(xp, name):
    big = {"float64": 1e300, "float32": 3e38}
    for dtype in ("float64", "float32"):
        x = np.array([-big[dtype], -1e30, -80.0, 80.0, 1e30, big[dtype]], dtype=dtype)
        with warnings.catch_warnings(), np.errstate(**RAISE):
            warnings.simplefilter("error")
            out = host(FORWARD[name](on(xp, x)))
        assert np.all(np.isfinite(out)), out
        expected = [NAIVE[name](float(v)) if abs(v) < 1e4 else None for v in x]
        for got, want in zip(out, expected, strict=True):
            if want is not None:
                assert got == pytest.approx(want, rel=1e-6, abs=1e-30)


def test_backward_formulas_on_extreme_inputs_give_no_warnings(xp):
    x = on(xp, np.array([-1e300, -1e30, -80.0, 0.0, 80.0, 1e30, 1e300]))
    g = on(xp, np.ones(7))
    with warnings.catch_warnings(), np.errstate(**RAISE):
        warnings.simplefilter("error")
        grads = [
            leaky_relu_backward(g, x, 0.2),
            sigmoid_backward(g, sigmoid_forward(x)),
            tanh_backward(g, tanh_forward(x)),
            silu_backward(g, x, silu_forward(x)[1]),
            gelu_backward(g, x, gelu_forward(x)[1]),
            gelu_backward(g, x, gelu_forward(x, "tanh")[1], "tanh"),
        ]
    # at 0: LeakyReLU takes the negative slope there (as PyTorch), then the smooth ones' values
    at_zero = [0.2, 0.25, 1.0, 0.5, 0.5, 0.5]
    for grad, expected in zip(grads, at_zero, strict=True):
        grad = host(grad)
        assert np.all(np.isfinite(grad)) and grad[3] == expected
        assert grad[-1] == pytest.approx(1.0, abs=1e-12) or grad[-1] == 0.0  # saturates


def test_sigmoid_is_exact_in_both_tails(xp):
    x = np.array([-745.0, -700.0, -40.0, 40.0, 700.0])
    out = host(sigmoid_forward(on(xp, x)))
    # 1 / (1 + exp(-x)) would give 0 at -745 only through overflow; exp(x) there is subnormal
    np.testing.assert_allclose(out[:3], np.exp(x[:3]), rtol=1e-12)
    assert out[3] == 1.0 and out[4] == 1.0


def test_erf_standard_code_matches_math_erf_to_2e_15():
    import array_api_strict  # the standard code only: no fast path applies there

    x = np.concatenate([np.linspace(-7, 7, 20001), [0.0, 1e-300, -1e-300, 2.0, -2.0, 6.0, 40.0]])
    got = host(erf(array_api_strict.asarray(x)))
    expected = np.array([math.erf(v) for v in x])
    assert np.max(np.abs(got - expected)) < 2e-15
    special = host(erf(array_api_strict.asarray(np.array([np.inf, -np.inf, np.nan, -0.0]))))
    assert special[0] == 1.0 and special[1] == -1.0 and np.isnan(special[2]) and special[3] == 0.0


def test_erf_on_every_namespace_matches_math_erf(xp):
    x = np.linspace(-5, 5, 1001)
    got = host(erf(on(xp, x)))
    np.testing.assert_allclose(got, [math.erf(v) for v in x], rtol=0, atol=2e-15)
    got32 = host(erf(on(xp, x.astype(np.float32))))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, [math.erf(float(v)) for v in x.astype(np.float32)], atol=1e-6)


def test_global_avg_pool_matches_loops(xp, rng):
    x = rng.standard_normal((2, 5, 3, 4))  # (N, H, W, C)
    out = host(global_avg_pool2d_forward(on(xp, x)))
    expected = np.array(
        [
            [sum(x[n, i, j, c] for i in range(5) for j in range(3)) / 15 for c in range(4)]
            for n in range(2)
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-13)
    g = rng.standard_normal((2, 4))
    grad = global_avg_pool2d_backward(on(xp, g), x.shape)
    grad[0, 0, 0, 0] = 7.0  # a fresh array the caller may write into, not a broadcast view
    grad = host(grad)
    assert grad.shape == x.shape and grad[0, 0, 0, 0] == 7.0
    np.testing.assert_allclose(grad[1, 4, 2, :], g[1] / 15, rtol=1e-15)
