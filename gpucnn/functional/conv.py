"""2-D convolution (cross-correlation, as in every deep-learning library) by im2col + GEMM.

Shape symbols are defined in :mod:`gpucnn.functional.im2col`; images are channels-last.
The weight keeps the public layout (F, C, KH, KW); it is rearranged to the GEMM's
(KH*KW*C, F) on each call, which costs F*C*KH*KW element moves, nothing beside the GEMM.
"""

from __future__ import annotations

from ..backend import Array, namespace
from .im2col import Padding, Pair, col2im, im2col, pad2d, unpad2d


def _weight_matrix(weight: Array) -> Array:
    """(F, C, KH, KW) -> (KH*KW*C, F), matching the column order of im2col."""
    xp = namespace(weight)
    F, C, KH, KW = weight.shape
    return xp.reshape(xp.permute_dims(weight, (2, 3, 1, 0)), (KH * KW * C, F))


def conv2d_forward(
    x: Array, weight: Array, bias: Array, stride: Pair, padding: Padding
) -> tuple[Array, Array]:
    """Convolve a batch of images with F filters.

    Parameters
    ----------
    x : array of shape (N, H, W, C)
    weight : array of shape (F, C, KH, KW)
    bias : array of shape (F,)
    stride : (SH, SW)
    padding : (PT, PB, PL, PR) zeros added around each image

    Returns
    -------
    out : array of shape (N, OH, OW, F)
    cols : array of shape (N, OH, OW, KH, KW, C), the im2col matrix that
        :func:`conv2d_backward` needs for the weight gradient.
    """
    xp = namespace(x, weight, bias)
    F, C, KH, KW = weight.shape
    cols = im2col(pad2d(x, padding), (KH, KW), stride)
    N, OH, OW = cols.shape[:3]
    out = xp.matmul(xp.reshape(cols, (N * OH * OW, KH * KW * C)), _weight_matrix(weight))
    out += bias
    return xp.reshape(out, (N, OH, OW, F)), cols


def conv2d_backward(
    grad_out: Array,
    cols: Array,
    weight: Array,
    x_shape: tuple[int, int, int, int],
    stride: Pair,
    padding: Padding,
    need_input_grad: bool = True,
) -> tuple[Array | None, Array, Array]:
    """Gradients of :func:`conv2d_forward`.

    Parameters
    ----------
    grad_out : array of shape (N, OH, OW, F), d(loss)/d(out)
    cols : the (N, OH, OW, KH, KW, C) array returned by the forward pass
    weight : array of shape (F, C, KH, KW)
    x_shape : (N, H, W, C) of the unpadded input
    stride, padding : as in the forward pass
    need_input_grad : False skips the input gradient (the first layer does not need it)

    Returns
    -------
    grad_x : array of shape (N, H, W, C), or None when ``need_input_grad`` is False
    grad_weight : array of shape (F, C, KH, KW)
    grad_bias : array of shape (F,)
    """
    xp = namespace(grad_out, cols, weight)
    N, OH, OW, KH, KW, C = cols.shape
    F = weight.shape[0]
    g = xp.reshape(grad_out, (N * OH * OW, F))
    cols_2d = xp.reshape(cols, (N * OH * OW, KH * KW * C))
    grad_w_mat = xp.matmul(xp.matrix_transpose(cols_2d), g)
    grad_weight = xp.permute_dims(xp.reshape(grad_w_mat, (KH, KW, C, F)), (3, 2, 0, 1))
    grad_bias = xp.sum(g, axis=0)
    if not need_input_grad:
        return None, grad_weight, grad_bias
    # One (F, C) matrix per kernel offset: the batched product lands offset-major,
    # (KH*KW, N*OH*OW, C), the layout in which col2im's slice-adds read contiguous memory.
    w_per_offset = xp.reshape(xp.permute_dims(weight, (2, 3, 0, 1)), (KH * KW, F, C))
    grad_cols = xp.matmul(g, w_per_offset)
    PT, PB, PL, PR = padding
    _, H, W, _ = x_shape
    padded_shape = (N, PT + H + PB, PL + W + PR, C)
    grad_padded = col2im(xp.reshape(grad_cols, (KH, KW, N, OH, OW, C)), padded_shape, stride)
    return unpad2d(grad_padded, padding), grad_weight, grad_bias
