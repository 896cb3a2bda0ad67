"""NumPy only: 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3).

im2col + GEMM spends 9 multiply-adds per (output pixel, channel, filter) and first copies every
input value 9 times. Winograd's F(2x2, 3x3) computes a 2x2 block of outputs from a 4x4 tile of
the input with 16 multiply-adds instead of 36 (2.25x fewer) and copies each input value 4 times
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016):

    Y = A^T [ (G g G^T) * (B^T d B) ] A        for one channel; summed over the channels

with d a 4x4 input tile (tiles start every 2 pixels and overlap by 2), g a 3x3 filter and ``*``
element-wise. Summed over the channels, each of the 16 tile positions xi is one GEMM:
M_xi (tiles, F) = V_xi (tiles, C) @ U_xi (C, F), with V = B^T d B the transformed input and
U = G g G^T the transformed filters. The backward pass is the same algebra transposed: the
output gradient through A's adjoint gives gM; the weight gradient is G^T (V^T gM) G and the
input gradient B (gM U^T) B^T, added where tiles overlap. The transforms only add and subtract
(G's 1/2 is exact), so the result equals the direct convolution up to rounding: float64
agrees to ~1e-15, float32 to a few ulps more than im2col.

Each thread (:mod:`._cpu_threads`) takes its images in blocks small enough that every
intermediate stays in the CPU's cache (the transforms are element-wise passes: out of cache they
would cost more than the GEMMs). Training keeps the transformed input for the backward pass: 4x
the input's size, where an im2col matrix is 9x.

What does not depend on the tile (the geometry, the rule's common checks, the weight
transforms, and the drivers that run blocks of images over the threads, :func:`run_forward`
and :func:`run_backward`) lives here and serves :mod:`._winograd_5x5` and
:mod:`._winograd_4x4` too: an
:class:`Algorithm` names what each brings (its geometry, block of buffers and transforms).

Shape symbols as in :mod:`gpucnn.functional.im2col`; images are channels-last. Tiles: TH =
ceil(OH / 2) by TW = ceil(OW / 2) per image, on the input padded to HQ = 2 TH + 2 rows and
WQ = 2 TW + 2 columns (one more zero row or column than the padding asks for where OH or OW is
odd; the extra output row or column is dropped).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ..backend import Array
from ..resources import check_arrays
from ._cpu_threads import count_parts, over_images
from ._numpy_kernels import _sum_in_order
from .im2col import output_size

WINOGRAD_ENV = "GPUCNN_WINOGRAD"  # "0": every convolution takes im2col + GEMM
# Where Winograd is the faster one: the GEMMs shrink 2.25x but the transforms are element-wise
# passes over C and F channels, which pay off only with enough channels and pixels. Measured
# (AMD EPYC, 2 threads, batch 128, one layer's training step against im2col + GEMM): C = 16
# loses (0.4-0.8x; a later run, F = C or 2C: 0.80-0.90x at 14x14, 1.04-1.18x at 28x28, which
# no network here has at 16 channels); C >= 32 wins 1.3x on 32x32 and 28x28 outputs and 1.1-1.2x
# on 16x16; 14x14 with C = 32 is even or worse (0.9-1.0x), with C >= 64 it wins 1.1-1.4x;
# 8x8 and 7x7 lose (0.7-0.9x).
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_SIDE = 12  # output rows and columns
WINOGRAD_MIN_WORK = 8192  # output pixels times input channels, OH * OW * C
# A block's transformed input. Measured (vgg training step, batch 128, 2 threads): 0.5 MiB
# 470 ms, 1 MiB 364 ms, 2 MiB 324 ms, 4 MiB 326 ms: fewer, longer passes, still in L2 + L3.
BLOCK_BYTES = 2 << 20

# the transforms of F(2x2, 3x3), as written in the comments where they are applied
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


class TransformedInput(NamedTuple):
    """What :func:`backward` needs from the forward pass: the transformed input V
    (4, 4, N, TH, TW, C), the input's shape (N, H, W, C) and the padding."""

    v: Array
    x_shape: tuple[int, int, int, int]
    padding: tuple[int, int, int, int]


