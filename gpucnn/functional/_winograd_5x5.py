"""NumPy only: 5x5 stride-1 convolutions by Winograd's minimal filtering F(2x2, 5x5).

im2col + GEMM spends 25 multiply-adds per (output pixel, channel, filter). F(2x2, 5x5) computes
a 2x2 block of outputs from a 6x6 input tile with 36 (2.78x fewer), as 36 GEMMs of
(tiles, C) x (C, F), one per tile position (Lavin and Gray, CVPR 2016; the 3x3 sibling in
:mod:`._winograd` explains the algebra):

    Y = A^T [ (G g G^T) * (B^T d B) ] A

Where the 3x3 version writes its 4x4 transforms as adds on strided views, these 6x6 ones have
22 non-zero entries per side, so each side is one small matrix product instead: the tiles'
rows are gathered (6 copies) and combined by ``B^T`` (a (6, 6) x (6, K) GEMM), then their
columns (36 copies, one more GEMM); the output side is one (4, 36) x (36, K) product. The
matrices are not typed in: :func:`toom_cook` derives them from the interpolation points
0, 1, -1, 2, -2 and infinity (``B^T`` has integer entries, ``G`` fractions down to 1/24).
Float64 agrees with the direct convolution to ~1e-14; float32 outputs and gradients to 1-5e-6
of their largest value, where im2col's are within 1-5e-7 (the transforms' larger
coefficients).

Each thread takes its images in blocks whose buffers stay in cache; training keeps the
transformed input V for the backward pass: 9x the input for even output sizes (36 values
per 2x2 outputs; more where an odd size leaves part of the last tiles unused), where im2col
keeps 25x.

Shapes: x (N, H, W, C) channels-last, weight (F, C, 5, 5); TH = ceil(OH / 2) by
TW = ceil(OW / 2) tiles per image on the input padded to HQ = 2 TH + 4 by WQ = 2 TW + 4 (a
zero row or column more than the padding where OH or OW is odd; that output is dropped).

The block of buffers and transforms (:class:`_Block`) takes any 6x6-tile algorithm: its tiles
start every m = ``geo.m`` pixels and give m x m outputs, so it also runs F(4x4, 3x3)
(:mod:`._winograd_4x4`), whose matrices :data:`MATRICES` holds beside these.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..backend import Array
from ._winograd import (
    Algorithm,
    Geometry,
    phase_count,
    run_backward,
    run_forward,
    takes_kind,
)

TILE = 6  # input tile side: 2 outputs + 5 taps - 1
# Where it beats im2col + GEMM. Measured (one layer's training step, conv + ReLU forward and
# backward, batch 128, F = 2C, 'same' padding, AMD EPYC, 2 threads, medians of 4 alternating
# runs): C = 16: 28x28 1.17x, 14x14 1.15x, 7x7 0.56x; C = 32: 1.27x, 1.09x, 0.62x; C = 64:
# 1.70x, 1.24x, 0.77x; C = 128 (F = 128): 1.45x, 1.37x, 0.67x. 7x7 outputs make 4x4 tiles of
# which 23 % of the outputs are cut off.
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_SIDE = 12  # output rows and columns
# A block's largest buffer (its 36 tile positions times max(C, F) values per tile). Measured
# (the same step, medians of 3; noisy): C = 64, 14x14: 1/2/4/8/16 MiB 240/217/198/252/249 ms;
# C = 32, 28x28: 238/251/320/276/314 ms. 4 MiB is the best for the suite's 5x5 layer (64
# channels, 14x14); larger images may do better with smaller blocks.
BLOCK_BYTES = 4 << 20


def toom_cook(
    m: int, r: int, points: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The matrices ``(A^T (m, a), G (a, r), B^T (a, a))`` of Winograd's F(m, r), a = m + r - 1,
    from ``a - 1`` finite interpolation points and the point at infinity.

    ``A^T`` evaluates at the points (the last column: infinity), ``G`` interpolates the filter
    (Lagrange denominators), and ``B^T`` is the one matrix that makes
    ``sum_j A^T[i, j] G[j, k] B^T[j, l] == (l == i + k)`` for every i, k, l: the minimal
    algorithm's identity, solved as a linear system (36 unknowns for F(2, 5), a unique
    solution). Raises ``ArithmeticError`` if the identity does not hold to float64 rounding.
    """
    a = m + r - 1
    if len(points) != a - 1 or len(set(points)) != a - 1:
        raise ValueError(
            f"expected {a - 1} distinct finite points for F({m}, {r}); received {points}"
        )
    at, g = np.zeros((m, a)), np.zeros((a, r))
    for j, p in enumerate(points):
        at[:, j] = [p**i for i in range(m)]
        g[j] = [p**k / math.prod(p - q for q in points if q != p) for k in range(r)]
    at[m - 1, a - 1] = g[a - 1, r - 1] = 1.0
    # one equation per (i, k, l); unknowns B^T[j, l] in row-major order
    system = np.zeros((m, r, a, a, a))
    for col in range(a):
        system[:, :, col, :, col] = at[:, None, :] * g.T[None, :, :]
    wanted = np.zeros((m, r, a))
    for i in range(m):
        for k in range(r):
            wanted[i, k, i + k] = 1.0
    system, wanted = system.reshape(-1, a * a), wanted.reshape(-1)
    bt = np.linalg.lstsq(system, wanted, rcond=None)[0].reshape(a, a)
    if np.abs(system @ bt.reshape(-1) - wanted).max() > 1e-12:
        raise ArithmeticError(f"no F({m}, {r}) at points {points}")
    return at, g, np.round(bt, 12) + 0.0  # exact small integers here; + 0.0 drops -0.0


