"""NumPy-only fast paths: im2col gathers, max-pool forward and backward, ReLU, and the
convolutions and GEMMs, most of them splitting their images over the CPU threads
(:mod:`._cpu_threads`); strided views and in-place ufuncs throughout.

Each function here accelerates one op of :mod:`gpucnn.functional` on NumPy arrays and answers
"not applicable" (False or None) otherwise; the op then runs its standard array-API code, which
stays the reference. ``tests/test_fast_paths.py`` checks every path against that code.
Shape symbols are those of :mod:`gpucnn.functional.im2col`; images are channels-last.
"""

from __future__ import annotations

import numpy as np

from ..backend import Array
from ..resources import check_arrays
from ._cpu_threads import count_parts, over_images


def window_gather_pays(channels: int, kernel: tuple[int, int]) -> bool:
    """Whether one copy of every window (``sliding_window_view``) is faster than KH*KW slice
    copies: everywhere except one channel under a kernel of at most 9 offsets, where each slice
    copy runs along whole rows. Measured (AMD EPYC, one thread, im2col of 256 images of 32x32,
    slice copies / one gather, ms): C = 1, 3x3 2.1 / 5.7; C = 1, 5x5 17.5 / 8.0; C = 2, 3x3
    18.4 / 5.8; C = 3, 3x3 20.9 / 5.8; C = 3, 5x5 96.5 / 10.7; inside the pooled convolution
    (phase by phase) LeNet's C = 1, 5x5 took 53.5 / 18.8 ms at inference."""
    return channels > 1 or kernel[0] * kernel[1] > 9


def fill_windows_fast(
    x: Array, kernel: tuple[int, int], stride: tuple[int, int], cols: Array
) -> bool:
    """NumPy only: fill ``cols[..., :KH*KW*C]`` (N, OH, OW, ...) with every window of ``x``.

    ``sliding_window_view`` exposes every window without copying and one ``copyto`` gathers
    them: 3-9x faster than KH*KW slice assignments, whose inner runs are only C elements long
    (see :func:`window_gather_pays` for where it is not). Returns False (nothing written)
    when it does not apply.
    """
    if not isinstance(x, np.ndarray) or not window_gather_pays(x.shape[3], kernel):
        return False
    from numpy.lib.stride_tricks import sliding_window_view

    (KH, KW), (SH, SW) = kernel, stride
    N, OH, OW = cols.shape[:3]
    C = x.shape[3]
    windows = sliding_window_view(x, (KH, KW), axis=(1, 2))[:, ::SH, ::SW]  # (N, OH, OW, C, KH, KW)
    target = cols[..., : KH * KW * C].reshape(N, OH, OW, KH, KW, C)  # a view: splits one axis
    np.copyto(target, windows.transpose(0, 1, 2, 4, 5, 3))
    return True


