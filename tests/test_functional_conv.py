"""conv2d and im2col/col2im against naive loops and central differences, on every namespace."""

import itertools

import numpy as np
import pytest
from helpers import assert_gradient, conv2d_naive, host, nchw, nhwc, on, same_padding

from gpucnn.functional.conv import conv2d_backward, conv2d_forward
from gpucnn.functional.im2col import col2im, im2col, resolve_padding

FORWARD_GRID = list(itertools.product((1, 3), (1, 2, 5), (1, 3, 5), (1, 2), (0, 1, "same")))


def expected_pads(padding, k, stride, H, W):
    if padding == "same":
        return (*same_padding(H, k, stride), *same_padding(W, k, stride))
    return (padding,) * 4


@pytest.mark.parametrize("C,F,k,stride,padding", FORWARD_GRID)
def test_forward_matches_naive_loops(xp, rng, C, F, k, stride, padding):
    N = 1 if F == 2 else 3  # batch 1 and batch > 1 across the grid
    H, W = 7, 9  # odd, non-square
    x, w, b = (
        rng.standard_normal((N, C, H, W)),
        rng.standard_normal((F, C, k, k)),
        rng.standard_normal(F),
    )
    pads = resolve_padding(padding, (k, k), (stride, stride), (H, W))
    assert pads == expected_pads(padding, k, stride, H, W)
    out, _ = conv2d_forward(on(xp, nhwc(x)), on(xp, w), on(xp, b), (stride, stride), pads)
    expected = conv2d_naive(x, w, b, (stride, stride), pads)
    if padding == "same":
        assert expected.shape[2:] == (-(-H // stride), -(-W // stride))
    np.testing.assert_allclose(nchw(host(out)), expected, rtol=1e-10, atol=1e-10)


def test_forward_rectangular_kernel_stride_and_padding(xp, rng):
    x, w, b = (
        rng.standard_normal((2, 2, 6, 11)),
        rng.standard_normal((3, 2, 2, 4)),
        rng.standard_normal(3),
    )
    pads = resolve_padding((1, 2), (2, 4), (3, 2), (6, 11))
    out, _ = conv2d_forward(on(xp, nhwc(x)), on(xp, w), on(xp, b), (3, 2), pads)
    expected = conv2d_naive(x, w, b, (3, 2), (1, 1, 2, 2))
    np.testing.assert_allclose(nchw(host(out)), expected, rtol=1e-10, atol=1e-10)


def test_float32_stays_float32(xp, rng):
    x = on(xp, rng.standard_normal((2, 5, 5, 3)).astype(np.float32))
    w = on(xp, rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    b = on(xp, np.zeros(4, np.float32))
    out, cols = conv2d_forward(x, w, b, (1, 1), (1, 1, 1, 1))
    grads = conv2d_backward(out, cols, w, tuple(x.shape), (1, 1), (1, 1, 1, 1))
    assert out.dtype == xp.float32 and all(g.dtype == xp.float32 for g in grads)


GRAD_GRID = list(itertools.product((1, 3), (1, 3), (1, 2), (0, "same")))


@pytest.mark.parametrize("C,k,stride,padding", GRAD_GRID)
def test_backward_matches_central_differences(xp, rng, C, k, stride, padding):
    N, F, H, W = 2, 2, 5, 6
    x, w, b = (
        rng.standard_normal((N, H, W, C)),
        rng.standard_normal((F, C, k, k)),
        rng.standard_normal(F),
    )
    pads = resolve_padding(padding, (k, k), (stride, stride), (H, W))
    out, cols = conv2d_forward(on(xp, x), on(xp, w), on(xp, b), (stride, stride), pads)
    g = rng.standard_normal(tuple(out.shape))
    grad_x, grad_w, grad_b = conv2d_backward(
        on(xp, g), cols, on(xp, w), x.shape, (stride, stride), pads
    )

    def loss(x_, w_, b_):
        o, _ = conv2d_forward(on(xp, x_), on(xp, w_), on(xp, b_), (stride, stride), pads)
        return float(np.sum(host(o) * g))

    assert_gradient(lambda v: loss(v, w, b), x, host(grad_x))
    assert_gradient(lambda v: loss(x, v, b), w, host(grad_w))
    assert_gradient(lambda v: loss(x, w, v), b, host(grad_b))


def test_backward_can_skip_input_gradient(xp, rng):
    x, w, b = (on(xp, rng.standard_normal(s)) for s in ((2, 5, 5, 1), (3, 1, 3, 3), (3,)))
    out, cols = conv2d_forward(x, w, b, (1, 1), (0, 0, 0, 0))
    grad_x, grad_w, _ = conv2d_backward(
        out, cols, w, tuple(x.shape), (1, 1), (0, 0, 0, 0), need_input_grad=False
    )
    assert grad_x is None and tuple(grad_w.shape) == (3, 1, 3, 3)


@pytest.mark.parametrize("kernel,stride", [((3, 3), (1, 1)), ((3, 2), (2, 1)), ((2, 2), (3, 3))])
def test_col2im_is_the_adjoint_of_im2col(xp, rng, kernel, stride):
    # <im2col(x), c> == <x, col2im(c)> for every x, c: col2im sums overlapping windows exactly.
    x = rng.standard_normal((2, 7, 6, 5))
    cols = host(im2col(on(xp, x), kernel, stride))
    N, OH, OW, _ = cols.shape
    c = rng.standard_normal((N, OH, OW, *kernel, 5))
    lhs = np.sum(cols * c.reshape(cols.shape))
    offset_major = np.ascontiguousarray(c.transpose(3, 4, 0, 1, 2, 5))  # col2im's layout
    rhs = np.sum(x * host(col2im(on(xp, offset_major), x.shape, stride)))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("C", [1, 5])  # below and above the NumPy fast path's threshold
def test_im2col_window_content(xp, C):
    x = np.arange(2 * 4 * 5 * C, dtype=np.float64).reshape(2, 4, 5, C)
    cols = host(im2col(on(xp, x), (2, 3), (2, 1), bias_column=True))
    assert cols.shape == (2, 2, 3, 2 * 3 * C + 1)
    np.testing.assert_array_equal(cols[1, 1, 2, :-1].reshape(2, 3, C), x[1, 2:4, 2:5, :])
    assert np.all(cols[..., -1] == 1.0)