POINTS = (0.0, 1.0, -1.0, 2.0, -2.0)  # and infinity: 6x6 tiles for F(2, 5) and F(4, 3)
# (m, r) -> (A^T, G, B^T, A^T (x) A^T): the last, (m*m, 36), gives a tile's output (a, b), row
# m a + b, from its 36 products
MATRICES = {}
for _m, _r in ((2, 5), (4, 3)):
    _at, _g, _bt = toom_cook(_m, _r, POINTS)
    MATRICES[_m, _r] = (_at, _g, _bt, np.kron(_at, _at))
_G = MATRICES[2, 5][1]  # (6, 5)


class TransformedInput(NamedTuple):
    """What :func:`backward` needs: V (6, 6, N, TH, TW, C), the input's shape and padding."""

    v: Array
    x_shape: tuple[int, int, int, int]
    padding: tuple[int, int, int, int]


def _geometry(x_shape, filters: int, padding) -> Geometry:
    return Geometry.of(x_shape, filters, padding, 5, BLOCK_BYTES)  # the current BLOCK_BYTES


def applies(x: Array, weight: Array, bias: Array | None, stride, padding) -> bool:
    """Whether :func:`forward` takes this convolution: :func:`._winograd.takes_kind` for 5x5,
    at least :data:`WINOGRAD_MIN_CHANNELS` input channels and :data:`WINOGRAD_MIN_SIDE`
    output rows and columns."""
    if not takes_kind(x, weight, bias, stride, 5):
        return False
    geo = _geometry(x.shape, weight.shape[0], padding)
    return geo.C >= WINOGRAD_MIN_CHANNELS and min(geo.OH, geo.OW) >= WINOGRAD_MIN_SIDE