def matmul_fast(a: Array, b: Array) -> Array | None:
    """NumPy only: ``a @ b`` for 2-D operands, its rows split over the CPU threads inside
    :func:`._cpu_threads.parallel` (where the BLAS runs one thread per call). None otherwise."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == b.ndim == 2):
        return None
    (M, K), (_, N) = a.shape, b.shape
    check_arrays(f"a product of {M} x {K} by {K} x {N}", ((M, N), np.result_type(a, b)))
    out = np.empty((M, N), dtype=np.result_type(a, b))

    def rows(start, stop):
        np.matmul(a[start:stop], b, out=out[start:stop])

    # a row's cost: its operands, or its K*N multiply-adds where those take longer
    over_images(M, max(K + N, K * N // 16) * out.itemsize, rows)
    return out


def _same_float_dtype(*arrays) -> bool:
    """NumPy arrays of one floating dtype: the fast paths compute in it (mixed dtypes take the
    standard code, which promotes as the array API says)."""
    return all(isinstance(a, np.ndarray) for a in arrays) and all(
        a.dtype == arrays[0].dtype and a.dtype.kind == "f" for a in arrays
    )


def _weights_with_bias(weight: Array, bias: Array) -> Array:
    """(F, C, KH, KW) and (F,) -> (KH*KW*C + 1, F): the GEMM's right operand, the bias as its
    last row (the ones column of the im2col rows adds it)."""
    F, C, KH, KW = weight.shape
    K = KH * KW * C
    w_and_b = np.empty((K + 1, F), dtype=weight.dtype)
    w_and_b[:K] = weight.transpose(2, 3, 1, 0).reshape(K, F)
    w_and_b[K] = bias
    return w_and_b


def _images_per_block(budget_bytes: int, per_image_bytes: int) -> int:
    """Images a block of ``per_image_bytes`` each holds within ``budget_bytes`` (at least
    one)."""
    return max(1, budget_bytes // max(1, per_image_bytes))


def _input_grad_buffers(weight: Array, x_shape, padding):
    """The padded input gradient (N, PT+H+PB, PL+W+PR, C), to be filled, and the weight as
    one (F, C) matrix per kernel offset (KH*KW, F, C)."""
    F, C, KH, KW = weight.shape
    N, H, W, _ = x_shape
    PT, PB, PL, PR = padding
    shape = (N, PT + H + PB, PL + W + PR, C)
    check_arrays(f"the input gradient of a convolution of {N} images", (shape, weight.dtype))
    grad_padded = np.empty(shape, dtype=weight.dtype)
    return grad_padded, weight.transpose(2, 3, 0, 1).reshape(KH * KW, F, C)


def input_grad_gather_pays(weight_shape, stride, padding) -> bool:
    """Whether the input gradient of a stride-1 convolution is faster as the convolution of
    the zero-padded output gradient with the flipped filters (:class:`_FlippedConv`: one
    gather of every window and one GEMM) than as KH*KW (F, C) GEMMs whose columns col2im adds
    back with KH*KW slice-adds. The gather copies KH*KW*F values per input pixel, the GEMM
    route writes KH*KW*C and adds each back, so it pays where F <= C, and for kernels over 3x3
    (25 slice-adds) also at F = 2C (not beyond: at F = 8C, 5x5 from 16 channels, it took twice
    as long, and its rows take 8x the memory); a GEMM only C = 16 columns wide was still
    faster, one narrower not. Measured (AMD EPYC, one thread, 64 images, input gradient,
    col2im / gather, ms): 3x3 14x14x32 -> 32 7.7 / 3.8, 7x7x64 -> 64 4.1 / 3.6, 4x4x128 ->
    128 4.6 / 4.1, 28x28x16 -> 16 8.2 / 6.1, 14x14x64 -> 32 12.4 / 6.7; 5x5 14x14x64 -> 128
    99.6 / 67.4, 14x14x16 -> 32 8.8 / 6.5; losing: 3x3 14x14x16 -> 32 2.8 / 3.6, 13x13x32 -> 64 unpadded
    5.2 / 6.5, 5x5 14x14x6 -> 16 1.8 / 5.1, 1x1 0.8 / 1.0. `resnet`'s training step (2
    threads, medians of 10-16 alternating pairs): 1.04x at batch 128, 1.02x at 32. In the
    pool-aware convolution's backward pass (whose parts are not cut into cache-sized blocks)
    it measured 0.98-1.02x, so that keeps col2im. Padding beyond KH - 1 (or KW - 1) would
    crop the output gradient instead of padding it and is left to col2im."""
    F, C, KH, KW = weight_shape
    PT, PB, PL, PR = padding
    return (
        tuple(stride) == (1, 1)
        and KH * KW > 1
        and C >= 16
        and (F <= C or (KH * KW > 9 and F <= 2 * C))  # the gather's rows grow with F
        and 0 <= min(PT, PB) <= max(PT, PB) < KH
        and 0 <= min(PL, PR) <= max(PL, PR) < KW
    )


def _flipped_filters(weight: Array) -> Array:
    """(F, C, KH, KW) -> (KH*KW*F, C): row (i, j, f) holds ``weight[f, :, KH-1-i, KW-1-j]``."""
    F, C, KH, KW = weight.shape
    return np.ascontiguousarray(
        weight[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(KH * KW * F, C)
    )


class _FlippedConv:
    """A thread's input gradient of a stride-1 convolution, block by block, by gather + GEMM.

    With ``g`` (n, OH, OW, F) the output gradient, the input gradient (n, H, W, C) is
    ``grad_x[y, x, c] = sum(gpad[y + i, x + j, f] * weight[f, c, KH-1-i, KW-1-j])``, ``gpad``
    being ``g`` with KH-1-PT zero rows above, KH-1-PB below (KW-1-PL and KW-1-PR columns):
    every window of ``gpad`` gathered into rows of KH*KW*F (as im2col gathers), one GEMM with
    the flipped filters (KH*KW*F, C) of :func:`_flipped_filters`. The zero border of ``gpad``
    is written once per thread; each block writes its interior only.
    """

    def __init__(self, w_flipped: Array, kernel, x_shape, padding, images: int):
        (KH, KW), (_, H, W, _) = kernel, x_shape
        F = w_flipped.shape[0] // (KH * KW)
        self.w_flipped, self.kernel = w_flipped, (KH, KW)
        self.top, self.left = KH - 1 - padding[0], KW - 1 - padding[2]
        self.gpad = np.zeros((images, H + KH - 1, W + KW - 1, F), dtype=w_flipped.dtype)
        self.rows = np.empty((images, H, W, KH * KW * F), dtype=w_flipped.dtype)

    def __call__(self, g: Array, out: Array) -> None:
        """``out`` (n, H, W, C) = the input gradient of the block whose output gradient is
        ``g`` (n, OH, OW, F)."""
        from .im2col import fill_windows

        n, OH, OW, _ = g.shape
        np.copyto(self.gpad[:n, self.top : self.top + OH, self.left : self.left + OW], g)
        rows = self.rows[:n]
        fill_windows(self.gpad[:n], self.kernel, (1, 1), rows)
        C = out.shape[-1]
        np.matmul(rows.reshape(-1, rows.shape[-1]), self.w_flipped, out=out.reshape(-1, C))


def _conv_grads(grad_wb: Array, weight_shape, grad_padded, padding):
    """``(grad_x or None, grad_weight, grad_bias)`` from the (K + 1, F) weight-and-bias
    gradient and the padded input gradient (None when it was not asked for)."""
    F, C, KH, KW = weight_shape
    K = KH * KW * C
    grad_weight = grad_wb[:K].reshape(KH, KW, C, F).transpose(3, 2, 0, 1)
    if grad_padded is None:
        return None, grad_weight, grad_wb[K]
    from .im2col import unpad2d

    return unpad2d(grad_padded, padding), grad_weight, grad_wb[K]


# Inference gathers and multiplies a block of images at a time: their im2col rows, at most
# this many bytes, are written, multiplied and dropped while in the core's cache instead of
# going out to memory and back (9x the input for a 3x3 kernel; the memory bus is what the
# threads share). Measured (AMD EPYC, 2 threads, batch 128, ms, whole part / 2 MiB blocks):
# 14x14x32 -> 32 9.6 / 7.4; 7x7x64 -> 64 7.4 / 5.9; blocks under ~0.5 MiB lose again (GEMMs of a
# few hundred rows). Training keeps every row for the backward pass, and gathering them again
# there block by block measured 6-25 % slower than reading them back.
IM2COL_BLOCK_BYTES = 2 << 20
# Training writes every row to memory for the backward pass, but a part whose rows outgrow
# the cache is still filled and multiplied block by block: the GEMM then reads each block
# from cache right after it is written, instead of the whole part back from memory; backward
# forms the input gradient's columns block by block for the same reason. Parts up to this
# many bytes of rows stay whole (blocks would only add GEMM calls). Measured (AMD EPYC, 2
# threads, one layer, whole / blocked, ms): batch 512, 14x14x16 -> 32 forward 41.6 / 34.2,
# backward 65.1 / 50.1; 28x28x1 -> 16 forward 21.3 / 13.8; 16x16x32 -> 64 backward 221 / 162;
# stride 2 7x7x64 -> 128 backward 55.6 / 38.6; batch 128, 16x16x32 -> 64 backward 48.2 / 40.9;
# batch 32 even (0.95-1.05x). Training steps (in one process, medians of 6 alternating pairs,
# batch 32 / 128 / 512): `small_bn` 1.02x / 1.09x / 1.12x, `resnet` 1.14x at 512, `strided`
# even; blocking every part instead lost 13 % on `small_bn` and 5 % on `strided` at 32.
IM2COL_WHOLE_PART_BYTES = 8 << 20


def _training_block(
    images: int, per_image: int, whole_bytes: int | None = None, block_bytes: int | None = None
) -> int:
    """Images per block of a training part of ``images`` images, each with ``per_image``
    bytes kept (im2col rows): the whole part if it fits ``whole_bytes``, else blocks of
    ``block_bytes`` (by default :data:`IM2COL_WHOLE_PART_BYTES` and
    :data:`IM2COL_BLOCK_BYTES`)."""
    whole = IM2COL_WHOLE_PART_BYTES if whole_bytes is None else whole_bytes
    if images * per_image <= whole:
        return max(1, images)
    return _images_per_block(IM2COL_BLOCK_BYTES if block_bytes is None else block_bytes, per_image)


def conv2d_forward_fast(x, weight, bias, stride, padding, relu=False, training=True):
    """NumPy, inside :func:`._cpu_threads.parallel`: :func:`gpucnn.functional.conv2d_forward`
    with the images split over the CPU threads, each filling its rows of the im2col matrix
    and running its part of the GEMM; with ``relu`` each part then takes ``max(out, 0)`` in
    place while its GEMM output is still in cache (:func:`gpucnn.functional.conv2d_relu_forward`).
    Each thread takes its images in blocks whose rows stay in cache
    (:data:`IM2COL_BLOCK_BYTES`; in training only parts larger than
    :data:`IM2COL_WHOLE_PART_BYTES`), and without ``training`` keeps none. Returns
    ``(out, cols)`` as that op (``cols`` None without ``training``), or None where the images
    would not be split (not NumPy, one thread, or too little work).
    """
    if not _same_float_dtype(x, weight, bias):
        return None
    from .im2col import fill_windows, output_size, pad2d

    F, C, KH, KW = weight.shape
    (SH, SW), (PT, PB, PL, PR) = stride, padding
    N, H, W, _ = x.shape
    OH, OW = output_size(H, KH, SH, PT, PB), output_size(W, KW, SW, PL, PR)
    K = KH * KW * C
    L = K + 1
    per_image = OH * OW * (L + F) * x.itemsize
    parts = count_parts(N, per_image) if OH > 0 and OW > 0 else 0
    if parts <= 1:
        return None
    rows_per_image = OH * OW * L * x.itemsize
    block = _images_per_block(IM2COL_BLOCK_BYTES, rows_per_image)
    # training keeps every image's rows; inference one block's per thread
    rows_kept = N if training else min(N, block * parts)
    check_arrays(
        f"a convolution of {N} images (output and im2col rows)",
        ((N, OH, OW, F), x.dtype),
        ((rows_kept, OH, OW, L), x.dtype),
    )
    w_and_b = _weights_with_bias(weight, bias)
    cols = np.empty((N, OH, OW, L), dtype=x.dtype) if training else None
    out = np.empty((N, OH, OW, F), dtype=x.dtype)

    def images(start, stop):
        if training:  # each block fills its own rows of ``cols``
            step, scratch = _training_block(stop - start, rows_per_image), None
        else:  # one block's rows, reused
            step = block
            scratch = np.empty((min(block, stop - start), OH, OW, L), x.dtype)
            scratch[..., K] = 1.0
        for s in range(start, stop, step):
            e = min(s + step, stop)
            if scratch is None:
                part = cols[s:e]
                part[..., K] = 1.0
            else:
                part = scratch[: e - s]
            fill_windows(pad2d(x[s:e], padding), (KH, KW), (SH, SW), part)
            np.matmul(part.reshape(-1, L), w_and_b, out=out[s:e].reshape(-1, F))
            if relu:
                np.maximum(out[s:e], 0.0, out=out[s:e])

    over_images(N, per_image, images)
    return out, cols


def conv2d_backward_fast(
    grad_out, cols, weight, x_shape, stride, padding, need_input_grad, relu_out=None
):
    """NumPy, inside :func:`._cpu_threads.parallel`: :func:`gpucnn.functional.conv2d_backward`
    with the images split over the CPU threads; each thread sums its part of the weight
    gradient, and the parts' sums are added in a fixed order; the input gradient's columns
    are formed and added back block by block where a part's rows outgrow the cache
    (:func:`_training_block`). With ``relu_out`` (the output of
    :func:`gpucnn.functional.conv2d_relu_forward`) each part first passes its gradient where
    that output is positive, the ReLU's backward. None where the images would not be split.
    """
    if not _same_float_dtype(grad_out, cols, weight):
        return None
    if relu_out is not None and not _same_float_dtype(grad_out, relu_out):
        return None
    F, C, KH, KW = weight.shape
    N, OH, OW, L = cols.shape
    per_image = OH * OW * (L + F) * cols.itemsize
    if count_parts(N, per_image) <= 1:
        return None
    sums = {}
    gather = need_input_grad and input_grad_gather_pays(weight.shape, stride, padding)
    grad_padding = (0, 0, 0, 0) if gather else padding  # the gather's result is unpadded
    grad_padded, w_per_offset = (
        _input_grad_buffers(weight, x_shape, grad_padding) if need_input_grad else (None, None)
    )
    w_flipped = _flipped_filters(weight) if gather else None
    # a block's bytes per image: its im2col rows, or the gather's rows where those are larger
    block_bytes = OH * OW * L * cols.itemsize
    if gather:
        block_bytes = max(block_bytes, x_shape[1] * x_shape[2] * KH * KW * F * cols.itemsize)

    def images(start, stop):
        g = grad_out[start:stop].reshape(-1, F)
        if relu_out is not None:
            g = np.multiply(g, relu_out[start:stop].reshape(-1, F) > 0)
        # the (F, L) product, transposed at the end: measured 8-20 % faster than (L, F)
        # on OpenBLAS (its transposed operand is then the narrow one)
        sums[start] = np.matmul(g.T, cols[start:stop].reshape(-1, L))
        if not need_input_grad:
            return
        step = _training_block(stop - start, block_bytes)
        flipped = (
            _FlippedConv(w_flipped, (KH, KW), x_shape, padding, min(step, stop - start))
            if gather else None
        )  # fmt: skip
        for s in range(start, stop, step):
            e = min(s + step, stop)
            rows = g[(s - start) * OH * OW : (e - start) * OH * OW]
            if flipped is not None:
                flipped(rows.reshape(e - s, OH, OW, F), grad_padded[s:e])
                continue
            # offset-major (KH*KW, n, OH, OW, C): every slice-add reads contiguous memory
            grad_cols = np.matmul(rows, w_per_offset).reshape(KH, KW, e - s, OH, OW, C)
            _col2im_into(grad_padded[s:e], grad_cols, stride)

    over_images(N, per_image, images)
    return _conv_grads(_sum_in_order(sums).T, weight.shape, grad_padded, grad_padding)


def _col2im_into(target, grad_cols, stride) -> None:
    """:func:`gpucnn.functional.col2im` into given memory ``target`` (n, H, W, C)."""
    from .im2col import add_windows

    target[...] = 0
    add_windows(target, grad_cols, stride)


def _sum_in_order(partial_sums: dict) -> Array:
    """The sum of the parts' arrays, added in order of their first image (reproducible)."""
    starts = sorted(partial_sums)
    total = partial_sums[starts[0]]
    for start in starts[1:]:
        total += partial_sums[start]
    return total


