"""NumPy only: 3x3 stride-1 convolutions by Winograd's F(4x4, 3x3).

F(2x2, 3x3) (:mod:`._winograd`) spends 16 multiply-adds per 2x2 outputs; F(4x4, 3x3) computes a
4x4 block of outputs from a 6x6 input tile with 36, that is 2.25 per (output pixel, channel,
filter) instead of 4 (and 9 for im2col + GEMM): the 36 GEMMs (tiles, C) x (C, F) do 44 % less
work on a quarter as many tiles. Its tiles have the 6x6 shape of F(2x2, 5x5), so the same block
of buffers and transforms serves both (:class:`._winograd_5x5._Block`, its ``m`` = 4 outputs per
tile side); the matrices come from :func:`._winograd_5x5.toom_cook` at the points 0, 1, -1, 2,
-2 and infinity. The price is rounding: ``G`` divides by up to 24 and ``B^T`` multiplies by up
to 5, so float32 outputs and gradients agree with the direct convolution to 3-6e-6 of their
largest value (F(2x2, 3x3): 3-5e-7), as F(2x2, 5x5)'s do; float64 to ~1e-13.

Training keeps the transformed input V: 36 values per 16 outputs, 2.25x the input (F(2x2, 3x3):
4x). Shapes: x (N, H, W, C) channels-last, weight (F, C, 3, 3); TH = ceil(OH / 4) by TW =
ceil(OW / 4) tiles per image on the input padded to 4 TH + 2 by 4 TW + 2.
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend import Array
from . import _winograd
from ._winograd import Algorithm, Geometry, run_backward, run_forward
from ._winograd_5x5 import MATRICES, _Block

# It takes the convolutions F(2x2, 3x3) would take whose outputs its 4x4 tiles cover with at
# most this share computed in vain (16 TH TW <= MAX_SPARE OH OW): 12, 15, 16, 28 or 32 outputs
# a side, not 13 or 14 (a 16x16 computation for 14x14: 31 % more). Measured (one layer's
# conv + ReLU, AMD EPYC, 2 threads, medians of 9 alternating runs; F(4x4) against F(2x2)):
# training, batch 128: 28x28x32 -> 32 1.20x, 16x16x32 -> 64 1.15x, 16x16x64 -> 64 1.08x,
# 12x12x64 -> 64 1.15x, 32x32x32 -> 32 0.97x, 14x14x32 -> 32 0.91x; batch 32: 32x32x32 1.04x,
# 16x16x64 0.90x, 14x14x32 0.81x; inference at 1000, pooled 2x2 after the ReLU: 1.12-1.31x,
# plain 1.10-1.25x. Whole networks (training step, batch 32 / 128 / 512; predict at 1000):
# `vgg` 1.06x / 1.13x / 1.24x, 1.12x; `vgg_bn` 1.00x / 1.21x, 1.14x.
MAX_SPARE = 1.15
# A block's largest buffer (36 tile positions x max(C, F) per tile); that of F(2x2, 5x5)
BLOCK_BYTES = 4 << 20

_G = MATRICES[4, 3][1]  # (6, 3)


class TransformedInput(NamedTuple):
    """What :func:`backward` needs: V (6, 6, N, TH, TW, C), the input's shape and padding."""

    v: Array
    x_shape: tuple[int, int, int, int]
    padding: tuple[int, int, int, int]


def _geometry(x_shape, filters: int, padding) -> Geometry:
    return Geometry.of(x_shape, filters, padding, 3, BLOCK_BYTES, m=4)  # the current BLOCK_BYTES


def applies(x: Array, weight: Array, bias: Array | None, stride, padding) -> bool:
    """Whether :func:`forward` takes this convolution: one :func:`._winograd.applies` takes,
    whose outputs the 4x4 tiles cover with at most :data:`MAX_SPARE` to spare."""
    if not _winograd.applies(x, weight, bias, stride, padding):
        return False
    geo = _geometry(x.shape, weight.shape[0], padding)
    return 16 * geo.tiles <= MAX_SPARE * geo.OH * geo.OW


# the algorithm as the shared drivers take it
ALGORITHM = Algorithm(_geometry, _Block, _G, TransformedInput)


def forward(x: Array, weight: Array, bias: Array, padding, relu: bool = False,
            training: bool = True, pool: bool = False):  # fmt: skip
    """``conv2d(x)`` (+ bias, then ReLU if ``relu``) for a convolution :func:`applies` takes.

    x (N, H, W, C), weight (F, C, 3, 3), bias (F,), padding (PT, PB, PL, PR) ->
    ``(out (N, OH, OW, F), TransformedInput or None)``, as :func:`._winograd.run_forward`.
    """
    return run_forward(ALGORITHM, x, weight, bias, padding, relu, training, pool)


def backward(grad_out: Array, saved: TransformedInput, weight: Array, need_input_grad: bool = True,
             relu_out: Array | None = None):  # fmt: skip
    """Gradients of :func:`forward`, as :func:`._winograd.run_backward`."""
    return run_backward(ALGORITHM, grad_out, saved, weight, need_input_grad, relu_out)
