"""Every fast path equals the standard array-API code of the op it accelerates.

NumPy paths are compared with the same op run on array-api-strict (which can only take the
standard code). CUDA kernels are compared on CuPy with the kernels switched off
(``GPUCNN_CUDA_KERNELS=0``); those tests run where a GPU is present. Their CUDA C source is
also compiled by NVRTC wherever the NVRTC library loads, GPU or not, so a kernel that does not
compile fails here first.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import load_namespace

from gpucnn.backend import to_numpy
from gpucnn.functional import (
    conv2d_backward,
    conv2d_forward,
    conv2d_relu_max_pool2d_backward,
    conv2d_relu_max_pool2d_forward,
    erf,
    gelu_backward,
    gelu_forward,
    im2col,
    max_pool2d_backward,
    max_pool2d_forward,
    relu_backward,
    relu_forward,
    softmax_cross_entropy,
)
from gpucnn.functional._dispatch import CUDA_KERNELS_ENV
from gpucnn.functional._numpy_kernels import (
    erf_fast,
    fill_windows_fast,
    max_pool_backward_fast,
    max_pool_forward_fast,
    relu_backward_fast,
    relu_forward_fast,
)
from gpucnn.optim import SGD, Adam
from gpucnn.parameter import Parameter

# ------------------------------------------------------------------------------- NumPy


@pytest.mark.parametrize(
    "shape,kernel,stride",
    [
        ((2, 7, 9, 4), (3, 3), (1, 1)),
        ((3, 8, 6, 6), (2, 3), (2, 1)),
        ((1, 5, 5, 8), (5, 5), (1, 1)),
        ((2, 9, 9, 5), (3, 2), (3, 2)),
        ((2, 9, 9, 1), (5, 5), (1, 1)),  # one channel: the gather for kernels over 9 offsets
        ((2, 9, 8, 2), (3, 3), (2, 1)),
    ],
)
def test_numpy_im2col_equals_the_standard_code(shape, kernel, stride):
    import array_api_strict

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    fast = im2col(x, kernel, stride, bias_column=True)  # NumPy: takes the fast path
    standard = to_numpy(im2col(array_api_strict.asarray(x), kernel, stride, bias_column=True))
    assert fast.dtype == np.float32
    np.testing.assert_array_equal(fast, standard)
    one_channel = x[..., :1]
    # one channel under a small kernel: KH*KW slice copies along whole rows are faster
    assert fill_windows_fast(one_channel, kernel, stride, fast) == (kernel[0] * kernel[1] > 9)


POOL_GEOMETRIES = [((2, 2), (2, 2)), ((3, 3), (3, 3)), ((3, 3), (2, 2)), ((2, 3), (1, 2)), ((2, 2), (3, 3))]  # fmt: skip


@pytest.mark.parametrize("pool,stride", POOL_GEOMETRIES)
@pytest.mark.parametrize("ties", [False, True])
def test_numpy_max_pool_backward_equals_the_standard_code(pool, stride, ties):
    import array_api_strict

    rng = np.random.default_rng(1)
    # a ragged edge, then a 6x6 input that windows with stride == pool tile exactly
    for shape in ((2, 7, 8, 3), (2, 6, 6, 3)):
        x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(np.float32)
        out = max_pool2d_forward(x, pool, stride)
        g = rng.standard_normal(out.shape).astype(np.float32)
        fast = max_pool_backward_fast(g, x, out, pool, stride)
        xs, outs, gs = (array_api_strict.asarray(a) for a in (x, out, g))
        standard = to_numpy(max_pool2d_backward(gs, xs, outs, pool, stride))
        np.testing.assert_array_equal(fast, standard)


@pytest.fixture
def three_threads(monkeypatch):
    """The NumPy thread mode with three threads, every op worth splitting."""
    from gpucnn.functional import _cpu_threads

    monkeypatch.setattr(_cpu_threads, "MIN_PART_BYTES", 0)
    monkeypatch.setenv(_cpu_threads.CPU_THREADS_ENV, "3")
    with _cpu_threads.parallel():
        yield


@pytest.mark.parametrize("pool,stride", POOL_GEOMETRIES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("block_bytes", [1, 1 << 20])  # one image per block; one per part
def test_numpy_max_pool_split_over_threads_equals_the_standard_code(
    three_threads, monkeypatch, pool, stride, relu, block_bytes
):
    import array_api_strict

    from gpucnn.functional import _numpy_kernels

    monkeypatch.setattr(_numpy_kernels, "POOL_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(5)
    for shape in ((5, 7, 8, 3), (4, 6, 6, 3)):  # ragged; tiled by 2x2 and 3x3 windows
        x = rng.integers(-2, 3, shape).astype(np.float32)  # ties and non-positive maxima
        assert max_pool_forward_fast(x, pool, stride, relu) is not None  # the split path
        out = max_pool2d_forward(x, pool, stride, relu=relu)
        g = rng.standard_normal(out.shape).astype(np.float32)
        grad_x = max_pool2d_backward(g, x, out, pool, stride, relu=relu)
        xs, gs = array_api_strict.asarray(x), array_api_strict.asarray(g)
        out_s = max_pool2d_forward(xs, pool, stride, relu=relu)
        np.testing.assert_array_equal(out, to_numpy(out_s))
        grad_s = max_pool2d_backward(gs, xs, out_s, pool, stride, relu=relu)
        np.testing.assert_array_equal(grad_x, to_numpy(grad_s))


def test_numpy_max_pool_of_windows_larger_than_the_input_is_empty(three_threads):
    import array_api_strict

    x = np.ones((2, 3, 3, 1), dtype=np.float32)
    out = max_pool2d_forward(x, (5, 5), (2, 2))
    standard = max_pool2d_forward(array_api_strict.asarray(x), (5, 5), (2, 2))
    assert out.shape == tuple(standard.shape) == (2, 0, 0, 1)


def test_numpy_relu_split_over_threads_equals_the_standard_code(three_threads):
    import array_api_strict

    from gpucnn.functional import relu_forward

    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 4, 3, 2)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # the subgradient at 0 is 0
    g = rng.standard_normal(x.shape).astype(np.float32)
    assert relu_forward_fast(x) is not None and relu_backward_fast(g, x) is not None
    out = relu_forward(x)
    xs, gs = array_api_strict.asarray(x), array_api_strict.asarray(g)
    np.testing.assert_array_equal(out, to_numpy(relu_forward(xs)))
    expected = to_numpy(relu_backward(gs, relu_forward(xs)))
    np.testing.assert_array_equal(relu_backward(g, out), expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_batch_norm_statistics_do_not_cancel(three_threads, dtype):
    """Sorted rows (the first chunk far from the rest) and a large mean with a small spread:
    the chunked statistics keep the exact variance's precision. 100003 rows (a prime) cannot
    be taken several side by side: each column is then a long run of the array's dtype."""
    from gpucnn.functional._numpy_kernels import batch_norm_statistics_fast

    rng = np.random.default_rng(3)
    drift = np.concatenate([np.full(5000, 50.0), np.zeros(20000)])[:, None]
    for x in (
        rng.standard_normal((25000, 4)) + drift,
        1e4 + 1e-2 * rng.standard_normal((9000, 2)),
        1e4 + 1e-2 * rng.standard_normal((100003, 2)),
    ):
        x = x.astype(dtype)
        mean, var = batch_norm_statistics_fast(x)
        exact = x.astype(np.float64)
        true_mean, true_var = exact.mean(axis=0), exact.var(axis=0)
        tol = 1e-12 if dtype == np.float64 else 2e-6
        np.testing.assert_allclose(mean, true_mean, rtol=tol)
        # float32: the mean's rounding (half an ulp of 1e4 is 5e-4, the spread 1e-2) enters
        # the variance squared; 4.5e-5 measured
        np.testing.assert_allclose(var, true_var, rtol=1e-11 if dtype == np.float64 else 1e-4)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(
    "shape,chunk_values",
    [
        ((5, 4, 3, 6), 1 << 18),
        ((9000, 3), 1 << 18),
        ((9000, 3), 900),
        ((7919, 5), 8),
        ((4, 6, 10, 40), 1),
    ],
    ids=["images", "features", "features-chunks", "prime-rows-chunks", "images-chunks"],
)
def test_numpy_batch_norm_equals_the_standard_code(
    three_threads, monkeypatch, dtype, tol, relu, shape, chunk_values
):
    """Statistics, forward (with and without the fused ReLU) and every gradient of the NumPy
    paths against the standard code under array-api-strict. The paths take k rows of C
    channels side by side (k dividing the row count: 1 for 7919 rows) in chunks, which small
    ``BN_CHUNK_VALUES`` make many (one row each with 1). Values far from zero (mean 4, std
    0.5) would show a cancellation."""
    import array_api_strict

    from gpucnn.functional import (
        _numpy_kernels,
        batch_norm_backward,
        batch_norm_forward,
        batch_norm_statistics,
        relu_backward,
    )
    from gpucnn.functional._numpy_kernels import batch_norm_statistics_fast

    monkeypatch.setattr(_numpy_kernels, "BN_CHUNK_VALUES", chunk_values)
    rng = np.random.default_rng(8)
    C = shape[-1]
    x = (rng.standard_normal(shape) * 0.5 + 4.0).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    weight, bias = rng.uniform(0.5, 2.0, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    assert batch_norm_statistics_fast(x) is not None
    strict = [array_api_strict.asarray(a) for a in (x, g, weight, bias)]
    results = []
    for xs, gs, ws, bs in ([x, g, weight, bias], strict):
        mean, var = batch_norm_statistics(xs)
        out, cache = batch_norm_forward(xs, ws, bs, mean, var, 1e-5, relu=relu)
        if relu:
            gs = relu_backward(gs, out)
        grads = batch_norm_backward(gs, cache, ws)
        results.append([to_numpy(a) for a in (mean, var, out, *grads)])
    for name, fast, standard in zip(
        ["mean", "var", "out", "grad_x", "grad_weight", "grad_bias"], *results, strict=True
    ):
        scale = max(float(np.max(np.abs(standard))), 1.0)
        np.testing.assert_allclose(fast, standard, rtol=0, atol=tol * scale, err_msg=name)
        assert fast.dtype == dtype


# erf's arguments: both branches of the standard code (the split is at |x| = 2), its
# saturation, the tails in float32, zeros of either sign and NaN
ERF_POINTS = np.concatenate(
    [np.linspace(-7.0, 7.0, 4001), [0.0, -0.0, 2.0, -2.0, 1e-30, 40.0, -1e30, np.nan]]
)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_erf_equals_the_standard_code(dtype):
    import array_api_strict

    x = ERF_POINTS.astype(dtype)
    fast = erf_fast(x)
    assert fast is not None and fast.dtype == dtype  # SciPy is present with scikit-learn
    standard = to_numpy(erf(array_api_strict.asarray(x)))
    # two algorithms, each within ~1e-15 of the true value in float64 (a few ulp in float32)
    tol = 2e-15 if dtype == np.float64 else 5e-7
    np.testing.assert_allclose(fast, standard, rtol=0, atol=tol, equal_nan=True)
    np.testing.assert_array_equal(erf(x), fast)  # the op takes the fast path


def test_numpy_erf_without_scipy_runs_the_standard_code(monkeypatch):
    import array_api_strict

    monkeypatch.setitem(sys.modules, "scipy.special", None)  # importing it now fails
    x = ERF_POINTS.copy()
    assert erf_fast(x) is None
    expected = to_numpy(erf(array_api_strict.asarray(x)))
    np.testing.assert_array_equal(erf(x), expected)
    out, phi = gelu_forward(x[:-1])  # a layer's use of it works without SciPy
    assert np.all(np.isfinite(out)) and np.all((phi >= 0) & (phi <= 1))


POOLED_CONV_GEOMETRIES = [
    # x shape (N, H, W, C), filters, kernel, stride, padding, pool
    ((3, 10, 10, 1), 4, (3, 3), (1, 1), (0, 0, 0, 0), (2, 2)),  # C = 1, 3x3: the slice-loop fill
    # C = 1 over 9 offsets: the window gather in training, the transposed GEMM at inference
    ((2, 12, 12, 1), 3, (5, 5), (1, 1), (2, 2, 2, 2), (2, 2)),
    ((3, 13, 11, 1), 2, (4, 3), (2, 1), (1, 0, 2, 1), (2, 3)),  # strided, ragged
    ((2, 11, 9, 6), 5, (3, 3), (1, 1), (1, 1, 0, 1), (2, 2)),  # ragged edges, padding
    ((2, 12, 13, 4), 3, (2, 3), (2, 1), (0, 0, 0, 0), (3, 2)),
    ((1, 4, 4, 2), 2, (1, 1), (1, 1), (0, 0, 0, 0), (4, 4)),  # one window
    ((2, 15, 13, 3), 4, (3, 2), (2, 1), (1, 0, 0, 1), (2, 3)),  # C = 3, strided, ragged
    # 16 channels (with ties, sums of 145 terms), ragged edges; 5x5 with F > C
    ((2, 11, 9, 16), 16, (3, 3), (1, 1), (1, 1, 0, 1), (2, 2)),
    ((2, 10, 9, 16), 24, (5, 5), (1, 1), (2, 2, 2, 1), (2, 3)),
]


@pytest.mark.parametrize("shape,filters,kernel,stride,padding,pool", POOLED_CONV_GEOMETRIES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("block_bytes", [1, 1 << 30])  # one image per block; one block
@pytest.mark.parametrize("threads", [1, 3])  # the images split over 3 threads (one each)
def test_numpy_pooled_conv_equals_the_standard_code(
    monkeypatch, shape, filters, kernel, stride, padding, pool, ties, block_bytes, threads
):
    import array_api_strict

    from gpucnn.functional import _cpu_threads, _numpy_kernels

    monkeypatch.setattr(_numpy_kernels, "POOLED_CONV_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(_numpy_kernels, "POOLED_CONV_SLICE_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(_numpy_kernels, "POOLED_CONV_SLICE_WHOLE_PART_BYTES", block_bytes - 1)
    monkeypatch.setattr(_cpu_threads, "MIN_PART_BYTES", 0)
    monkeypatch.setenv(_cpu_threads.CPU_THREADS_ENV, str(threads))
    rng = np.random.default_rng(2)
    C = shape[3]
    if ties:  # small integers: equal maxima and zero outputs in many windows, and exact sums
        # (a fractional bias rounds each GEMM's sum its own way: ties then break by rounding)
        x = rng.integers(-1, 2, shape).astype(np.float32)
        weight = rng.integers(-1, 2, (filters, C, *kernel)).astype(np.float32)
        bias = rng.integers(-1, 2, filters).astype(np.float32)
    else:
        x = rng.standard_normal(shape, dtype=np.float32)
        weight = rng.standard_normal((filters, C, *kernel), dtype=np.float32)
        bias = rng.standard_normal(filters, dtype=np.float32)
    if not ties:  # a NaN pixel: windows that see it pass no gradient, as in the layers
        x[0, 1, 1, 0] = np.nan
    with _cpu_threads.parallel():
        out, cache = conv2d_relu_max_pool2d_forward(x, weight, bias, stride, padding, pool)
        assert cache[0] == "phases"  # the NumPy path
        inferred, no_cache = conv2d_relu_max_pool2d_forward(
            x, weight, bias, stride, padding, pool, training=False
        )
        assert no_cache is None
        if C == 1:  # one channel: inference takes the transposed GEMM (another sum order)
            np.testing.assert_allclose(inferred, out, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(inferred, out)
        g = rng.standard_normal(out.shape, dtype=np.float32)
        fast = [out]
        for need_input_grad in (True, False):
            fast += conv2d_relu_max_pool2d_backward(
                g, cache, weight, shape, stride, padding, pool, need_input_grad
            )
    xs, ws, bs, gs = (array_api_strict.asarray(a) for a in (x, weight, bias, g))
    out_s, cache_s = conv2d_relu_max_pool2d_forward(xs, ws, bs, stride, padding, pool)
    assert cache_s[0] == "layers"
    standard = [to_numpy(out_s)]
    for need_input_grad in (True, False):
        grads = conv2d_relu_max_pool2d_backward(
            gs, cache_s, ws, shape, stride, padding, pool, need_input_grad
        )
        standard += [None if a is None else to_numpy(a) for a in grads]
    assert fast[4] is None and standard[4] is None
    for a, b in zip(fast, standard, strict=True):
        if a is not None:  # the GEMMs sum in another order: float32 rounding
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    # the routing is exact: the same elements receive gradient
    np.testing.assert_array_equal(fast[1] == 0, standard[1] == 0)


@pytest.mark.parametrize("channels,blocks", [(1, True), (2, False)])
def test_numpy_pooled_conv_takes_slice_filled_parts_in_blocks(monkeypatch, channels, blocks):
    """One channel under a 3x3 kernel (rows filled by slice copies): a training part over
    POOLED_CONV_SLICE_WHOLE_PART_BYTES goes in POOLED_CONV_SLICE_BLOCK_BYTES blocks (here two
    images, the last block one), with the results of one block; other parts stay whole."""
    from gpucnn.functional import _cpu_threads, _numpy_kernels

    monkeypatch.setenv(_cpu_threads.CPU_THREADS_ENV, "1")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 10, 10, channels))
    weight, bias = rng.standard_normal((4, channels, 3, 3)), rng.standard_normal(4)
    args = ((1, 1), (0, 0, 0, 0), (2, 2))
    monkeypatch.setattr(_numpy_kernels, "POOLED_CONV_BLOCK_BYTES", 1 << 30)
    whole, whole_cache = conv2d_relu_max_pool2d_forward(x, weight, bias, *args)
    per_image = 4 * 4 * 4 * (9 * channels + 1 + 4) * x.itemsize  # phases * PH * PW * (L + F)
    monkeypatch.setattr(_numpy_kernels, "POOLED_CONV_SLICE_WHOLE_PART_BYTES", 0)
    monkeypatch.setattr(_numpy_kernels, "POOLED_CONV_SLICE_BLOCK_BYTES", 2 * per_image)
    out, cache = conv2d_relu_max_pool2d_forward(x, weight, bias, *args)
    assert whole_cache[1][2] >= 5  # images per block: all five in one
    assert cache[1][2] == 2 if blocks else cache[1][2] >= 5
    np.testing.assert_array_equal(out, whole)
    g = rng.standard_normal(out.shape)
    for a, b in zip(
        conv2d_relu_max_pool2d_backward(g, cache, weight, x.shape, *args),
        conv2d_relu_max_pool2d_backward(g, whole_cache, weight, x.shape, *args),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_numpy_pooled_conv_of_an_empty_batch(three_threads):
    x = np.zeros((0, 10, 10, 1), np.float32)
    weight, bias = np.ones((4, 1, 3, 3), np.float32), np.zeros(4, np.float32)
    args = ((1, 1), (1, 1, 1, 1), (2, 2))
    out, cache = conv2d_relu_max_pool2d_forward(x, weight, bias, *args)
    assert out.shape == (0, 5, 5, 4)
    grad_x, grad_w, grad_b = conv2d_relu_max_pool2d_backward(out, cache, weight, x.shape, *args)
    assert grad_x.shape == x.shape
    np.testing.assert_array_equal(grad_w, 0.0)
    np.testing.assert_array_equal(grad_b, 0.0)


CONV_GEOMETRIES = [
    # x shape (N, H, W, C), filters, kernel, stride, padding
    ((5, 9, 8, 1), 3, (3, 3), (1, 1), (0, 0, 0, 0)),  # C = 1, 3x3: the slice-loop fill
    ((4, 10, 11, 6), 4, (3, 2), (2, 1), (1, 2, 0, 1)),
    ((3, 7, 7, 4), 5, (1, 1), (1, 1), (0, 0, 0, 0)),
    # the input gradient as a convolution of the padded output gradient (F <= C; F > C
    # under a kernel over 3x3), asymmetric padding; padding of 3 under a 3x3 kernel: col2im
    ((3, 6, 7, 16), 16, (3, 3), (1, 1), (1, 0, 2, 1)),
    ((2, 6, 5, 16), 24, (5, 3), (1, 1), (0, 4, 2, 1)),
    ((2, 4, 5, 16), 8, (3, 3), (1, 1), (3, 1, 0, 0)),
]


@pytest.mark.parametrize(
    "filters,channels,kernel,stride,padding,expected",
    [
        (16, 16, (3, 3), (1, 1), (1, 1, 1, 1), True),
        (32, 64, (3, 3), (1, 1), (0, 0, 0, 0), True),
        (32, 16, (3, 3), (1, 1), (1, 1, 1, 1), False),  # F = 2C under 3x3: col2im
        (32, 16, (5, 5), (1, 1), (2, 2, 2, 2), True),  # 25 slice-adds: the gather
        (16, 6, (5, 5), (1, 1), (0, 0, 0, 0), False),  # a GEMM 6 columns wide
        (16, 16, (1, 1), (1, 1), (0, 0, 0, 0), False),  # nothing overlaps
        (16, 16, (3, 3), (2, 2), (1, 1, 1, 1), False),  # stride 2
        (16, 16, (3, 3), (1, 2), (1, 1, 1, 1), False),  # stride 2 along one axis
        (16, 16, (3, 3), (2, 1), (1, 1, 1, 1), False),
        (128, 16, (5, 5), (1, 1), (2, 2, 2, 2), False),  # F = 8C: rows 8x im2col's
        (16, 16, (3, 3), (1, 1), (3, 1, 0, 0), False),  # padding beyond KH - 1
    ],
)
def test_numpy_conv_input_grad_gather_rule(filters, channels, kernel, stride, padding, expected):
    from gpucnn.functional._numpy_kernels import input_grad_gather_pays

    weight_shape = (filters, channels, *kernel)
    assert input_grad_gather_pays(weight_shape, stride, padding) is expected


def test_numpy_conv_geometries_take_both_input_gradient_paths():
    """The split-conv tests below see the gather and col2im both (a retuned rule that left
    one untested would fail here)."""
    from gpucnn.functional._numpy_kernels import input_grad_gather_pays

    taken = [
        input_grad_gather_pays((filters, shape[3], *kernel), stride, padding)
        for shape, filters, kernel, stride, padding in CONV_GEOMETRIES
    ]
    assert taken == [False, False, False, True, True, False]


@pytest.mark.parametrize("shape,filters,kernel,stride,padding", CONV_GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_conv_split_over_threads_equals_the_standard_code(
    monkeypatch, shape, filters, kernel, stride, padding, dtype
):
    import array_api_strict

    from gpucnn.functional import _cpu_threads, _numpy_kernels

    monkeypatch.setattr(_cpu_threads, "MIN_PART_BYTES", 0)
    monkeypatch.setenv(_cpu_threads.CPU_THREADS_ENV, "3")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    weight = rng.standard_normal((filters, shape[3], *kernel)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype)
    assert _numpy_kernels.conv2d_forward_fast(x, weight, bias, stride, padding) is None  # 1 part
    with _cpu_threads.parallel():
        out, cols = _numpy_kernels.conv2d_forward_fast(x, weight, bias, stride, padding)
        g = rng.standard_normal(out.shape).astype(dtype)
        # inference: blocks of one image, then of two (a ragged last block in some parts),
        # with and without the ReLU; no rows kept
        N, OH, OW, _ = out.shape
        L = weight[0].size + 1
        for images_per_block in (1, 2):
            monkeypatch.setattr(
                _numpy_kernels, "IM2COL_BLOCK_BYTES", images_per_block * OH * OW * L * x.itemsize
            )
            for relu in (False, True):
                inference = _numpy_kernels.conv2d_forward_fast(
                    x, weight, bias, stride, padding, relu=relu, training=False
                )
                assert inference[1] is None
                expected = np.maximum(out, 0) if relu else out
                # GEMMs of other sizes: other rounding
                np.testing.assert_allclose(inference[0], expected, rtol=1e-6, atol=1e-6)
        split = [out, cols]
        for need_input_grad in (True, False):
            split += _numpy_kernels.conv2d_backward_fast(
                g, cols, weight, shape, stride, padding, need_input_grad
            )
    xs, ws, bs, gs = (array_api_strict.asarray(a) for a in (x, weight, bias, g))
    out_s, cols_s = conv2d_forward(xs, ws, bs, stride, padding)
    standard = [to_numpy(out_s), to_numpy(cols_s)]
    for need_input_grad in (True, False):
        grads = conv2d_backward(gs, cols_s, ws, shape, stride, padding, need_input_grad)
        standard += [None if a is None else to_numpy(a) for a in grads]
    assert split[5] is None and standard[5] is None
    np.testing.assert_array_equal(split[1], standard[1])  # the same im2col rows
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(split, standard, strict=True):
        if a is not None:  # the GEMMs sum in another order
            np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("shape,filters,kernel,stride,padding", CONV_GEOMETRIES)
@pytest.mark.parametrize("images_per_block", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
def test_numpy_conv_training_in_blocks_equals_whole_parts(
    monkeypatch, shape, filters, kernel, stride, padding, images_per_block, relu
):
    """Parts whose im2col rows outgrow the cache are filled, multiplied and (backward) turned
    back into input gradients block by block: the same rows, outputs and gradients."""
    from gpucnn.functional import _cpu_threads, _numpy_kernels

    monkeypatch.setattr(_cpu_threads, "MIN_PART_BYTES", 0)
    monkeypatch.setenv(_cpu_threads.CPU_THREADS_ENV, "2")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2 * shape[0] + 1, *shape[1:]))  # two parts of unequal sizes
    weight = rng.standard_normal((filters, shape[3], *kernel))
    bias = rng.standard_normal(filters)

    def step():
        out, cols = _numpy_kernels.conv2d_forward_fast(x, weight, bias, stride, padding, relu)
        g = np.random.default_rng(5).standard_normal(out.shape)
        grads = _numpy_kernels.conv2d_backward_fast(
            g, cols, weight, x.shape, stride, padding, True, relu_out=out if relu else None
        )
        return out, cols, *grads

    with _cpu_threads.parallel():
        whole = step()
        N, OH, OW, L = whole[1].shape
        monkeypatch.setattr(_numpy_kernels, "IM2COL_WHOLE_PART_BYTES", 0)
        monkeypatch.setattr(
            _numpy_kernels, "IM2COL_BLOCK_BYTES", images_per_block * OH * OW * L * x.itemsize
        )
        assert _numpy_kernels._training_block(N // 2, OH * OW * L * x.itemsize) == images_per_block
        blocked = step()
    np.testing.assert_array_equal(blocked[1], whole[1])  # the rows kept, ones column included
    for a, b in zip(blocked, whole, strict=True):  # GEMMs of other sizes: other rounding
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,filters,kernel,stride,padding", CONV_GEOMETRIES)
@pytest.mark.parametrize("threads", [1, 3])  # 1: the standard code on NumPy
def test_numpy_conv_relu_equals_the_standard_code(
    monkeypatch, shape, filters, kernel, stride, padding, threads
):
    import array_api_strict

    from gpucnn.functional import _cpu_threads, conv2d_relu_backward, conv2d_relu_forward

    monkeypatch.setattr(_cpu_threads, "MIN_PART_BYTES", 0)
    monkeypatch.setenv(_cpu_threads.CPU_THREADS_ENV, str(threads))
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal((filters, shape[3], *kernel)).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    with _cpu_threads.parallel():
        out, cols = conv2d_relu_forward(x, weight, bias, stride, padding)
        g = rng.standard_normal(out.shape).astype(np.float32)
        fast = [out, cols]
        for need_input_grad in (True, False):
            fast += conv2d_relu_backward(
                g, out, cols, weight, shape, stride, padding, need_input_grad
            )
    xs, ws, bs, gs = (array_api_strict.asarray(a) for a in (x, weight, bias, g))
    conv_s, cols_s = conv2d_forward(xs, ws, bs, stride, padding)
    out_s = relu_forward(conv_s)  # the two layers' standard code, one after the other
    standard = [to_numpy(out_s), to_numpy(cols_s)]
    for need_input_grad in (True, False):
        grads = conv2d_backward(
            relu_backward(gs, out_s), cols_s, ws, shape, stride, padding, need_input_grad
        )
        standard += [None if a is None else to_numpy(a) for a in grads]
    assert fast[5] is None and standard[5] is None
    assert np.all(fast[0] >= 0) and np.any(fast[0] == 0)
    np.testing.assert_array_equal(fast[0] == 0, standard[0] == 0)  # the same ReLU mask
    for a, b in zip(fast, standard, strict=True):
        if a is not None:  # the GEMMs sum in another order
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_numpy_conv_with_mixed_dtypes_promotes_as_the_standard_code(monkeypatch):
    from gpucnn.functional import _cpu_threads

    monkeypatch.setattr(_cpu_threads, "MIN_PART_BYTES", 0)
    monkeypatch.setenv(_cpu_threads.CPU_THREADS_ENV, "2")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 6, 6, 2)).astype(np.float32)
    weight, bias = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)  # float64
    with _cpu_threads.parallel():
        out, _ = conv2d_forward(x, weight, bias, (1, 1), (0, 0, 0, 0))
        pooled, _ = conv2d_relu_max_pool2d_forward(x, weight, bias, (1, 1), (0, 0, 0, 0), (2, 2))
    assert out.dtype == pooled.dtype == np.float64


# -------------------------------------------------------------------------------- CUDA


def test_cuda_kernel_source_compiles_with_nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - no CuPy or no NVRTC library on this machine
        pytest.skip(f"NVRTC is not available ({type(exc).__name__}: {exc})")
    from gpucnn.functional._cuda_kernels import OPTIONS, SHAPED_SOURCE, full_source, shaped_source

    def ptx(source: str, what: str) -> str:
        program = nvrtc.createProgram(source, "gpucnn.cu", [], [])
        try:
            nvrtc.compileProgram(program, ["-arch=compute_90", *OPTIONS])
            return nvrtc.getPTX(program).decode()
        except nvrtc.NVRTCError as exc:
            pytest.fail(f"{what} does not compile: {exc}\n{nvrtc.getProgramLog(program)}")
        finally:
            nvrtc.destroyProgram(program)

    # the reference network's first convolution and pool, an odd geometry, and 4 channels
    # per thread
    geometries = [
        dict(H=28, W=28, C=1, KH=3, KW=3, SH=1, SW=1, PT=0, PL=0, OH=26, OW=26, K=9, K1=12, LD=12),
        dict(H=9, W=7, C=5, KH=3, KW=2, SH=2, SW=3, PT=1, PL=0, OH=5, OW=2, K=30, K1=32, LD=32),
        dict(H=11, W=11, C=64, KH=2, KW=2, SH=2, SW=2, PT=0, PL=0, OH=5, OW=5, K=256, K1=260,
             LD=260, V=4),
    ]  # fmt: skip
    for dtype in ("float32", "float64"):
        assert ".entry sgd_multi" in ptx(full_source(dtype), f"{dtype} kernels")
        for name in SHAPED_SOURCE:
            for sizes in geometries:
                code = ptx(
                    shaped_source(name, dtype, {"V": 1, **sizes, "BIAS": 1, "RELU": 1}), name
                )
                assert f".entry {name}" in code
                # every size is a constant: no integer division is left
                assert "div.s32" not in code and "rem.s32" not in code, name


def test_a_broken_kernel_source_is_rejected_by_nvrtc():
    """The compile check above can fail: NVRTC rejects a syntax error with its log."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"NVRTC is not available ({type(exc).__name__}: {exc})")
    program = nvrtc.createProgram('extern "C" __global__ void k() { int x = ; }', "bad.cu", [], [])
    with pytest.raises(nvrtc.NVRTCError):
        nvrtc.compileProgram(program, ["-arch=compute_90"])
    assert "expected an expression" in nvrtc.getProgramLog(program)


@pytest.fixture
def cupy():
    return load_namespace("cupy")


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


def run_both(monkeypatch, compute):
    """``compute()`` with the CUDA kernels on, then off; both results as host arrays."""
    monkeypatch.delenv(CUDA_KERNELS_ENV, raising=False)
    fast = [to_numpy(a) for a in compute()]
    monkeypatch.setenv(CUDA_KERNELS_ENV, "0")
    standard = [to_numpy(a) for a in compute()]
    monkeypatch.delenv(CUDA_KERNELS_ENV)
    return fast, standard


def assert_close(fast, standard, dtype):
    tol = 1e-5 if dtype == "float32" else 1e-12
    for a, b in zip(fast, standard, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "shape,filters,kernel,stride,padding",
    [
        ((4, 28, 28, 1), 8, (3, 3), (1, 1), (0, 0, 0, 0)),
        ((3, 13, 13, 8), 16, (3, 3), (1, 1), (1, 1, 1, 1)),
        ((2, 9, 11, 3), 5, (5, 3), (2, 3), (2, 1, 0, 2)),  # asymmetric, strided, ragged
        ((2, 6, 6, 4), 3, (2, 2), (2, 2), (0, 1, 0, 1)),
    ],
)
def test_cuda_conv_equals_the_standard_code(
    cupy, dtype, monkeypatch, shape, filters, kernel, stride, padding
):
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal(shape), dtype=dtype)
    w = cupy.asarray(rng.standard_normal((filters, shape[3], *kernel)), dtype=dtype)
    b = cupy.asarray(rng.standard_normal(filters), dtype=dtype)

    def compute():
        out, cols = conv2d_forward(x, w, b, stride, padding)
        g = cupy.asarray(np.random.default_rng(1).standard_normal(out.shape), dtype=dtype)
        return (out, cols, *conv2d_backward(g, cols, w, x.shape, stride, padding))

    fast, standard = run_both(monkeypatch, compute)
    K1 = kernel[0] * kernel[1] * shape[3] + 1
    cols, cols_standard = fast[1], standard[1]
    assert cols.shape[-1] % 4 == 0 and cols.shape[-1] - K1 in range(4)  # 16-byte rows
    np.testing.assert_array_equal(cols[..., K1:], 0.0)
    fast[1], standard[1] = cols[..., :K1], cols_standard
    assert_close(fast, standard, dtype)


@pytest.mark.parametrize("pool,stride", POOL_GEOMETRIES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_cuda_max_pool_equals_the_standard_code(cupy, dtype, monkeypatch, pool, stride, relu, ties):
    rng = np.random.default_rng(2)
    for shape in ((2, 7, 8, 3), (3, 6, 6, 5), (2, 9, 7, 8)):  # 8: 4 channels per thread
        host = rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)
        x = cupy.asarray(host, dtype=dtype)

        def compute(x=x):
            out = max_pool2d_forward(x, pool, stride, relu=relu)
            g = cupy.asarray(np.random.default_rng(3).standard_normal(out.shape), dtype=dtype)
            return out, max_pool2d_backward(g, x, out, pool, stride, relu=relu)

        (out, grad_x), (out_standard, grad_x_standard) = run_both(monkeypatch, compute)
        np.testing.assert_array_equal(out, out_standard)
        if stride[0] >= pool[0] and stride[1] >= pool[1]:
            # each input is in one window at most: one routed value, exactly equal
            np.testing.assert_array_equal(grad_x, grad_x_standard)
        else:  # overlapping windows: the same routes, summed in another order (a sum of
            # gradients ~N(0, 1) may cancel: its rounding is relative to the terms, not to it)
            tol = 1e-6 if dtype == "float32" else 1e-14
            np.testing.assert_allclose(grad_x, grad_x_standard, rtol=tol, atol=tol)
            np.testing.assert_array_equal(grad_x == 0, grad_x_standard == 0)


def test_cuda_relu_backward_and_loss_equal_the_standard_code(cupy, dtype, monkeypatch):
    rng = np.random.default_rng(4)
    out = cupy.asarray(np.maximum(rng.standard_normal((5, 7, 3)), 0.0), dtype=dtype)
    g = cupy.asarray(rng.standard_normal((5, 7, 3)), dtype=dtype)
    logits = cupy.asarray(rng.standard_normal((300, 10)) * 30, dtype=dtype)  # > one block
    labels = cupy.asarray(rng.integers(0, 10, 300))

    def compute():
        return (relu_backward(g, out), *softmax_cross_entropy(logits, labels))

    assert_close(*run_both(monkeypatch, compute), dtype)


@pytest.mark.parametrize("relu", [False, True])
def test_cuda_batch_norm_equals_the_standard_code(cupy, dtype, monkeypatch, relu):
    """The BatchNorm kernels (switched on by GPUCNN_CUDA_BATCH_NORM=1) against the standard
    code: forward with and without ReLU, every gradient, (N, H, W, C) and (N, D)."""
    from gpucnn.functional import batch_norm_backward, batch_norm_forward, batch_norm_statistics
    from gpucnn.functional._cuda_kernels import BATCH_NORM_ENV

    monkeypatch.setenv(BATCH_NORM_ENV, "1")
    rng = np.random.default_rng(9)
    for shape in ((6, 5, 4, 12), (33, 7)):
        x = cupy.asarray(rng.standard_normal(shape) + 2.0, dtype=dtype)
        g = cupy.asarray(rng.standard_normal(shape), dtype=dtype)
        w = cupy.asarray(rng.uniform(0.5, 2.0, shape[-1]), dtype=dtype)
        b = cupy.asarray(rng.standard_normal(shape[-1]), dtype=dtype)

        def compute(x=x, g=g, w=w, b=b):
            mean, var = batch_norm_statistics(x)
            out, cache = batch_norm_forward(x, w, b, mean, var, 1e-5, relu=relu)
            grad = relu_backward(g, out) if relu else g
            return (out, *batch_norm_backward(grad, cache, w))

        assert_close(*run_both(monkeypatch, compute), dtype)


def test_cuda_dropout_draw_equals_the_host_draw(cupy, dtype, monkeypatch):
    from gpucnn.random import Random

    def compute():
        return (Random(7, cupy).uniform((33, 65), getattr(cupy, dtype)),)

    fast, standard = run_both(monkeypatch, compute)
    np.testing.assert_array_equal(fast[0], standard[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
        lambda: SGD(lr=0.1),
        lambda: Adam(lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd-momentum-decay", "nesterov", "plain-sgd", "adam-decay"],
)
def test_cuda_optimizer_updates_equal_the_standard_code(cupy, dtype, monkeypatch, make):
    rng = np.random.default_rng(5)
    shapes = [(6, 4), (4,), (3, 2, 3, 3)] * 4  # 12 parameters: two launches of 8 slots
    starts = [rng.standard_normal(shape) for shape in shapes]
    grads = [[rng.standard_normal(shape) for shape in shapes] for _ in range(3)]

    def compute():
        parameters = [
            Parameter(cupy.asarray(start, dtype=dtype), f"p{i}", decay=i % 2 == 0)
            for i, start in enumerate(starts)
        ]
        optimizer = make()
        for step in grads:
            for p, grad in zip(parameters, step, strict=True):
                g = cupy.asarray(grad, dtype=dtype)
                p.grad = g.T.copy().T if g.ndim == 2 else g  # a non-contiguous gradient too
            optimizer.step(parameters)
        return [p.data for p in parameters]

    assert_close(*run_both(monkeypatch, compute), dtype)


def test_cuda_kernels_take_strided_inputs(cupy, dtype, monkeypatch):
    """A strided gradient (as Flatten's backward gives) is copied, not sent to the slow path."""
    rng = np.random.default_rng(6)
    x = cupy.asarray(rng.standard_normal((2, 6, 6, 3)), dtype=dtype)
    g_nchw = cupy.asarray(rng.standard_normal((2, 3, 3, 3)), dtype=dtype)

    def compute():
        out = max_pool2d_forward(x, (2, 2), (2, 2), relu=True)
        g = cupy.permute_dims(g_nchw, (0, 2, 3, 1))  # (N, OH, OW, C), not contiguous
        return out, max_pool2d_backward(g, x, out, (2, 2), (2, 2), relu=True), relu_backward(g, out)

    (out, grad_x, relu_grad), standard = run_both(monkeypatch, compute)
    np.testing.assert_array_equal(grad_x, standard[1])
    np.testing.assert_array_equal(relu_grad, standard[2])


def test_cuda_erf_and_gelu_equal_the_standard_code(cupy, dtype, monkeypatch):
    x = cupy.asarray(ERF_POINTS, dtype=dtype)
    g = cupy.asarray(np.random.default_rng(7).standard_normal(ERF_POINTS.shape), dtype=dtype)

    def compute():
        out, phi = gelu_forward(x)
        return erf(x), out, gelu_backward(g, x, phi)

    fast, standard = run_both(monkeypatch, compute)
    tol = 1e-6 if dtype == "float32" else 2e-15
    for a, b in zip(fast, standard, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, equal_nan=True)