def relu_forward_fast(x: Array) -> Array | None:
    """NumPy, in the thread mode: ``max(x, 0)`` with the images split over the CPU threads.
    None where they would not be split (or ``x`` is not floating point)."""
    if not _same_float_dtype(x) or x.ndim == 0 or count_parts(len(x), _per_image(x, 2)) <= 1:
        return None
    check_arrays(f"a ReLU of {len(x)} images", (x.shape, x.dtype))
    out = np.empty(x.shape, dtype=x.dtype)

    def images(start, stop):
        np.maximum(x[start:stop], 0.0, out=out[start:stop])

    over_images(len(x), _per_image(x, 2), images)
    return out


def _per_image(a: Array, passes: int = 1) -> int:
    """Bytes an op touches per image of ``a`` (N, ...), reading or writing it ``passes`` times."""
    return passes * a.nbytes // max(1, len(a))


def relu_backward_fast(grad_out: Array, out: Array) -> Array | None:
    """NumPy, in the thread mode: ``grad_out`` where ``out > 0``, else 0, split over the CPU
    threads. None where the images would not be split."""
    if not _same_float_dtype(grad_out, out) or out.ndim == 0:
        return None
    if grad_out.shape != out.shape or count_parts(len(out), _per_image(out, 3)) <= 1:
        return None
    check_arrays(f"the ReLU gradient of {len(out)} images", (out.shape, grad_out.dtype))
    grad_x = np.empty(out.shape, dtype=grad_out.dtype)

    def images(start, stop):
        np.multiply(grad_out[start:stop], out[start:stop] > 0, out=grad_x[start:stop])

    over_images(len(out), _per_image(out, 3), images)
    return grad_x


