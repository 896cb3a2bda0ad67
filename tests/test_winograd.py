"""Winograd F(2x2, 3x3), F(4x4, 3x3) and F(2x2, 5x5) convolutions (NumPy) against naive loops,
central differences and the standard im2col code, and the rules that decide where they run."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_gradient, conv2d_naive, nchw

from gpucnn.backend import to_numpy
from gpucnn.functional import (
    _cpu_threads,
    _winograd,
    _winograd_4x4,
    _winograd_5x5,
    conv2d_backward,
    conv2d_forward,
    conv2d_relu_backward,
    conv2d_relu_forward,
    conv2d_relu_max_pool2d_backward,
    conv2d_relu_max_pool2d_forward,
    relu_backward,
)

# x shape (N, H, W, C), filters, padding (PT, PB, PL, PR): even and odd outputs, one tile,
# asymmetric and wide padding
GEOMETRIES = [
    ((3, 8, 8, 3), 4, (1, 1, 1, 1)),
    ((2, 7, 9, 2), 3, (0, 0, 0, 0)),
    ((2, 6, 5, 5), 3, (1, 0, 0, 1)),
    ((1, 3, 3, 1), 2, (0, 0, 0, 0)),
    ((4, 11, 12, 6), 5, (2, 1, 0, 3)),
]


class Variant(int):
    """A kernel side (3 or 5) that also names the Winograd algorithm under test: its module,
    outputs per tile side and float64 tolerance (G's fractions down to 1/24 round more)."""

    def __new__(cls, side: int, module, m: int, tolerance: float):
        variant = super().__new__(cls, side)
        variant.module, variant.m, variant.f64_tolerance = module, m, tolerance
        return variant

    @property
    def tile(self) -> int:
        return self.m + int(self) - 1


# each algorithm; a 5x5 case pads one more on every side (same output sizes)
VARIANTS = {
    "3x3": Variant(3, _winograd, 2, 1e-12),
    "3x3-f4": Variant(3, _winograd_4x4, 4, 1e-11),
    "5x5": Variant(5, _winograd_5x5, 2, 1e-11),
}
MODULES = [v.module for v in VARIANTS.values()]
KERNELS = pytest.mark.parametrize("kernel", list(VARIANTS.values()), ids=list(VARIANTS))


def _padding(padding, kernel):
    return tuple(p + (kernel - 3) // 2 for p in padding)


@pytest.fixture
def everywhere(monkeypatch, request):
    """Winograd for every 3x3 and 5x5 stride-1 convolution, however small: by the algorithm
    of the test's ``kernel`` (F(2x2, 3x3) for 3x3 ones without)."""
    variant = getattr(request.node, "callspec", None)
    variant = variant.params.get("kernel") if variant else None
    for module in (_winograd, _winograd_5x5):
        monkeypatch.setattr(module, "WINOGRAD_MIN_CHANNELS", 1)
        monkeypatch.setattr(module, "WINOGRAD_MIN_SIDE", 1)
    monkeypatch.setattr(_winograd, "WINOGRAD_MIN_WORK", 0)
    # F(4x4, 3x3) takes the 3x3 convolutions F(2x2, 3x3) takes: all, or (other tests) none
    chosen = variant is not None and variant.module is _winograd_4x4
    monkeypatch.setattr(_winograd_4x4, "MAX_SPARE", float("inf") if chosen else 0.0)


def _arrays(rng, shape, filters, dtype=np.float64, kernel=3):
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((filters, shape[3], kernel, kernel)).astype(dtype)
    b = rng.standard_normal(filters).astype(dtype)
    return x, w, b


@KERNELS
@pytest.mark.parametrize("shape,filters,padding", GEOMETRIES)
def test_forward_matches_naive_loops(everywhere, rng, shape, filters, padding, kernel):
    x, w, b = _arrays(rng, shape, filters, kernel=kernel)
    padding = _padding(padding, kernel)
    out, saved = conv2d_forward(x, w, b, (1, 1), padding)
    assert isinstance(saved, kernel.module.TransformedInput)
    expected = conv2d_naive(nchw(x), w, b, (1, 1), padding)
    # F(2x2, 5x5)'s filter transform divides by up to 24: a few more float64 roundings
    tolerance = kernel.f64_tolerance
    np.testing.assert_allclose(nchw(out), expected, rtol=tolerance, atol=tolerance)


@KERNELS
@pytest.mark.parametrize("shape,filters,padding", GEOMETRIES[1:3])
def test_backward_matches_central_differences(everywhere, rng, shape, filters, padding, kernel):
    x, w, b = _arrays(rng, shape, filters, kernel=kernel)
    padding = _padding(padding, kernel)
    out, saved = conv2d_forward(x, w, b, (1, 1), padding)
    g = rng.standard_normal(out.shape)
    grad_x, grad_w, grad_b = conv2d_backward(g, saved, w, x.shape, (1, 1), padding)

    def loss(x_, w_, b_):
        return float(np.sum(conv2d_forward(x_, w_, b_, (1, 1), padding)[0] * g))

    assert_gradient(lambda v: loss(v, w, b), x, grad_x)
    assert_gradient(lambda v: loss(x, v, b), w, grad_w)
    assert_gradient(lambda v: loss(x, w, v), b, grad_b)


@KERNELS
@pytest.mark.parametrize("shape,filters,padding", GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads,block_bytes", [(1, 1), (3, 1), (3, 1 << 30)])
def test_equals_the_standard_code(
    everywhere, monkeypatch, shape, filters, padding, dtype, threads, block_bytes, kernel
):
    import array_api_strict

    monkeypatch.setattr(_cpu_threads, "MIN_PART_BYTES", 0)
    monkeypatch.setenv(_cpu_threads.CPU_THREADS_ENV, str(threads))
    monkeypatch.setattr(kernel.module, "BLOCK_BYTES", block_bytes)  # 1: one image per block
    rng = np.random.default_rng(5)
    x, w, b = _arrays(rng, shape, filters, dtype, kernel)
    padding = _padding(padding, kernel)
    with _cpu_threads.parallel():
        out, saved = conv2d_forward(x, w, b, (1, 1), padding)
        relu_out, relu_saved = conv2d_relu_forward(x, w, b, (1, 1), padding)
        g = rng.standard_normal(out.shape).astype(dtype)
        fast = [out, relu_out]
        for need_input_grad in (True, False):
            fast += conv2d_backward(g, saved, w, x.shape, (1, 1), padding, need_input_grad)
        fast += conv2d_relu_backward(g, relu_out, relu_saved, w, x.shape, (1, 1), padding)
    xs, ws, bs = (array_api_strict.asarray(a) for a in (x, w, b))
    out_s, cols_s = conv2d_forward(xs, ws, bs, (1, 1), padding)
    relu_s = np.maximum(to_numpy(out_s), 0)
    standard = [to_numpy(out_s), relu_s]
    for need_input_grad in (True, False):
        grads = conv2d_backward(
            array_api_strict.asarray(g), cols_s, ws, x.shape, (1, 1), padding, need_input_grad
        )
        standard += [None if a is None else to_numpy(a) for a in grads]
    masked = array_api_strict.asarray(to_numpy(relu_backward(g, relu_s)))
    standard += [to_numpy(a) for a in conv2d_backward(masked, cols_s, ws, x.shape, (1, 1), padding)]
    assert fast[5] is None and standard[5] is None
    assert all(a is None or a.dtype == dtype for a in fast)
    tolerance = 2e-5 if dtype == np.float32 else kernel.f64_tolerance
    for a, expected in zip(fast, standard, strict=True):
        if a is not None:
            scale = max(1.0, float(np.max(np.abs(expected))))
            np.testing.assert_allclose(a, expected, rtol=tolerance, atol=tolerance * scale)


@KERNELS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooled_convolution_runs_whole_then_pools(everywhere, rng, dtype, kernel):
    import array_api_strict

    x, w, b = _arrays(rng, (2, 8, 6, 3), 4, dtype, kernel)
    padding = _padding((1, 1, 1, 1), kernel)
    out, cache = conv2d_relu_max_pool2d_forward(x, w, b, (1, 1), padding, (2, 2))
    assert cache[0] == "layers" and isinstance(cache[1][0], kernel.module.TransformedInput)
    g = rng.standard_normal(out.shape).astype(dtype)
    grads = conv2d_relu_max_pool2d_backward(g, cache, w, x.shape, (1, 1), padding, (2, 2))
    xs, ws, bs, gs = (array_api_strict.asarray(a) for a in (x, w, b, g))
    out_s, cache_s = conv2d_relu_max_pool2d_forward(xs, ws, bs, (1, 1), padding, (2, 2))
    grads_s = conv2d_relu_max_pool2d_backward(gs, cache_s, ws, x.shape, (1, 1), padding, (2, 2))
    tolerance = 2e-5 if dtype == np.float32 else kernel.f64_tolerance
    for a, expected in zip((out, *grads), (out_s, *grads_s), strict=True):
        expected = to_numpy(expected)
        scale = max(1.0, float(np.max(np.abs(expected))))  # float32: error grows with the sums
        np.testing.assert_allclose(a, expected, rtol=tolerance, atol=tolerance * scale)


@KERNELS
def test_inference_keeps_no_transformed_input(everywhere, rng, kernel):
    x, w, b = _arrays(rng, (2, 6, 6, 3), 4, kernel=kernel)
    padding = _padding((1, 1, 1, 1), kernel)
    out_training, saved = conv2d_forward(x, w, b, (1, 1), padding)
    out, nothing = conv2d_forward(x, w, b, (1, 1), padding, training=False)
    tiles = -(-6 // kernel.m)  # per side, for 6x6 outputs
    assert nothing is None and saved.v.shape == (kernel.tile, kernel.tile, 2, tiles, tiles, 3)
    np.testing.assert_array_equal(out, out_training)


def test_the_rule_takes_the_sizes_where_winograd_was_measured_faster(monkeypatch):
    def takes(
        shape, filters=64, kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), dtype=np.float32
    ):
        x = np.zeros(shape, dtype)
        w = np.zeros((filters, shape[3], *kernel), np.float32)
        return _winograd.applies(x, w, np.zeros(filters, np.float32), stride, padding)

    assert takes((8, 32, 32, 32))  # the colour VGG's 32x32 convolutions
    assert takes((8, 16, 16, 32))
    assert takes((8, 14, 14, 64))
    assert not takes((8, 14, 14, 32))  # too little work to pay for the transforms
    assert not takes((8, 28, 28, 16))  # too few channels
    assert not takes((8, 7, 7, 256))  # too few tiles
    assert not takes((8, 32, 32, 32), stride=(2, 2))
    assert not takes((8, 32, 32, 32), kernel=(5, 5))
    assert not takes((8, 32, 32, 32), dtype=np.float64)  # mixed dtypes take the standard code
    monkeypatch.setenv(_winograd.WINOGRAD_ENV, "0")
    assert not takes((8, 32, 32, 32))


def test_4x4_tiles_take_the_3x3_convolutions_they_cover_with_little_to_spare(monkeypatch):
    def takes(shape, filters=64, padding=(1, 1, 1, 1), module=_winograd_4x4):
        x = np.zeros(shape, np.float32)
        w = np.zeros((filters, shape[3], 3, 3), np.float32)
        return module.applies(x, w, np.zeros(filters, np.float32), (1, 1), padding)

    for side in (12, 15, 16, 28, 32):
        assert takes((8, side, side, 64)) and takes((8, side, side, 64), module=_winograd)
    for side in (13, 14, 18):  # 16x16 for 13x13 or 14x14, 20x20 for 18x18: too much spare
        assert not takes((8, side, side, 64)) and takes((8, side, side, 64), module=_winograd)
    assert not takes((8, 16, 16, 16))  # too few channels for either
    assert not takes((8, 16, 16, 64), padding=(0, 0, 0, 0))  # 14x14 outputs
    assert not takes((8, 12, 13, 64)) and takes((8, 12, 20, 64))  # 12x16 for 12x13: 23 %
    geo = _winograd_4x4._geometry((8, 16, 16, 64), 64, (1, 1, 1, 1))
    assert (geo.tile, geo.TH, geo.TW) == (6, 4, 4)  # blocks sized by 36 values per tile
    assert geo.block_images(4) == _winograd_4x4.BLOCK_BYTES // (36 * 16 * 64 * 4)
    monkeypatch.setenv(_winograd.WINOGRAD_ENV, "0")
    assert not takes((8, 16, 16, 64))


def test_the_5x5_rule_takes_the_sizes_where_it_was_measured_faster(monkeypatch):
    def takes(shape, filters=128, kernel=(5, 5), stride=(1, 1), padding=(2, 2, 2, 2)):
        x = np.zeros(shape, np.float32)
        w = np.zeros((filters, shape[3], *kernel), np.float32)
        return _winograd_5x5.applies(x, w, np.zeros(filters, np.float32), stride, padding)

    assert takes((8, 14, 14, 64))  # the wide 5x5 network's second convolution
    assert takes((8, 28, 28, 16)) and takes((8, 12, 12, 16))
    assert not takes((8, 28, 28, 6))  # LeNet's: too few channels
    assert not takes((8, 7, 7, 128))  # too few tiles (0.6-0.8x measured)
    assert not takes((8, 28, 28, 15))  # the boundaries: 16 channels, 12 output rows and columns
    assert not takes((8, 11, 14, 64), padding=(2, 2, 2, 2))
    assert not takes((8, 16, 15, 64), padding=(0, 0, 0, 0))  # 12 x 11 outputs
    assert takes((8, 16, 16, 64), padding=(0, 0, 0, 0))
    x, w = np.zeros((8, 14, 14, 64), np.float32), np.zeros((128, 64, 5, 5), np.float64)
    assert not _winograd_5x5.applies(x, w, np.zeros(128), (1, 1), (2, 2, 2, 2))  # mixed dtypes
    assert not takes((8, 14, 14, 64), stride=(2, 2))
    assert not takes((8, 14, 14, 64), kernel=(3, 3))
    monkeypatch.setenv(_winograd.WINOGRAD_ENV, "0")
    assert not takes((8, 14, 14, 64))


def test_a_model_trains_the_same_with_and_without_winograd(monkeypatch):
    """Every layer that convolves (plain, with ReLU, pooled, with BatchNorm folded at
    inference) gives the same loss and gradients on both paths, in float64."""
    from gpucnn import Sequential

    layers = [
        {"type": "Conv2D", "filters": 32, "kernel_size": 3, "padding": "same"},
        {"type": "ReLU"},
        {"type": "Conv2D", "filters": 32, "kernel_size": 3, "padding": "same"},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 64, "kernel_size": 5, "padding": "same"},
        {"type": "Conv2D", "filters": 64, "kernel_size": 3, "padding": "same"},
        {"type": "BatchNorm2D"},
        {"type": "ReLU"},
        {"type": "Conv2D", "filters": 16, "kernel_size": 3, "padding": "same"},
        {"type": "GlobalAvgPool2D"},
        {"type": "Dense", "units": 10},
    ]
    config = {"input_shape": [3, 28, 28], "layers": layers}
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 3, 28, 28)), rng.integers(0, 10, 4)
    calls = []
    for module in MODULES:

        def counted(*args, _forward=module.forward, _module=module, **kwargs):
            calls.append(_module)
            return _forward(*args, **kwargs)

        monkeypatch.setattr(module, "forward", counted)
    results = {}
    for switch in ("0", "1"):
        monkeypatch.setenv(_winograd.WINOGRAD_ENV, switch)
        calls.clear()
        model = Sequential.from_config(config, backend="numpy", seed=0, dtype="float64")
        loss, _ = model.loss_and_backward(x, y)
        grads = [to_numpy(p.grad) for p in model.parameters()]
        results[switch] = (float(loss), grads, to_numpy(model.predict_proba(x)))
        # each in training and at inference: the first 3x3 convolution has 3 channels (im2col),
        # the second 28x28 outputs (4x4 tiles), the last two 14x14 (2x2 tiles); the 5x5 one
        assert calls.count(_winograd_4x4) == (2 if switch == "1" else 0)
        assert calls.count(_winograd) == (4 if switch == "1" else 0)
        assert calls.count(_winograd_5x5) == (2 if switch == "1" else 0)
    (loss0, grads0, proba0), (loss1, grads1, proba1) = results["0"], results["1"]
    assert loss1 == pytest.approx(loss0, rel=1e-12)
    for a, b in zip(grads1, grads0, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(proba1, proba0, rtol=1e-10, atol=1e-14)


@KERNELS
@pytest.mark.parametrize("shape,filters,padding", [g for g in GEOMETRIES if g[0][1] > 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_pools_each_tile_as_it_is_made(
    everywhere, rng, shape, filters, padding, dtype, kernel
):
    """At inference a 2x2 pooled convolution pools each output tile in the Winograd block (odd
    outputs drop their last row or column, as the pooling does)."""
    import array_api_strict

    x, w, b = _arrays(rng, shape, filters, dtype, kernel)
    padding = _padding(padding, kernel)
    out, cache = conv2d_relu_max_pool2d_forward(x, w, b, (1, 1), padding, (2, 2), training=False)
    assert cache is None
    xs, ws, bs = (array_api_strict.asarray(a) for a in (x, w, b))
    out_s, _ = conv2d_relu_max_pool2d_forward(xs, ws, bs, (1, 1), padding, (2, 2), training=False)
    tolerance = 2e-5 if dtype == np.float32 else kernel.f64_tolerance
    scale = max(1.0, float(np.max(np.abs(to_numpy(out_s)))))  # float32: error grows with sums
    np.testing.assert_allclose(out, to_numpy(out_s), rtol=tolerance, atol=tolerance * scale)
    assert out.dtype == dtype


@KERNELS
def test_pooling_inside_the_block_is_for_inference_only(rng, kernel):
    x, w, b = _arrays(rng, (1, 4, 4, 1), 1, kernel=kernel)
    with pytest.raises(ValueError, match="inference only"):
        kernel.module.forward(x, w, b, _padding((1, 1, 1, 1), kernel), pool=True)


@KERNELS
def test_an_empty_batch_gives_empty_results(everywhere, kernel):
    x = np.zeros((0, 6, 6, 3))
    w, b = np.ones((4, 3, kernel, kernel)), np.zeros(4)
    padding = _padding((1, 1, 1, 1), kernel)
    out, saved = conv2d_forward(x, w, b, (1, 1), padding)
    assert isinstance(saved, kernel.module.TransformedInput)
    grad_x, grad_w, grad_b = conv2d_backward(out, saved, w, x.shape, (1, 1), padding)
    assert out.shape == (0, 6, 6, 4) and grad_x.shape == x.shape
    np.testing.assert_array_equal(grad_w, 0.0)
    np.testing.assert_array_equal(grad_b, 0.0)
    pooled, _ = conv2d_relu_max_pool2d_forward(x, w, b, (1, 1), padding, (2, 2), training=False)
    assert pooled.shape == (0, 3, 3, 4)


@KERNELS
def test_a_batch_too_large_for_memory_counts_the_working_memory(everywhere, monkeypatch, kernel):
    """The memory check before a convolution counts the blocks' working buffers, not only the
    output: a batch they would not fit in is refused before anything is allocated."""
    from gpucnn import resources

    seen = []
    monkeypatch.setattr(
        resources, "check_allocation", lambda nbytes, what, **k: seen.append(nbytes)
    )
    x, w = np.zeros((1, 64, 64, 8), np.float32), np.zeros((8, 8, kernel, kernel), np.float32)
    padding = _padding((1, 1, 1, 1), kernel)
    conv2d_forward(x, w, np.zeros(8, np.float32), (1, 1), padding, training=False)
    assert seen and seen[-1] > 4 * x.size * 4  # output plus the blocks' buffers


@KERNELS
def test_the_counted_working_memory_bounds_what_the_blocks_make(everywhere, monkeypatch, kernel):
    """``_Block.nbytes`` (what the memory check counts per thread) is at least what a block's
    buffers take after a whole training step and an inference pass."""
    module, blocks = kernel.module, []

    class Recorded(module._Block):
        def __init__(self, *args):
            super().__init__(*args)
            blocks.append(self)

    monkeypatch.setattr(module, "ALGORITHM", module.ALGORITHM._replace(block=Recorded))
    rng = np.random.default_rng(1)
    x, w, b = _arrays(rng, (3, 9, 7, 4), 5, np.float32, kernel)
    padding = _padding((1, 1, 1, 1), kernel)
    out, saved = conv2d_relu_forward(x, w, b, (1, 1), padding)
    conv2d_relu_backward(out, out, saved, w, x.shape, (1, 1), padding)
    conv2d_relu_max_pool2d_forward(x, w, b, (1, 1), padding, (2, 2), training=False)
    worked = [block for block in blocks if block.buffers]  # others only sized the check
    assert len(worked) == 3
    for block in worked:
        assert sum(buffer.nbytes for buffer in block.buffers.values()) <= block.nbytes()


# (x shape with N set per case, filters, padding of the 3x3 case, of the 5x5 case): odd outputs
# both ways, asymmetric padding, and an unpadded ("valid") 5x5 convolution
SHORT_BLOCK_GEOMETRIES = [
    ((0, 7, 9, 3), 4, (1, 1, 1, 1), (2, 2, 2, 2)),
    ((0, 11, 12, 2), 3, (2, 1, 0, 3), (3, 2, 1, 4)),
    ((0, 9, 10, 3), 4, (0, 0, 0, 0), (0, 0, 0, 0)),
]


@KERNELS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,threads,per_block", [(5, 1, 3), (7, 2, 2), (8, 2, 3)])
@pytest.mark.parametrize("shape,filters,padding3,padding5", SHORT_BLOCK_GEOMETRIES)
def test_blocks_with_a_shorter_last_block_over_threads(
    everywhere, monkeypatch, kernel, dtype, n, threads, per_block, shape, filters, padding3,
    padding5,
):  # fmt: skip
    """Several threads, each with several blocks and a last one of fewer images: training,
    the ReLU's backward and pooled inference equal the standard code."""
    module = kernel.module
    monkeypatch.setattr(_cpu_threads, "MIN_PART_BYTES", 0)
    monkeypatch.setenv(_cpu_threads.CPU_THREADS_ENV, str(threads))
    monkeypatch.setattr(_winograd.Geometry, "block_images", lambda self, itemsize: per_block)
    rng = np.random.default_rng(0)
    x, w, b = _arrays(rng, (n, *shape[1:]), filters, dtype, kernel)
    padding = padding3 if kernel == 3 else padding5
    with _cpu_threads.parallel():
        out, saved = conv2d_forward(x, w, b, (1, 1), padding)
        relu_out, relu_saved = conv2d_relu_forward(x, w, b, (1, 1), padding)
        pooled, _ = conv2d_relu_max_pool2d_forward(x, w, b, (1, 1), padding, (2, 2), training=False)
        g = rng.standard_normal(out.shape).astype(dtype)
        grads = conv2d_backward(g, saved, w, x.shape, (1, 1), padding)
        relu_grads = conv2d_relu_backward(g, relu_out, relu_saved, w, x.shape, (1, 1), padding)
    assert isinstance(saved, module.TransformedInput)
    monkeypatch.setenv(_winograd.WINOGRAD_ENV, "0")
    out0, cols = conv2d_forward(x, w, b, (1, 1), padding)
    grads0 = conv2d_backward(g, cols, w, x.shape, (1, 1), padding)
    relu_grads0 = conv2d_backward(g * (out0 > 0), cols, w, x.shape, (1, 1), padding)
    PH, PW = out0.shape[1] // 2, out0.shape[2] // 2
    windows = out0[:, : 2 * PH, : 2 * PW].reshape(n, PH, 2, PW, 2, -1)
    pooled0 = np.maximum(windows.max(axis=(2, 4)), 0.0)
    tolerance = 2e-5 if dtype == np.float32 else kernel.f64_tolerance
    fast = (out, relu_out, pooled, *grads, *relu_grads)
    standard = (out0, np.maximum(out0, 0.0), pooled0, *grads0, *relu_grads0)
    for a, expected in zip(fast, standard, strict=True):
        scale = max(1.0, float(np.max(np.abs(expected))))
        np.testing.assert_allclose(a, expected, rtol=tolerance, atol=tolerance * scale)


def test_the_6x6_tile_transforms_come_from_the_toom_cook_identity():
    """Derived matrices satisfy the minimal algorithm's identity (A^T G B^T gives each
    output's taps); for F(2x2, 3x3) they are the 3x3 module's up to the sign of a tile
    position (rows d0 - d2, d1 + d2, d2 - d1, d1 - d3); bad points are refused."""
    five = (0.0, 1.0, -1.0, 2.0, -2.0)
    for m, r, points in ((2, 3, (0.0, 1.0, -1.0)), (2, 5, five), (4, 3, five)):
        at, g, bt = _winograd_5x5.toom_cook(m, r, points)
        taps = np.einsum("ij,jk,jl->ikl", at, g, bt)  # output i, filter tap k, input l
        expected = np.zeros_like(taps)
        for i in range(m):
            expected[i, range(r), [i + k for k in range(r)]] = 1.0
        np.testing.assert_allclose(taps, expected, atol=1e-14)
        assert np.array_equal(bt, np.round(bt))  # integer input transforms: exact adds
    at, g, bt = _winograd_5x5.toom_cook(2, 3, (0.0, 1.0, -1.0))
    signs = np.array([-1.0, 1.0, 1.0, -1.0])[:, None]
    np.testing.assert_array_equal(
        signs * bt, [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    )
    np.testing.assert_array_equal(np.abs(g), np.abs(_winograd._G))
    with pytest.raises(ValueError, match="expected 5 distinct finite points"):
        _winograd_5x5.toom_cook(2, 5, (0.0, 1.0, 1.0, 2.0, -2.0))