def switched_on() -> bool:
    """False where ``GPUCNN_WINOGRAD=0`` asks for im2col + GEMM everywhere."""
    return os.environ.get(WINOGRAD_ENV, "1").strip() != "0"


def takes_kind(x: Array, weight: Array, bias: Array | None, stride, kernel: int) -> bool:
    """What every Winograd rule asks first: NumPy arrays of one dtype, float32 or float64 (the
    ones measured), a ``kernel`` x ``kernel`` filter, stride 1, and the switch
    ``GPUCNN_WINOGRAD`` not "0"."""
    arrays = (x, weight) if bias is None else (x, weight, bias)
    return (
        all(isinstance(a, np.ndarray) and a.dtype == x.dtype for a in arrays)
        and x.dtype in (np.float32, np.float64)
        and tuple(weight.shape[2:]) == (kernel, kernel)
        and tuple(stride) == (1, 1)
        and switched_on()
    )


def applies(x: Array, weight: Array, bias: Array | None, stride, padding) -> bool:
    """Whether :func:`forward` takes this convolution: :func:`takes_kind` for 3x3, and a size
    where it is measured faster than im2col + GEMM (see :data:`WINOGRAD_MIN_WORK`)."""
    if not takes_kind(x, weight, bias, stride, 3):
        return False
    geo = _geometry(x.shape, weight.shape[0], padding)
    return (
        geo.C >= WINOGRAD_MIN_CHANNELS
        and min(geo.OH, geo.OW) >= WINOGRAD_MIN_SIDE
        and geo.OH * geo.OW * geo.C >= WINOGRAD_MIN_WORK
    )


def transform_weight(g: np.ndarray, weight: Array) -> Array:
    """(F, C, K, K) -> U (T*T, C, F) with the (T, K) filter transform ``g`` (``_G`` here,
    (4, 3)): U[T i + j, c, f] = (g w[f, c] g^T)[i, j]."""
    F, C, K, _ = weight.shape
    T = g.shape[0]
    g = g.astype(weight.dtype)
    # GEMMs, not a three-operand einsum (which loops over all six indices at once: 16 ms for a
    # 64 -> 128 channel 5x5 filter bank, in every pass); no temporary larger than U
    rows = np.tensordot(g, weight.transpose(2, 3, 1, 0), axes=1)  # (T, K, C, F): g on rows
    return np.matmul(g, rows.reshape(T, K, C * F)).reshape(T * T, C, F)  # and on columns


def weight_grad(g: np.ndarray, grad_u: Array) -> Array:
    """The adjoint of :func:`transform_weight`: (T*T, C, F) -> (F, C, K, K)."""
    _, C, F = grad_u.shape
    T = g.shape[0]
    g = g.astype(grad_u.dtype)
    K = g.shape[1]
    columns = np.matmul(g.T, grad_u.reshape(T, T, C * F))  # (T, K, C F): g^T on columns
    taps = np.tensordot(g, columns, axes=([0], [0])).reshape(K, K, C, F)  # and on rows
    return np.ascontiguousarray(taps.transpose(3, 2, 0, 1))  # (F, C, K, K)