def _pool_windows(x, pool, stride) -> list:
    """The strided index of every window offset of ``x`` (n, H, W, C), in row-major order."""
    from .pooling import _window_indices

    return list(_window_indices(x, pool, stride))


# The input bytes of a block of images whose max-pool is taken in one go: the output block is
# updated once per window offset, and stays in cache between them. Measured (AMD EPYC, 2
# threads, 2x2 pooling, in one process, medians of 10, whole part / 1 MiB blocks):
# 128x28x28x32 3.62 / 2.53 ms, 512x28x28x32 13.8 / 9.1 ms, 128x16x16x64 1.58 / 1.02 ms. (The
# backward pass gained nothing from blocks of 1 MiB and lost with 256 KiB.)
POOL_BLOCK_BYTES = 1 << 20


def max_pool_forward_fast(x: Array, pool, stride, relu: bool) -> Array | None:
    """NumPy, in the thread mode: :func:`gpucnn.functional.max_pool2d_forward` with the
    images split over the CPU threads, each taking the maximum over its windows in place.
    None where the images would not be split."""
    if not _same_float_dtype(x) or count_parts(len(x), _per_image(x)) <= 1:
        return None
    from .im2col import output_size

    N, H, W, C = x.shape
    (KH, KW), (SH, SW) = pool, stride
    OH, OW = output_size(H, KH, SH), output_size(W, KW, SW)
    if OH < 1 or OW < 1:
        return None
    check_arrays(f"a max-pool of {N} images", ((N, OH, OW, C), x.dtype))
    out = np.empty((N, OH, OW, C), dtype=x.dtype)
    windows = _pool_windows(x, pool, stride)
    block = _images_per_block(POOL_BLOCK_BYTES, _per_image(x))

    def images(start, stop):
        for s in range(start, stop, block):  # each block's maximum is taken while in cache
            part, source = out[s : min(s + block, stop)], x[s : min(s + block, stop)]
            np.copyto(part, source[windows[0]])
            for index in windows[1:]:
                np.maximum(part, source[index], out=part)
            if relu:
                np.maximum(part, 0.0, out=part)

    over_images(N, _per_image(x), images)
    return out


def max_pool_backward_fast(
    grad_out: Array, x: Array, out: Array, pool: tuple[int, int], stride: tuple[int, int]
) -> Array | None:
    """NumPy only: max-pool backward with in-place ufuncs, no temporaries per window offset.

    Same routing as :func:`gpucnn.functional.pooling.max_pool2d_backward` (the first maximum
    in row-major window order takes the gradient) without its per-offset temporaries; windows
    that tile the input exactly take :func:`_tiled_max_pool_backward`, measured ~15 % faster
    again on the reference network's first pool. The images are split over the CPU threads
    in the thread mode. None if not NumPy.
    """
    if not isinstance(x, np.ndarray):
        return None
    (KH, KW), (SH, SW) = pool, stride
    _, OH, OW, _ = out.shape
    tiles = (SH, SW) == (KH, KW) and x.shape[1:3] == (OH * KH, OW * KW)
    route = _tiled_max_pool_backward if tiles else _strided_max_pool_backward
    check_arrays(
        f"the max-pool gradient of {len(x)} images (and its window flags)",
        (x.shape, grad_out.dtype),
        (out.shape, grad_out.dtype),
        (out.shape, bool),
        (out.shape, bool),
    )
    grad_x = np.empty(x.shape, dtype=grad_out.dtype)

    def images(start, stop):
        part = slice(start, stop)
        route(grad_out[part], x[part], out[part], pool, stride, grad_x[part])

    over_images(len(x), _per_image(x, 2), images)
    return grad_x