class _Block:
    """One thread's buffers for blocks of up to ``m`` images, made on first use. Each is flat
    after its leading indices; a block of n <= m images takes the first n images' share
    (:meth:`view`), so every reshape of it stays a view."""

    def __init__(self, geo: Geometry, m: int, dtype):
        self.geo, self.m, self.dtype = geo, m, dtype
        M = geo.m  # outputs per tile side
        HQ, WQ = M * geo.TH + geo.kernel - 1, M * geo.TW + geo.kernel - 1
        self.hq, self.wq = HQ, WQ
        _, _, bt, at2 = MATRICES[M, geo.kernel]
        self.bt, self.at2 = bt.astype(dtype), at2.astype(dtype)
        P, C, F = geo.tiles, geo.C, geo.F
        # name -> (leading dims, per-image size); "padded" and "outputs" start zero-filled
        self.layout = {
            "padded": ((), HQ * WQ * C),  # the padded input (zeroed once: borders stay 0)
            "rows": ((TILE,), geo.TH * WQ * C),  # tile rows, gathered then combined
            "combined_rows": ((TILE,), geo.TH * WQ * C),
            "tiles": ((TILE, TILE), P * C),  # whole tiles: rows combined, columns gathered
            "v": ((TILE, TILE), P * C),  # V when not kept for backward; in backward, gV
            "products": ((36,), P * F),  # the 36 GEMMs' outputs (backward: their gradient)
            # each tile's m x m outputs; backward: their gradient, zero where the output size
            # leaves a tile's last rows or columns outside the output (never written)
            "outputs": ((M * M,), P * F),
            "grad_padded": ((), HQ * WQ * C),
        }
        self.zeroed = {"padded", "outputs"}
        self.buffers: dict[str, Array] = {}

    def view(self, name: str, n: int, *shape: int) -> Array:
        """Buffer ``name`` for ``n`` images, shaped (*leading, n, *shape)."""
        lead, per_image = self.layout[name]
        if name not in self.buffers:
            make = np.zeros if name in self.zeroed else np.empty
            self.buffers[name] = make((*lead, self.m * per_image), dtype=self.dtype)
        return self.buffers[name][..., : n * per_image].reshape(*lead, n, *shape)

    def nbytes(self) -> int:
        """The bytes of every buffer this block may make (an upper bound of its use)."""
        itemsize = np.dtype(self.dtype).itemsize
        return (
            sum(math.prod(lead) * self.m * size for lead, size in self.layout.values()) * itemsize
        )

    def products(self, n: int) -> Array:
        """The buffer of the 36 GEMMs' outputs for n images, (36, n*TH*TW, F)."""
        return self.view("products", n, self.geo.tiles * self.geo.F).reshape(36, -1, self.geo.F)

    def grad_v(self, n: int) -> Array:
        """The buffer of V's gradient for n images, (36, n*TH*TW, C)."""
        return self.view("v", n, self.geo.tiles * self.geo.C).reshape(36, -1, self.geo.C)

    def transform_input(self, x: Array, v: Array | None) -> Array:
        """x (n, H, W, C) -> V (36, n*TH*TW, C), written into ``v`` (6, 6, n, TH, TW, C) if
        given (the block's slice of the kept V), else into this block's buffer."""
        geo, n, M = self.geo, x.shape[0], self.geo.m
        TH, TW, C, WQ = geo.TH, geo.TW, geo.C, self.wq
        PT, _, PL, _ = geo.padding
        padded = self.view("padded", n, self.hq, WQ, C)
        padded[:, PT : PT + geo.H, PL : PL + geo.W] = x
        rows = self.view("rows", n, TH, WQ, C)
        for i in range(TILE):  # tile row i of every tile: padded rows i, i + m, ...
            rows[i] = padded[:, i : i + M * TH : M]
        combined = self.view("combined_rows", n, TH, WQ, C)
        np.matmul(self.bt, rows.reshape(TILE, -1), out=combined.reshape(TILE, -1))
        tiles = self.view("tiles", n, TH, TW, C)
        for i in range(TILE):
            for j in range(TILE):
                tiles[i, j] = combined[i][:, :, j : j + M * TW : M]
        v = (self.view("v", n, TH, TW, C) if v is None else v).reshape(TILE, TILE, -1)
        np.matmul(self.bt, tiles.reshape(TILE, TILE, -1), out=v)
        return v.reshape(36, n * geo.tiles, C)

    def transform_output(self, products: Array, out: Array, bias: Array, relu: bool,
                         pool: bool) -> None:  # fmt: skip
        """M (36, n*TH*TW, F) -> out (n, OH, OW, F): A^T M A + bias, then max(., 0) if relu;
        with ``pool``, out (n, OH // 2, OW // 2, F) takes the maximum of each 2x2 window (a
        tile holds (m/2)^2 of them)."""
        geo, n, M = self.geo, out.shape[0], self.geo.m
        TH, TW, F = geo.TH, geo.TW, geo.F
        outputs = self.view("outputs", n, TH, TW, F)
        np.matmul(self.at2, products.reshape(36, -1), out=outputs.reshape(M * M, -1))
        if pool:
            half = M // 2  # pooled outputs per tile side
            for a in range(half):
                for b in range(half):  # pooled output (half t + a, half s + b)
                    rows, cols = (
                        phase_count(geo.OH // 2, a, half),
                        phase_count(geo.OW // 2, b, half),
                    )
                    target = out[:, a::half, b::half]
                    window = [outputs[M * (2 * a + i) + 2 * b + j, :, :rows, :cols]
                              for i in range(2) for j in range(2)]  # fmt: skip
                    np.maximum(window[0], window[1], out=target)
                    np.maximum(target, window[2], out=target)
                    np.maximum(target, window[3], out=target)
        else:
            for a in range(M):
                for b in range(M):  # output (m t + a, m s + b): cut at the output's edges
                    rows, cols = phase_count(geo.OH, a, M), phase_count(geo.OW, b, M)
                    out[:, a::M, b::M] = outputs[M * a + b, :, :rows, :cols]
        out += bias
        if relu:
            np.maximum(out, 0.0, out=out)

    def output_grad(self, grad_out: Array) -> Array:
        """The adjoint of :meth:`transform_output` (no bias, ReLU or pool): grad_out
        (n, OH, OW, F) -> gM (36, n*TH*TW, F), in this block's ``products`` buffer."""
        geo, n, M = self.geo, grad_out.shape[0], self.geo.m
        outputs = self.view("outputs", n, geo.TH, geo.TW, geo.F)  # zeros past the edges
        for a in range(M):
            for b in range(M):
                rows, cols = phase_count(geo.OH, a, M), phase_count(geo.OW, b, M)
                outputs[M * a + b, :, :rows, :cols] = grad_out[:, a::M, b::M]
        products = self.view("products", n, geo.tiles * geo.F).reshape(36, -1)
        np.matmul(self.at2.T, outputs.reshape(M * M, -1), out=products)
        return products.reshape(36, n * geo.tiles, geo.F)

    def input_grad(self, grad_v: Array, grad_x: Array) -> None:
        """The adjoint of :meth:`transform_input`: gV (36, n*TH*TW, C) -> grad_x (n, H, W, C);
        overlapping tiles add up."""
        geo, n, M = self.geo, grad_x.shape[0], self.geo.m
        TH, TW, C, WQ = geo.TH, geo.TW, geo.C, self.wq
        bt_adjoint = self.bt.T
        tiles = self.view("tiles", n, TH, TW, C)
        np.matmul(bt_adjoint, grad_v.reshape(TILE, TILE, -1), out=tiles.reshape(TILE, TILE, -1))
        combined = self.view("combined_rows", n, TH, WQ, C)
        for i in range(TILE):  # tile row i's columns j, j + m, ... back onto its padded row
            _add_overlapping(tiles[i], combined[i], axis=2, step=M)
        rows = self.view("rows", n, TH, WQ, C)
        np.matmul(bt_adjoint, combined.reshape(TILE, -1), out=rows.reshape(TILE, -1))
        padded = self.view("grad_padded", n, self.hq, WQ, C)
        _add_overlapping(rows, padded, axis=1, step=M)
        PT, _, PL, _ = geo.padding
        grad_x[...] = padded[:, PT : PT + geo.H, PL : PL + geo.W]


def _add_overlapping(parts: Array, target: Array, axis: int, step: int) -> None:
    """The adjoint of gathering every tile's offsets: ``parts[k]`` (6 offsets k, each with T
    tiles along ``axis``) into ``target`` (step T + 6 - step positions along ``axis``) at
    step t + k, added where tiles overlap."""
    count = parts.shape[axis + 1]

    def at(start, stop=None, stride=None):
        return target[(slice(None),) * axis + (slice(start, stop, stride),)]

    # offsets 0 .. step - 1 cover every position but the last 6 - step: set them, zero
    # those, add the others
    for k in range(step):
        np.copyto(at(k, step * count, step), parts[k])
    at(step * count)[...] = 0.0
    for k in range(step, TILE):
        at(k, k + step * count, step)[...] += parts[k]


# the algorithm as the shared drivers take it
ALGORITHM = Algorithm(_geometry, _Block, _G, TransformedInput)


def forward(x: Array, weight: Array, bias: Array, padding, relu: bool = False,
            training: bool = True, pool: bool = False):  # fmt: skip
    """``conv2d(x)`` (+ bias, then ReLU if ``relu``) for a convolution :func:`applies` takes.

    x (N, H, W, C), weight (F, C, 5, 5), bias (F,), padding (PT, PB, PL, PR) ->
    ``(out (N, OH, OW, F), TransformedInput or None)``, as :func:`._winograd.run_forward`.
    """
    return run_forward(ALGORITHM, x, weight, bias, padding, relu, training, pool)


def backward(grad_out: Array, saved: TransformedInput, weight: Array, need_input_grad: bool = True,
             relu_out: Array | None = None):  # fmt: skip
    """Gradients of :func:`forward`, as :func:`._winograd.run_backward`."""
    return run_backward(ALGORITHM, grad_out, saved, weight, need_input_grad, relu_out)
