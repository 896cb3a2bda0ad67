"""Max and average pooling against naive loops and central differences, on every namespace."""

import numpy as np
import pytest
from helpers import assert_gradient, host, nchw, nhwc, on, pool_naive

from gpucnn.functional.pooling import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)

# (pool, stride): non-overlapping, overlapping (stride < pool), gapped (stride > pool), 1x1
WINDOWS = [
    ((2, 2), (2, 2)),
    ((3, 3), (2, 2)),
    ((2, 2), (1, 1)),
    ((3, 2), (1, 2)),
    ((1, 1), (2, 2)),
    ((2, 2), (3, 3)),
]
SHAPES = [(1, 1, 7, 8), (3, 2, 6, 5)]  # batch 1 and > 1, odd and non-square


@pytest.mark.parametrize("pool,stride", WINDOWS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_forward_matches_naive_loops(xp, rng, pool, stride, shape, kind):
    x = rng.standard_normal(shape)
    forward = max_pool2d_forward if kind == "max" else avg_pool2d_forward
    out = forward(on(xp, nhwc(x)), pool, stride)
    expected = pool_naive(x, pool, stride, np.max if kind == "max" else np.mean)
    np.testing.assert_allclose(nchw(host(out)), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool,stride", WINDOWS)
def test_max_pool_backward_matches_central_differences(xp, rng, pool, stride):
    # distinct values: no ties, so the max is differentiable at x
    x = rng.permutation(2 * 6 * 7 * 2).reshape(2, 6, 7, 2) / 10.0
    out = max_pool2d_forward(on(xp, x), pool, stride)
    g = rng.standard_normal(tuple(out.shape))
    grad_x = max_pool2d_backward(on(xp, g), on(xp, x), out, pool, stride)
    assert_gradient(
        lambda v: float(np.sum(host(max_pool2d_forward(on(xp, v), pool, stride)) * g)),
        x,
        host(grad_x),
    )


@pytest.mark.parametrize("pool,stride", WINDOWS)
def test_avg_pool_backward_matches_central_differences(xp, rng, pool, stride):
    x = rng.standard_normal((2, 6, 7, 2))
    out = avg_pool2d_forward(on(xp, x), pool, stride)
    g = rng.standard_normal(tuple(out.shape))
    grad_x = avg_pool2d_backward(on(xp, g), x.shape, pool, stride)
    assert_gradient(
        lambda v: float(np.sum(host(avg_pool2d_forward(on(xp, v), pool, stride)) * g)),
        x,
        host(grad_x),
    )


@pytest.mark.parametrize("pool,stride", [((2, 2), (2, 2)), ((3, 3), (1, 1)), ((2, 3), (2, 1))])
def test_max_pool_ties_route_each_gradient_to_exactly_one_input(xp, rng, pool, stride):
    x = np.ones((2, 6, 7, 3))  # every window is one big tie
    out = max_pool2d_forward(on(xp, x), pool, stride)
    g = rng.uniform(1.0, 2.0, size=tuple(out.shape))
    grad_x = host(max_pool2d_backward(on(xp, g), on(xp, x), out, pool, stride))
    np.testing.assert_allclose(grad_x.sum(), g.sum())
    # the first element of each window (row-major) wins the tie: its top-left corner
    OH, OW = g.shape[1:3]
    expected = np.zeros_like(x)
    for i in range(OH):
        for j in range(OW):
            expected[:, i * stride[0], j * stride[1], :] += g[:, i, j, :]
    np.testing.assert_allclose(grad_x, expected)


def test_max_pool_backward_is_not_mean_pooling(xp):
    # the original code's bug: max-pool gradient spread like a mean
    x = np.array([1.0, 5.0, 2.0, 3.0]).reshape(1, 2, 2, 1)
    out = max_pool2d_forward(on(xp, x), (2, 2), (2, 2))
    grad_x = host(
        max_pool2d_backward(on(xp, np.ones((1, 1, 1, 1))), on(xp, x), out, (2, 2), (2, 2))
    )
    np.testing.assert_array_equal(grad_x.reshape(-1), [0.0, 1.0, 0.0, 0.0])