def _strided_max_pool_backward(grad_out, x, out, pool, stride, grad_x) -> None:
    """Max-pool backward into ``grad_x`` for any windows (overlapping, or leaving edges)."""
    (KH, KW), (SH, SW) = pool, stride
    overlapping = SH < KH or SW < KW
    grad_x[...] = 0
    hit = np.empty(out.shape, dtype=bool)
    taken = np.zeros(out.shape, dtype=bool)
    routed = np.empty(out.shape, dtype=grad_out.dtype) if overlapping else None
    for index in _pool_windows(x, pool, stride):
        np.equal(x[index], out, out=hit)
        np.greater(hit, taken, out=hit)  # hit and not taken
        np.logical_or(taken, hit, out=taken)
        if overlapping:
            np.multiply(grad_out, hit, out=routed)
            grad_x[index] += routed
        else:
            np.multiply(grad_out, hit, out=grad_x[index])


def _tiled_max_pool_backward(grad_out, x, out, pool, stride, grad_x) -> None:
    """Max-pool backward into ``grad_x`` when windows tile x exactly (stride == window,
    sizes divisible).

    x is viewed as (N, OH, KH, OW, KW, C) without a copy: one broadcast compare marks every
    maximum, in-place boolean ops keep only the first per window, and one broadcast multiply
    writes every element of the gradient (so it needs no zeroing).
    """
    (KH, KW), (N, OH, OW, C) = pool, out.shape
    hits = np.equal(x.reshape(N, OH, KH, OW, KW, C), out[:, :, None, :, None, :])
    taken = hits[:, :, 0, :, 0, :].copy()
    for i in range(KH):
        for j in range(KW):
            if i or j:
                later = hits[:, :, i, :, j, :]
                np.greater(later, taken, out=later)  # a maximum, and none found before
                np.logical_or(taken, later, out=taken)
    np.multiply(grad_out[:, :, None, :, None, :], hits, out=grad_x.reshape(N, OH, KH, OW, KW, C))


# Bytes of im2col rows and convolution-output gradient per block of images in the pooled
# convolution (per thread in training). It bounds the temporaries of large batches. Blocks
# small enough for L2 (1-4 MiB) measured slower on a shared 2-core Xeon: many small GEMMs and
# NumPy calls cost more than the cache saves.
POOLED_CONV_BLOCK_BYTES = 64 << 20
# In training where KH*KW slice copies fill the rows (one channel under a 3x3 kernel, see
# window_gather_pays), each copy writes one value per row: the fill is KH*KW passes over the
# block, and a thread's part of more than POOLED_CONV_SLICE_WHOLE_PART_BYTES goes in blocks of
# POOLED_CONV_SLICE_BLOCK_BYTES that stay in cache. Measured (AMD EPYC, 2 threads, the first
# layer's training step, 1 -> 16 / 32 filters at 28x28, whole / 4 MiB blocks, ms): batch 512
# (a thread's rows and outputs: 21 / 34 MB) `small` 26.9 / 19.7, `reference` 40.0 / 31.7, their
# training steps 1.04x / 1.02x; batch 128 (5 / 8.4 MB) `reference` 8.8 / 8.3 but its step
# 0.92-1.16x in three runs, hence whole parts up to 16 MiB. Inference keeps
# POOLED_CONV_BLOCK_BYTES: its blocks are smaller already, and 4 MiB lost 4-6 % there.
POOLED_CONV_SLICE_WHOLE_PART_BYTES = 16 << 20
POOLED_CONV_SLICE_BLOCK_BYTES = 4 << 20


def _fill_phase_windows(xpad, kernel, stride, pool, cols) -> None:
    """Fill ``cols[..., :K]`` (PKH*PKW, n, PH, PW, L) with the windows of ``xpad`` (n, H, W, C).

    Phase (di, dj) holds the convolution outputs at (PKH*ph + di, PKW*pw + dj): the ones each
    pooling window (ph, pw) compares at its offset (di, dj).
    """
    (KH, KW), (SH, SW), (PKH, PKW) = kernel, stride, pool
    _, n, PH, PW, _ = cols.shape
    C = xpad.shape[3]
    if window_gather_pays(C, (KH, KW)):
        from numpy.lib.stride_tricks import sliding_window_view

        windows = sliding_window_view(xpad, (KH, KW), axis=(1, 2))[:, ::SH, ::SW]
        for di in range(PKH):
            for dj in range(PKW):
                phase = windows[
                    :, di : di + PKH * (PH - 1) + 1 : PKH, dj : dj + PKW * (PW - 1) + 1 : PKW
                ]
                target = cols[di * PKW + dj, ..., : KH * KW * C].reshape(n, PH, PW, KH, KW, C)
                np.copyto(target, phase.transpose(0, 1, 2, 4, 5, 3))
        return
    # one copy per kernel offset (i, j) fills that column group for every phase: the input
    # rows under conv output rows PKH*ph + di, in order, are a strided slice (same for columns)
    target = cols.reshape(PKH, PKW, n, PH, PW, -1)
    for i in range(KH):
        rows = slice(i, i + SH * (PKH * PH - 1) + 1, SH)
        for j in range(KW):
            columns = slice(j, j + SW * (PKW * PW - 1) + 1, SW)
            source = xpad[:, rows, columns, :].reshape(n, PH, PKH, PW, PKW, C)
            first = (i * KW + j) * C
            np.copyto(target[..., first : first + C], source.transpose(2, 4, 0, 1, 3, 5))