class Geometry(NamedTuple):
    """The sizes of one convolution with a ``kernel`` x ``kernel`` filter computed in m x m
    output tiles (m = 2 but for F(4x4, 3x3)): input (N, H, W, C), F filters, output (OH, OW),
    tiles (TH, TW) per image, the padding (PT, PB, PL, PR), and the bytes a block's largest
    buffer may take."""

    N: int
    H: int
    W: int
    C: int
    F: int
    OH: int
    OW: int
    TH: int
    TW: int
    padding: tuple[int, int, int, int]
    kernel: int
    block_bytes: int
    m: int = 2

    @classmethod
    def of(
        cls, x_shape, filters: int, padding, kernel: int, block_bytes: int, m: int = 2
    ) -> Geometry:
        N, H, W, C = x_shape
        PT, PB, PL, PR = padding
        OH, OW = output_size(H, kernel, 1, PT, PB), output_size(W, kernel, 1, PL, PR)
        TH, TW = -(-OH // m), -(-OW // m)
        return cls(N, H, W, C, filters, OH, OW, TH, TW, tuple(padding), kernel, block_bytes, m)

    @property
    def tile(self) -> int:
        """The input tile's side: m outputs + kernel - 1."""
        return self.m + self.kernel - 1

    @property
    def tiles(self) -> int:
        """Tiles per image."""
        return self.TH * self.TW

    def block_images(self, itemsize: int) -> int:
        """Images per block: its largest buffer (tile^2 values per tile and channel) within
        ``block_bytes``."""
        per_image = self.tile**2 * self.tiles * max(self.C, self.F) * itemsize
        return max(1, self.block_bytes // per_image)

    def bytes_per_image(self, itemsize: int) -> int:
        """What one image's passes touch: its transformed input and output, twice each."""
        return 2 * self.tile**2 * self.tiles * (self.C + self.F) * itemsize


def _geometry(x_shape, filters: int, padding) -> Geometry:
    return Geometry.of(x_shape, filters, padding, 3, BLOCK_BYTES)  # the current BLOCK_BYTES


def _phase_range(pad: int, size: int, parity: int) -> tuple[slice, slice]:
    """Along one axis, padded position 2t + parity holds input position 2t + parity - pad:
    the tiles' range of t that falls inside the input, and the input's matching slice."""
    t0, t1 = (pad - parity + 1) // 2, (pad + size - parity + 1) // 2
    first = 2 * t0 + parity - pad
    return slice(t0, t1), slice(first, first + 2 * (t1 - t0) - 1, 2)


def phase_count(size: int, phase: int, step: int) -> int:
    """How many of positions phase, phase + step, ... lie below ``size``."""
    return max(0, (size - phase + step - 1) // step)


def working_memory(geo: Geometry, block_class, dtype, passes: int) -> tuple:
    """``(shape, dtype)`` for :func:`check_arrays`: the blocks' buffers of every thread, for a
    geometry and block class of this module or of :mod:`._winograd_5x5` (which
    :mod:`._winograd_4x4` uses too)."""
    itemsize = np.dtype(dtype).itemsize
    parts = max(1, count_parts(geo.N, passes * geo.bytes_per_image(itemsize)))
    m = max(1, min(geo.block_images(itemsize), -(-geo.N // parts)))
    return (parts * block_class(geo, m, dtype).nbytes(),), np.uint8


class _Block:
    """One thread's buffers for blocks of up to ``m`` images, and the transforms on them.

    Tiles overlap by two pixels, so a transform reads every second row and column. Strided
    views with runs of C contiguous values would make each element-wise pass several times
    slower; instead the padded input is stored by *phase*, xq[n, q, t, p, s, c] = padded
    input at (2t + q, 2s + p), and every pass then reads runs of whole tile rows. One strided
    copy enters or leaves that layout per direction.
    """

    def __init__(self, geo: Geometry, m: int, dtype):
        self.geo, self.m, self.dtype = geo, m, dtype
        TH, TW, C, F = geo.TH, geo.TW, geo.C, geo.F
        # name -> (shape, zero-filled): each made on first use (forward and backward use
        # different ones); zeros where only some positions are ever written (the padding)
        self.shapes = {
            "xq": ((m, 2, TH + 1, 2, TW + 1, C), True),  # the padded input by phase
            "rows": ((4, m, TH, 2, TW + 1, C), False),
            "v": ((4, 4, m, TH, TW, C), False),
            "mf": ((4, 4, m, TH, TW, F), False),
            "sides": ((2, 4, m, TH, TW, F), False),
            "scratch": ((m, TH, TW, F), False),
            "gq": ((2, 2, m, TH, TW, F), True),  # the output gradient by phase
            "gx": ((m, 2, TH + 1, 2, TW + 1, C), False),  # the input gradient by phase
        }
        self.buffers: dict[str, Array] = {}
        PT, _, PL, _ = geo.padding
        # (phase q, p) -> (the tiles' rows and columns, the input's) for the input's positions
        self.input_phases = [
            (q, p, _phase_range(PT, geo.H, q), _phase_range(PL, geo.W, p))
            for q in range(2) for p in range(2)
        ]  # fmt: skip
        # output phase (a, b) -> its valid tile rows and columns (the last may be cut off)
        self.output_phases = [
            (a, b, slice(0, phase_count(geo.OH, a, 2)), slice(0, phase_count(geo.OW, b, 2)))
            for a in range(2) for b in range(2)
        ]  # fmt: skip

    def __getattr__(self, name: str) -> Array:
        """A buffer by name (see ``shapes``), made the first time it is asked for."""
        if name not in self.__dict__.get("shapes", {}):
            raise AttributeError(name)
        if name not in self.buffers:
            shape, zeroed = self.shapes[name]
            self.buffers[name] = (np.zeros if zeroed else np.empty)(shape, dtype=self.dtype)
        return self.buffers[name]

    def nbytes(self) -> int:
        """The bytes of every buffer this block may make (an upper bound of its use)."""
        itemsize = np.dtype(self.dtype).itemsize
        return sum(math.prod(shape) for shape, _ in self.shapes.values()) * itemsize

    def products(self, n: int) -> Array:
        """The buffer of the 16 GEMMs' outputs for n images, (16, n*TH*TW, F)."""
        return self.mf[:, :, :n].reshape(16, -1, self.geo.F)

    def grad_v(self, n: int) -> Array:
        """The buffer of V's gradient for n images, (16, n*TH*TW, C)."""
        return self.v[:, :, :n].reshape(16, -1, self.geo.C)

    def transform_input(self, x: Array, v: Array | None = None) -> Array:
        """x (n, H, W, C), n <= m -> V (16, n*TH*TW, C), into ``v`` (4, 4, n, TH, TW, C) if
        given, else into this block's buffer."""
        geo, n = self.geo, x.shape[0]
        TH, TW = geo.TH, geo.TW
        xq, rows = self.xq[:n], self.rows[:, :n]
        v = self.v[:, :, :n] if v is None else v
        for q, p, (t, h), (s, w) in self.input_phases:
            xq[:, q, t, p, s] = x[:, h, w]
        # B^T d: tile rows 2t + k for k = 0..3 -> rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
        _combine_forward([xq[:, k % 2, k // 2 : k // 2 + TH] for k in range(4)], rows)
        # (B^T d) B: the same combination of each of those rows' tile columns
        for i in range(4):
            tile_columns = [rows[i][:, :, k % 2, k // 2 : k // 2 + TW] for k in range(4)]
            _combine_forward(tile_columns, v[i])
        return v.reshape(16, -1, geo.C)

    def transform_output(
        self, m_block: Array, out: Array, bias: Array, relu: bool, pool: bool = False
    ) -> None:
        """M (16, n*TH*TW, F) -> out (n, OH, OW, F): A^T M A + bias, then max(., 0) if relu.

        With ``pool`` each tile's 2x2 outputs are one window of a 2x2 max pooling, and ``out``
        (n, OH // 2, OW // 2, F) takes their maximum (the bias and ReLU commute with it): the
        convolution's output is never written.
        """
        geo, n = self.geo, out.shape[0]
        mf = m_block.reshape(4, 4, n, geo.TH, geo.TW, geo.F)
        sides, tmp = self.sides[:, :, :n], self.scratch[:n]
        # A^T M: rows (M0 + M1 + M2, M1 - M2 - M3)
        np.add(mf[0], mf[1], out=sides[0])
        sides[0] += mf[2]
        np.subtract(mf[1], mf[2], out=sides[1])
        sides[1] -= mf[3]
        # (A^T M) A: the same combination of each row's columns; output (2t + a, 2s + b)
        for a, b, t, s in self.output_phases:
            side = sides[a]
            combine, terms = (np.add, side[:3]) if b == 0 else (np.subtract, side[1:])
            combine(terms[0], terms[1], out=tmp)
            if not pool:
                combine(tmp[:, t, s], terms[2][:, t, s], out=out[:, a::2, b::2])
                continue
            t, s = slice(0, geo.OH // 2), slice(0, geo.OW // 2)  # whole windows only
            if a == b == 0:
                combine(tmp[:, t, s], terms[2][:, t, s], out=out)
            else:
                combine(tmp[:, t, s], terms[2][:, t, s], out=tmp[:, t, s])
                np.maximum(out, tmp[:, t, s], out=out)
        out += bias
        if relu:
            np.maximum(out, 0.0, out=out)

    def output_grad(self, grad_out: Array) -> Array:
        """The adjoint of :meth:`transform_output` (without bias and ReLU): grad_out
        (n, OH, OW, F) -> gM (16, n*TH*TW, F), in this block's buffer."""
        geo, n = self.geo, grad_out.shape[0]
        gq, gm = self.gq[:, :, :n], self.mf[:, :, :n]  # gq: zeros where tiles pass the output
        for a, b, t, s in self.output_phases:
            gq[a, b, :, t, s] = grad_out[:, a::2, b::2]
        # A's adjoint on rows: tile rows (g0, g1) -> (g0, g0 + g1, g0 - g1, -g1); row 0 is g0
        rows = self.sides.reshape(4, 2, self.m, geo.TH, geo.TW, geo.F)[1:, :, :n]
        np.add(gq[0], gq[1], out=rows[0])
        np.subtract(gq[0], gq[1], out=rows[1])
        np.negative(gq[1], out=rows[2])
        for i, r in enumerate((gq[0], *rows)):  # and on columns
            _combine_adjoint_of_output([r[0], r[1]], gm[i])
        return gm.reshape(16, -1, geo.F)

    def input_grad(self, grad_v: Array, grad_x: Array) -> None:
        """The adjoint of :meth:`transform_input`: gV (16, n*TH*TW, C) -> grad_x (n, H, W, C).
        Uses ``grad_v``'s memory as scratch."""
        geo, n = self.geo, grad_x.shape[0]
        gv = grad_v.reshape(4, 4, n, geo.TH, geo.TW, geo.C)
        rows, gx = self.rows[:, :n], self.gx[:n]
        for i in range(4):  # B's adjoint on columns, overlapping tiles added
            _add_overlapping_tiles(gv[i], rows[i], axis=2)
        _add_overlapping_tiles(rows, gx, axis=1)  # and on rows
        for q, p, (t, h), (s, w) in self.input_phases:
            grad_x[:, h, w] = gx[:, q, t, p, s]


def _combine_forward(d: list, out: Array) -> None:
    """B^T's rows on four strided views: out = (d0 - d2, d1 + d2, d2 - d1, d1 - d3)."""
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[1], d[3], out=out[3])


def _combine_adjoint_of_output(g: list, out: Array) -> None:
    """A's rows on two strided views: out = (g0, g0 + g1, g0 - g1, -g1)."""
    np.copyto(out[0], g[0])
    np.add(g[0], g[1], out=out[1])
    np.subtract(g[0], g[1], out=out[2])
    np.negative(g[1], out=out[3])


def _add_overlapping_tiles(gv: Array, target: Array, axis: int) -> None:
    """B's adjoint along one image axis: the gradients of the four tile offsets k of the tile
    arrays gv[k] (..., T, ...), that is (gv0, gv1 - gv2 + gv3, gv1 + gv2 - gv0, -gv3), each
    added at padded position 2t + k, into ``target`` stored by phase: ``axis`` is its parity
    and ``axis + 1`` its tile index (T + 1 long), the axis of gv[k]'s tiles. ``gv`` is
    overwritten."""

    def at(array, *index):
        return array[(slice(None),) * axis + index]

    T = gv.shape[axis + 1]
    even, odd = at(target, 0), at(target, 1)  # positions 2t and 2t + 1, t = 0..T
    # offsets 0 and 1 of tile t land on 2t and 2t + 1, offsets 2 and 3 on 2(t + 1) and after
    np.copyto(at(even, slice(0, T)), gv[0])
    at(even, T)[...] = 0.0
    np.subtract(gv[1], gv[2], out=at(odd, slice(0, T)))
    at(odd, T)[...] = 0.0
    at(odd, slice(0, T))[...] += gv[3]
    at(odd, slice(1, T + 1))[...] -= gv[3]
    gv[1] += gv[2]
    gv[1] -= gv[0]
    at(even, slice(1, T + 1))[...] += gv[1]


class Algorithm(NamedTuple):
    """One Winograd algorithm, as the shared drivers :func:`run_forward` and
    :func:`run_backward` use it (this module's F(2x2, 3x3), :mod:`._winograd_5x5`'s
    F(2x2, 5x5), :mod:`._winograd_4x4`'s F(4x4, 3x3)).

    ``geometry(x_shape, filters, padding)`` gives the :class:`Geometry`; ``block(geo, m,
    dtype)`` one thread's buffers and transforms (``transform_input``, ``products``,
    ``transform_output``, ``output_grad``, ``grad_v``, ``input_grad``); ``filter_transform``
    the (tile, K) matrix G of :func:`transform_weight`; ``saved`` the kept input's type.
    """

    geometry: Callable[..., Geometry]
    block: type
    filter_transform: np.ndarray
    saved: type


def run_forward(algorithm: Algorithm, x: Array, weight: Array, bias: Array, padding,
                relu: bool, training: bool, pool: bool):  # fmt: skip
    """``conv2d(x)`` (+ bias, then ReLU if ``relu``) by ``algorithm``, block by block over the
    CPU threads: x (N, H, W, C) -> ``(out (N, OH, OW, F), saved or None)``. With ``training``
    the transformed input V (tile, tile, N, TH, TW, C) is kept for :func:`run_backward`;
    without, each block's is scratch and the second value is None. With ``pool`` (inference
    only) ``out`` is the 2x2 max pooling of the output, (N, OH // 2, OW // 2, F), taken while
    each block is in cache.
    """
    if pool and training:
        raise ValueError("a pooled Winograd convolution is for inference only")
    geo = algorithm.geometry(x.shape, weight.shape[0], padding)
    saved_shape = (geo.tile, geo.tile, geo.N, geo.TH, geo.TW, geo.C) if training else (0,)
    out_shape = (geo.N, geo.OH // 2, geo.OW // 2, geo.F) if pool else (geo.N, geo.OH, geo.OW, geo.F)
    check_arrays(
        f"a convolution of {geo.N} images (output, working memory"
        + (", transformed input kept for backward)" if training else ")"),
        (out_shape, x.dtype),
        (saved_shape, x.dtype),
        working_memory(geo, algorithm.block, x.dtype, 1),
    )
    out = np.empty(out_shape, dtype=x.dtype)
    v_all = np.empty(saved_shape, dtype=x.dtype) if training else None
    u = transform_weight(algorithm.filter_transform, weight)
    itemsize = x.itemsize

    def images(start, stop):
        m = max(1, min(geo.block_images(itemsize), stop - start))  # an empty batch: no block
        block = algorithm.block(geo, m, x.dtype)
        for n0 in range(start, stop, m):
            n1 = min(n0 + m, stop)
            v = block.transform_input(x[n0:n1], v_all[:, :, n0:n1] if training else None)
            products = np.matmul(v, u, out=block.products(n1 - n0))
            block.transform_output(products, out[n0:n1], bias, relu, pool)

    over_images(geo.N, geo.bytes_per_image(itemsize), images)
    saved = algorithm.saved(v_all, tuple(x.shape), tuple(padding)) if training else None
    return out, saved


def run_backward(algorithm: Algorithm, grad_out: Array, saved, weight: Array,
                 need_input_grad: bool, relu_out: Array | None):  # fmt: skip
    """Gradients of :func:`run_forward`: ``(grad_x or None, grad_weight, grad_bias)`` as
    :func:`gpucnn.functional.conv.conv2d_backward`. With ``relu_out`` (the output of a
    ``relu=True`` forward) the gradient first passes where that output is positive.

    Each thread sums its images' gradients of U and of the bias; the threads' sums are added
    in the order of their first image (reproducible).
    """
    v_all, x_shape, padding = saved
    geo = algorithm.geometry(x_shape, weight.shape[0], padding)
    dtype, itemsize = grad_out.dtype, grad_out.itemsize
    positions = geo.tile * geo.tile
    u_t = (
        np.ascontiguousarray(
            transform_weight(algorithm.filter_transform, weight).transpose(0, 2, 1)
        )
        if need_input_grad
        else None
    )
    check_arrays(
        f"the gradients of a convolution of {geo.N} images (input gradient, working memory)",
        (x_shape if need_input_grad else (0,), dtype),
        working_memory(geo, algorithm.block, dtype, 2),
    )
    grad_x = np.empty(x_shape, dtype=dtype) if need_input_grad else None
    sums = {}

    def images(start, stop):
        m = max(1, min(geo.block_images(itemsize), stop - start))  # an empty batch: no block
        block = algorithm.block(geo, m, dtype)
        grad_u = np.zeros((positions, geo.C, geo.F), dtype=dtype)
        grad_b = np.zeros(geo.F, dtype=dtype)
        for n0 in range(start, stop, m):
            n1 = min(n0 + m, stop)
            g = grad_out[n0:n1]
            if relu_out is not None:
                g = np.multiply(g, relu_out[n0:n1] > 0)
            grad_b += g.reshape(-1, geo.F).sum(axis=0)
            gm = block.output_grad(g)
            v = v_all[:, :, n0:n1].reshape(positions, -1, geo.C)
            grad_u += np.matmul(v.transpose(0, 2, 1), gm)
            if need_input_grad:
                grad_v = np.matmul(gm, u_t, out=block.grad_v(n1 - n0))
                block.input_grad(grad_v, grad_x[n0:n1])
        sums[start] = (grad_u, grad_b)

    over_images(geo.N, 2 * geo.bytes_per_image(itemsize), images)
    grad_u = _sum_in_order({start: u for start, (u, _) in sums.items()})
    grad_b = _sum_in_order({start: b for start, (_, b) in sums.items()})
    return grad_x, weight_grad(algorithm.filter_transform, grad_u), grad_b


# the algorithm as the shared drivers take it
ALGORITHM = Algorithm(_geometry, _Block, _G, TransformedInput)


def forward(x: Array, weight: Array, bias: Array, padding, relu: bool = False,
            training: bool = True, pool: bool = False):  # fmt: skip
    """``conv2d(x)`` (+ bias, then ReLU if ``relu``) for a convolution :func:`applies` takes.

    x (N, H, W, C), weight (F, C, 3, 3), bias (F,), padding (PT, PB, PL, PR) ->
    ``(out (N, OH, OW, F), TransformedInput or None)``, as :func:`run_forward` (V is 4x the
    input's size, less than half of an im2col matrix).
    """
    return run_forward(ALGORITHM, x, weight, bias, padding, relu, training, pool)


def backward(grad_out: Array, saved: TransformedInput, weight: Array, need_input_grad: bool = True,
             relu_out: Array | None = None):  # fmt: skip
    """Gradients of :func:`forward`, as :func:`run_backward`."""
    return run_backward(ALGORITHM, grad_out, saved, weight, need_input_grad, relu_out)