def conv_relu_max_pool_forward_fast(x, weight, bias, stride, padding, pool, training=True):
    """NumPy only: ``relu(max_pool(conv2d(x)))`` for pooling windows that do not overlap.

    The convolution is evaluated only where a pooling window looks, one *phase* at a time:
    phase (di, dj) is the output each window (ph, pw) compares at its offset (di, dj), so its
    im2col rows (N, PH, PW, L) are contiguous in a phase-major array (PKH*PKW, N, PH, PW, L),
    and the outputs no window covers (a trailing odd row/column) are never computed. Each
    phase's GEMM output is pooled into the running maximum while it is still in cache; the
    whole convolution output is never stored. The images are split over the CPU threads
    (:mod:`._cpu_threads`); each thread takes its images in blocks of at most
    ``POOLED_CONV_BLOCK_BYTES`` of im2col rows and output (``POOLED_CONV_SLICE_BLOCK_BYTES``
    in training where slice copies fill the rows).

    With ``training`` it keeps, for the backward pass, the im2col rows (with their ones
    column) and one boolean per phase marking the element that takes the gradient: the
    window's first maximum, where that maximum is positive (the ReLU's mask is in the flags
    too); without, each block's rows are scratch and no flags are computed.

    Returns ``(out, cache)`` with ``out`` of shape (N, PH, PW, F) (``cache`` None without
    ``training``), or None if not NumPy.
    """
    if not _same_float_dtype(x, weight, bias):
        return None
    from .im2col import output_size, pad2d

    F, C, KH, KW = weight.shape
    (SH, SW), (PKH, PKW), (PT, PB, PL, PR) = stride, pool, padding
    N, H, W, _ = x.shape
    PH = output_size(H, KH, SH, PT, PB) // PKH
    PW = output_size(W, KW, SW, PL, PR) // PKW
    if PH < 1 or PW < 1:
        return None
    if C == 1 and KH * KW > 9 and not training:
        return _one_channel_pooled_inference(x, weight, bias, stride, padding, pool, PH, PW), None
    D, K = PKH * PKW, KH * KW * C
    L = K + 1
    check_arrays(
        f"a pooled convolution of {N} images (output"
        + (", im2col rows and maximum flags kept for backward)" if training else ")"),
        ((N, PH, PW, F), x.dtype),
        ((D, N, PH, PW, L) if training else (0,), x.dtype),
        ((D, N, PH, PW, F) if training else (0,), bool),
    )
    w_and_b = _weights_with_bias(weight, bias)
    out = np.empty((N, PH, PW, F), dtype=x.dtype)
    per_image = D * PH * PW * (L + F) * x.itemsize
    parts = max(1, count_parts(N, per_image))  # 0 for an empty batch
    if training and not window_gather_pays(C, (KH, KW)):  # the largest part, whole or blocked
        block = _training_block(
            -(-N // parts), per_image,
            POOLED_CONV_SLICE_WHOLE_PART_BYTES, POOLED_CONV_SLICE_BLOCK_BYTES,
        )  # fmt: skip
    else:  # inference rows are scratch, one block per thread: the threads share the bound
        block = _images_per_block(POOLED_CONV_BLOCK_BYTES, per_image * (1 if training else parts))
    cols = np.empty((D, N, PH, PW, L), dtype=x.dtype) if training else None
    first = np.empty((D, N, PH, PW, F), dtype=bool) if training else None

    def images(start, stop):
        b = min(block, stop - start)
        phase_out = np.empty((b, PH, PW, F), dtype=x.dtype)
        taken = np.empty((b, PH, PW, F), dtype=bool)
        scratch = None if training else np.empty((D, b, PH, PW, L), dtype=x.dtype)
        for n0 in range(start, stop, block):
            n1 = min(n0 + block, stop)
            cols_b = cols[:, n0:n1] if training else scratch[:, : n1 - n0]
            _fill_phase_windows(pad2d(x[n0:n1], padding), (KH, KW), (SH, SW), (PKH, PKW), cols_b)
            cols_b[..., K] = 1.0
            top, conv = out[n0:n1], phase_out[: n1 - n0]
            np.matmul(cols_b[0].reshape(-1, L), w_and_b, out=top.reshape(-1, F))
            for d in range(1, D):
                np.matmul(cols_b[d].reshape(-1, L), w_and_b, out=conv.reshape(-1, F))
                if training:  # phase d holds a new strict maximum of the window so far
                    np.greater(conv, top, out=first[d, n0:n1])
                np.maximum(top, conv, out=top)
            if training:
                # The window's first maximum is its last new strict maximum: phase d takes
                # the gradient if it set one and no later phase did; phase 0 if none did. A
                # window whose maximum is not positive (or NaN) passes none (the ReLU).
                taken_b = taken[: n1 - n0]
                np.greater(top, 0.0, out=taken_b)
                np.logical_not(taken_b, out=taken_b)
                for d in range(D - 1, 0, -1):
                    flags = first[d, n0:n1]
                    np.greater(flags, taken_b, out=flags)
                    np.logical_or(taken_b, flags, out=taken_b)
                np.logical_not(taken_b, out=first[0, n0:n1])
            np.maximum(top, 0.0, out=top)

    over_images(N, per_image, images)
    return out, ((cols, first, block) if training else None)


def _one_channel_pooled_inference(x, weight, bias, stride, padding, pool, PH, PW) -> Array:
    """Inference of :func:`conv_relu_max_pool_forward_fast` for images of one channel (the
    first layer of a greyscale network): ``out`` (N, PH, PW, F).

    A gather of one channel's windows copies runs of only KW values. Here the im2col matrix is
    built transposed, one row per kernel offset, (KH*KW, n, OH', OW') with OH' = PKH*PH and
    OW' = PKW*PW (the outputs some window covers): each row a strided slice of the padded
    images, copied in runs of whole output rows. The GEMM W (F, KH*KW) @ those rows gives the
    output filter by filter (F, n, OH', OW'), pooled plane by plane; the bias and the ReLU come
    after the maximum (they commute with it), and only the pooled result is turned
    channels-last. Measured (AMD EPYC, 2 threads): LeNet's 6 filters of 5x5 on a block of 128
    images 3.9 ms phase by phase, 2.6 ms this way (its inference at 1000 images 58 -> 38 ms);
    under 3x3 kernels (16 or 32 filters) the phase-by-phase slice copies are the faster
    (`reference` and `small` inference 8-15 % slower this way), so those keep them.
    """
    from .im2col import pad2d

    F, _, KH, KW = weight.shape
    (SH, SW), (PKH, PKW) = stride, pool
    N, K = x.shape[0], KH * KW
    OH, OW = PKH * PH, PKW * PW
    w = weight.reshape(F, K)
    check_arrays(f"a pooled convolution of {N} images", ((N, PH, PW, F), x.dtype))
    out = np.empty((N, PH, PW, F), dtype=x.dtype)
    per_image = (K + F) * OH * OW * x.itemsize
    # scratch per thread
    block = _images_per_block(POOLED_CONV_BLOCK_BYTES, per_image * count_parts(N, per_image))

    def images(start, stop):
        b = min(block, stop - start)
        rows = np.empty((K, b, OH, OW), dtype=x.dtype)
        conv = np.empty((F, b, OH, OW), dtype=x.dtype)
        pooled = np.empty((F, b, PH, PW), dtype=x.dtype)
        for n0 in range(start, stop, block):
            n = min(n0 + block, stop) - n0
            xpad = pad2d(x[n0 : n0 + n], padding)[..., 0]
            for i in range(KH):
                for j in range(KW):
                    rows[i * KW + j, :n] = xpad[
                        :, i : i + SH * (OH - 1) + 1 : SH, j : j + SW * (OW - 1) + 1 : SW
                    ]
            y, top = conv[:, :n], pooled[:, :n]
            np.matmul(w, rows[:, :n].reshape(K, -1), out=y.reshape(F, -1))
            np.copyto(top, y[:, :, 0::PKH, 0::PKW])
            for di in range(PKH):
                for dj in range(PKW):
                    if di or dj:
                        np.maximum(top, y[:, :, di::PKH, dj::PKW], out=top)
            top += bias.reshape(F, 1, 1, 1)
            np.maximum(top, 0.0, out=top)
            out[n0 : n0 + n] = top.transpose(1, 2, 3, 0)

    over_images(N, per_image, images)
    return out


def conv_relu_max_pool_backward_fast(
    grad_out, cache, weight, x_shape, stride, padding, pool, need_input_grad
):
    """Gradients of :func:`conv_relu_max_pool_forward_fast` from its ``cache``.

    Only the elements that took a window's maximum (and were positive) receive gradient; the
    gradient of the convolution output is formed from the pooled gradient and the saved
    flags with one contiguous multiply per block, not scattered. Images are split over the
    CPU threads as in the forward pass; each thread sums its own weight gradient, and the
    threads' sums are added in a fixed order. Returns ``(grad_x or None, grad_weight,
    grad_bias)`` as :func:`gpucnn.functional.conv.conv2d_backward`.
    """
    cols, first, block = cache
    F, C, KH, KW = weight.shape
    PKH, PKW = pool
    D, N, PH, PW, L = cols.shape
    per_image = D * PH * PW * (L + F) * grad_out.itemsize
    sums = {}
    grad_padded, w_per_offset = (
        _input_grad_buffers(weight, x_shape, padding) if need_input_grad else (None, None)
    )
    OH, OW = PH * PKH, PW * PKW  # the convolution outputs some window covers

    def images(start, stop):
        b = min(block, stop - start)
        grad_wb = np.zeros((F, L), dtype=grad_out.dtype)  # transposed, as in conv2d_backward_fast
        g_conv = np.empty((D, b, PH, PW, F), dtype=grad_out.dtype)
        if need_input_grad:
            g_pixels = np.empty((b, OH, OW, F), dtype=grad_out.dtype)
        for n0 in range(start, stop, block):
            n1 = min(n0 + block, stop)
            g_b = g_conv[:, : n1 - n0]
            np.multiply(grad_out[None, n0:n1], first[:, n0:n1], out=g_b)
            # one (L, F) product per phase, summed
            rows = cols[:, n0:n1].reshape(D, -1, L)
            grad_wb += np.matmul(g_b.reshape(D, -1, F).transpose(0, 2, 1), rows).sum(axis=0)
            if not need_input_grad:
                continue
            # back to pixel order, where col2im's slice-adds have the longest contiguous runs
            # (measured ~15 % faster than adding phase by phase)
            g_pix = g_pixels[: n1 - n0]
            np.copyto(
                g_pix.reshape(n1 - n0, PH, PKH, PW, PKW, F),
                g_b.reshape(PKH, PKW, n1 - n0, PH, PW, F).transpose(2, 3, 0, 4, 1, 5),
            )
            # offset-major (KH*KW, b, OH, OW, C): every slice-add below reads contiguous memory
            grad_cols = np.matmul(g_pix.reshape(-1, F), w_per_offset)
            grad_cols = grad_cols.reshape(KH, KW, n1 - n0, OH, OW, C)
            _col2im_into(grad_padded[n0:n1], grad_cols, stride)
        sums[start] = grad_wb

    over_images(N, per_image, images)
    return _conv_grads(_sum_in_order(sums).T, weight.shape, grad_padded, padding)


def erf_fast(x: Array) -> Array | None:
    """NumPy: ``scipy.special.erf`` (one ufunc pass instead of the standard code's ~200), in
    ``x``'s float dtype. None for other arrays, or where SciPy is missing (it comes with
    scikit-learn, but is imported only here, on first use)."""
    if not _same_float_dtype(x):
        return None
    try:
        from scipy.special import erf
    except ImportError:
        return None
    return erf(x).astype(x.dtype, copy=False)  # SciPy computes float16 in float64


# ---------------------------------------------------------------------- batch normalisation
# values of one array per chunk of a BatchNorm pass (1 MiB of float32): the chunk's
# temporaries stay in cache
BN_CHUNK_VALUES = 1 << 18
# rows a chunk of the sums adds in the array's own dtype (then in float64): a float32 run over
# 10^5 rows of 1e4 +- 1e-2 lost the variance entirely (115 % off), over 4096 rows 1e-5
BN_SUM_ROWS = 4096
# A per-channel pass over (M, C) values runs NumPy's inner loop once per row of C values: with
# C = 32 to 128 that loop's start costs as much as its work. So the passes take k rows side by
# side, (M / k, k C) with the (C,) factors tiled k times, up to this many values a row.
# Measured (AMD EPYC, 2 threads, statistics + normalisation + both backward passes of one
# BatchNorm, batch 128, ms, rows of C / of up to 512 values): 28x28x32 21.7 / 18.1, 32x32x32
# 30.1 / 25.4, 16x16x64 14.5 / 12.9, 14x14x32 5.2 / 4.9, 4x4x128 1.33 / 1.36; rows of 1024
# values gained less, and of 2048 or more lost (one thread, x * scale: 4.2 ms at C = 32, 2.9
# at 1024 values, 9.3 at 2048).
BN_ROW_VALUES = 512


def _channel_rows(*arrays) -> tuple[list, int] | None:
    """``(views, k)``: C-contiguous float arrays (..., C) of one dtype and shape seen as
    (M / k, k C) rows, k consecutive rows of C channels side by side (the most that divide M,
    up to :data:`BN_ROW_VALUES` values); or None."""
    if not _same_float_dtype(*arrays) or any(a.shape != arrays[0].shape for a in arrays):
        return None
    if arrays[0].ndim < 2 or not all(a.flags.c_contiguous for a in arrays):
        return None
    C = arrays[0].shape[-1]
    if C == 0:
        return None
    M = arrays[0].size // C
    k = next(k for k in range(max(1, BN_ROW_VALUES // C), 0, -1) if M % k == 0)
    return [a.reshape(M // k, k * C) for a in arrays], k


def _chunk_rows(rows: Array) -> int:
    """Rows of a (R, width) view per chunk: :data:`BN_CHUNK_VALUES` values (at least one row)."""
    return max(1, BN_CHUNK_VALUES // max(1, rows.shape[1]))


def _chunk_sums(rows: Array, width: int, chunk_sum) -> Array:
    """The float64 (width,) sum over the rows of the (R, W) view ``rows`` of
    ``chunk_sum(start, stop)`` (``width`` sums a row: W, or several per value where a chunk
    returns several side by side), taken in chunks of :func:`_chunk_rows` rows but at most
    :data:`BN_SUM_ROWS`, the parts split over the CPU threads and added in a fixed order
    (reproducible; float64 partial sums keep a float32 mean over 10^5 rows accurate)."""
    sums = {}
    chunk = min(_chunk_rows(rows), BN_SUM_ROWS)

    def part(start, stop):
        total = np.zeros(width, dtype=np.float64)
        for s in range(start, stop, chunk):
            total += chunk_sum(s, min(s + chunk, stop))
        sums[start] = total

    over_images(rows.shape[0], 2 * width * rows.itemsize, part)
    return _sum_in_order(sums)


def _per_channel(total: Array, k: int, dtype) -> Array:
    """(..., k C) sums of rows side by side -> (..., C) per channel, in ``dtype``."""
    return total.reshape(*total.shape[:-1], k, -1).sum(axis=-2).astype(dtype)


def batch_norm_statistics_fast(x: Array) -> tuple[Array, Array] | None:
    """NumPy: :func:`gpucnn.functional.batch_norm_statistics` (mean and biased variance per
    channel, two passes) without a temporary the size of ``x``: each pass reads ``x`` once,
    chunk by chunk, over the CPU threads. None where it does not apply.

    (One pass about a sampled shift measured 5-10 % slower: the activations come from cache,
    and the centring it adds costs more than the second read.)"""
    views = _channel_rows(x)
    if views is None:
        return None
    (rows,), k = views
    M = x.size // x.shape[-1]
    width = rows.shape[1]
    # (column sums by np.add.reduce: einsum's "ij->j" keeps the GIL, measured 2x slower in
    # each of two threads at once, ~27 us alone against 21 for a (196, 512) float32 chunk)
    sums = _chunk_sums(rows, width, lambda s, e: np.add.reduce(rows[s:e], axis=0))
    mean = (_per_channel(sums, k, np.float64) / M).astype(x.dtype)
    mean_k = np.tile(mean, k)

    def squares(s, e):
        centred = rows[s:e] - mean_k
        return np.einsum("ij,ij->j", centred, centred)

    var = (_per_channel(_chunk_sums(rows, width, squares), k, np.float64) / M).astype(x.dtype)
    return mean, var


def batch_norm_apply_fast(x, scale, shift, relu: bool) -> Array | None:
    """NumPy: ``x * scale + shift`` per channel (last axis), then ``max(., 0)`` with ``relu``:
    BatchNorm's normalisation as one multiply-add per value, over the CPU threads. None where
    it does not apply."""
    views = _channel_rows(x)
    if views is None or not _same_float_dtype(x, scale, shift):
        return None
    (rows,), k = views
    scale, shift = np.tile(scale, k), np.tile(shift, k)
    out = np.empty(x.shape, dtype=x.dtype)
    out_rows = out.reshape(rows.shape)

    def part(start, stop):
        o = out_rows[start:stop]
        np.multiply(rows[start:stop], scale, out=o)
        np.add(o, shift, out=o)
        if relu:
            np.maximum(o, 0.0, out=o)

    over_images(rows.shape[0], 2 * rows.shape[1] * x.itemsize, part)
    return out


def batch_norm_grad_sums_fast(grad_out, x, mean, inv_std) -> tuple[Array, Array] | None:
    """NumPy: ``(sum(grad_out * x_hat), sum(grad_out))`` per channel in one pass, with
    ``x_hat = (x - mean) * inv_std`` made chunk by chunk (never whole). None where it does not
    apply."""
    views = _channel_rows(grad_out, x)
    if views is None or not _same_float_dtype(x, mean, inv_std):
        return None
    (g, rows), k = views
    width = rows.shape[1]
    mean, inv_std = np.tile(mean, k), np.tile(inv_std, k)

    def sums(s, e):
        x_hat = rows[s:e] - mean
        x_hat *= inv_std
        return np.concatenate([np.einsum("ij,ij->j", g[s:e], x_hat), np.add.reduce(g[s:e], axis=0)])

    both = _chunk_sums(rows, 2 * width, sums)  # two sums per value, side by side
    both = _per_channel(both.reshape(2, width), k, x.dtype)
    return both[0], both[1]


def batch_norm_input_grad_fast(grad_out, x, mean, a, b, c) -> Array | None:
    """NumPy: BatchNorm's input gradient ``grad_out * a + (x - mean) * b + c`` per channel
    (the factors of :func:`gpucnn.functional.batch_norm_input_grad`), chunk by chunk over the
    CPU threads. None where it does not apply."""
    views = _channel_rows(grad_out, x)
    if views is None or not _same_float_dtype(x, mean, a, b, c):
        return None
    (g, rows), k = views
    mean, a, b, c = (np.tile(v, k) for v in (mean, a, b, c))
    out = np.empty(x.shape, dtype=x.dtype)
    out_rows = out.reshape(rows.shape)
    chunk = _chunk_rows(rows)

    def part(start, stop):
        for s in range(start, stop, chunk):
            e = min(s + chunk, stop)
            o = out_rows[s:e]
            np.multiply(g[s:e], a, out=o)
            centred = rows[s:e] - mean
            centred *= b
            o += centred
            o += c

    over_images(rows.shape[0], 3 * rows.shape[1] * x.itemsize, part)
    return out
