"""2-D convolution (cross-correlation, as in every deep-learning library) by im2col + GEMM.

Shape symbols are defined in :mod:`gpucnn.functional.im2col`; images are channels-last.
The weight keeps the public layout (F, C, KH, KW); it is rearranged to the GEMM's
(KH*KW*C, F) on each call, which costs F*C*KH*KW element moves, nothing beside the GEMM.
"""

from __future__ import annotations

from ..backend import Array, namespace
from ..resources import check_arrays
from . import _winograd, _winograd_4x4, _winograd_5x5
from ._dispatch import cuda_kernels, matmul
from ._numpy_kernels import (
    conv2d_backward_fast,
    conv2d_forward_fast,
    conv_relu_max_pool_backward_fast,
    conv_relu_max_pool_forward_fast,
)
from .activations import relu_backward, relu_forward
from .im2col import Padding, Pair, col2im, im2col, output_size, pad2d, unpad2d
from .pooling import max_pool2d_backward, max_pool2d_forward

# NumPy's Winograd convolutions, 3x3 and 5x5 stride 1, each taken where it measured faster
# (the first that applies: F(4x4, 3x3) before F(2x2, 3x3))
WINOGRAD = (_winograd_4x4, _winograd, _winograd_5x5)


def _winograd_for(x: Array, weight: Array, bias: Array, stride: Pair, padding: Padding):
    """The Winograd module that takes this convolution, or None (im2col + GEMM)."""
    return next((w for w in WINOGRAD if w.applies(x, weight, bias, stride, padding)), None)


def _winograd_of(saved):
    """The Winograd module whose forward pass kept ``saved``, or None."""
    return next((w for w in WINOGRAD if isinstance(saved, w.TransformedInput)), None)


def _weight_matrix(weight: Array) -> Array:
    """(F, C, KH, KW) -> (KH*KW*C, F), matching the column order of im2col."""
    xp = namespace(weight)
    F, C, KH, KW = weight.shape
    return xp.reshape(xp.permute_dims(weight, (2, 3, 1, 0)), (KH * KW * C, F))


def conv2d_forward(
    x: Array, weight: Array, bias: Array, stride: Pair, padding: Padding, training: bool = True
) -> tuple[Array, Array | None]:
    """Convolve a batch of images with F filters.

    Parameters
    ----------
    x : array of shape (N, H, W, C)
    weight : array of shape (F, C, KH, KW)
    bias : array of shape (F,)
    stride : (SH, SW)
    padding : (PT, PB, PL, PR) zeros added around each image
    training : False: no backward pass follows; the second value may then be None

    Returns
    -------
    out : array of shape (N, OH, OW, F)
    cols : what :func:`conv2d_backward` needs: the im2col matrix with its ones column, of
        shape (N, OH, OW, L) (see :func:`gpucnn.functional.im2col.im2col`; L is KH*KW*C + 1,
        except on CUDA where zero columns align L to a multiple of 4), or, for the 3x3 and 5x5
        stride-1 convolutions NumPy computes by Winograd's algorithm (see
        :mod:`gpucnn.functional._winograd`, :mod:`gpucnn.functional._winograd_4x4` and
        :mod:`gpucnn.functional._winograd_5x5`), the transformed input (None without
        ``training``).
    """
    winograd = _winograd_for(x, weight, bias, stride, padding)
    if winograd:
        return winograd.forward(x, weight, bias, padding, training=training)
    split = conv2d_forward_fast(x, weight, bias, stride, padding, training=training)
    if split is not None:
        return split
    xp = namespace(x, weight, bias)
    F, C, KH, KW = weight.shape
    cuda = cuda_kernels(xp)
    cols = cuda.im2col(x, (KH, KW), stride, padding, bias_column=True) if cuda else None
    w_and_b = cuda.conv_weight_matrix(weight, bias, cols.shape[-1]) if cols is not None else None
    if w_and_b is None:
        N, H, W, _ = x.shape
        PT, PB, PL, PR = padding
        OH, OW = output_size(H, KH, stride[0], PT, PB), output_size(W, KW, stride[1], PL, PR)
        check_arrays(
            f"a convolution of {N} images (im2col rows and output)",
            ((N, OH, OW, KH * KW * C + 1), x.dtype),
            ((N, OH, OW, F), x.dtype),
            xp=xp,
        )
        cols = im2col(pad2d(x, padding), (KH, KW), stride, bias_column=True)
        w_and_b = xp.concat([_weight_matrix(weight), xp.expand_dims(bias, axis=0)], axis=0)
    N, OH, OW, L = cols.shape
    out = matmul(xp, xp.reshape(cols, (N * OH * OW, L)), w_and_b)
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
    cols : the (N, OH, OW, L) array returned by the forward pass
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
    winograd = _winograd_of(cols)
    if winograd:
        return winograd.backward(grad_out, cols, weight, need_input_grad)
    split = conv2d_backward_fast(grad_out, cols, weight, x_shape, stride, padding, need_input_grad)
    if split is not None:
        return split
    xp = namespace(grad_out, cols, weight)
    F, C, KH, KW = weight.shape
    N, OH, OW, L = cols.shape
    K = KH * KW * C
    g = xp.reshape(grad_out, (N * OH * OW, F))
    # one GEMM gives both: the ones column of cols turns row K into sum(g, axis=0)
    grad_wb = matmul(xp, xp.matrix_transpose(xp.reshape(cols, (N * OH * OW, L))), g)
    grad_weight = xp.permute_dims(xp.reshape(grad_wb[:K, :], (KH, KW, C, F)), (3, 2, 0, 1))
    grad_bias = grad_wb[K, :]
    if not need_input_grad:
        return None, grad_weight, grad_bias
    cuda = cuda_kernels(xp)
    w_matrix = cuda.conv_weight_matrix(weight, None, K) if cuda else None
    if w_matrix is not None:
        # one GEMM to pixel-major columns, then one kernel in which each input element
        # gathers its own contributions (no padded intermediate, no atomics)
        grad_cols = matmul(xp, g, xp.matrix_transpose(w_matrix))
        grad_x = cuda.col2im(grad_cols, x_shape, (KH, KW), stride, padding)
        if grad_x is not None:
            return grad_x, grad_weight, grad_bias
    # One (F, C) matrix per kernel offset: the batched product lands offset-major,
    # (KH*KW, N*OH*OW, C), the layout in which col2im's slice-adds read contiguous memory.
    w_per_offset = xp.reshape(xp.permute_dims(weight, (2, 3, 0, 1)), (KH * KW, F, C))
    check_arrays(
        f"the input gradient of a convolution of {N} images (one block per kernel offset)",
        ((KH * KW, N * OH * OW, C), grad_out.dtype),
        xp=xp,
    )
    grad_cols = xp.matmul(g, w_per_offset)
    PT, PB, PL, PR = padding
    _, H, W, _ = x_shape
    padded_shape = (N, PT + H + PB, PL + W + PR, C)
    grad_padded = col2im(xp.reshape(grad_cols, (KH, KW, N, OH, OW, C)), padded_shape, stride)
    return unpad2d(grad_padded, padding), grad_weight, grad_bias


def conv2d_relu_forward(
    x: Array, weight: Array, bias: Array, stride: Pair, padding: Padding, training: bool = True
) -> tuple[Array, Array | None]:
    """``relu(conv2d(x))``: on NumPy the ReLU runs on each thread's GEMM output in place,
    while it is still in cache, instead of as one more pass over the whole output.

    Parameters and returns as :func:`conv2d_forward`; ``out`` is non-negative.
    """
    winograd = _winograd_for(x, weight, bias, stride, padding)
    if winograd:
        return winograd.forward(x, weight, bias, padding, relu=True, training=training)
    fast = conv2d_forward_fast(x, weight, bias, stride, padding, relu=True, training=training)
    if fast is not None:
        return fast
    out, cols = conv2d_forward(x, weight, bias, stride, padding)
    return relu_forward(out), cols


def conv2d_relu_backward(
    grad_out: Array,
    out: Array,
    cols: Array,
    weight: Array,
    x_shape: tuple[int, int, int, int],
    stride: Pair,
    padding: Padding,
    need_input_grad: bool = True,
) -> tuple[Array | None, Array, Array]:
    """Gradients of :func:`conv2d_relu_forward`: ``grad_out`` (N, OH, OW, F) passes where
    ``out`` (its output) is positive, then as :func:`conv2d_backward` (on NumPy each thread
    masks its own images, without a whole masked copy in between)."""
    winograd = _winograd_of(cols)
    if winograd:
        return winograd.backward(grad_out, cols, weight, need_input_grad, relu_out=out)
    fast = conv2d_backward_fast(
        grad_out, cols, weight, x_shape, stride, padding, need_input_grad, relu_out=out
    )
    if fast is not None:
        return fast
    grad_conv = relu_backward(grad_out, out)
    return conv2d_backward(grad_conv, cols, weight, x_shape, stride, padding, need_input_grad)


def conv2d_relu_max_pool2d_forward(
    x: Array,
    weight: Array,
    bias: Array,
    stride: Pair,
    padding: Padding,
    pool: Pair,
    training: bool = True,
) -> tuple[Array, tuple | None]:
    """``relu(max_pool2d(conv2d(x)))`` with non-overlapping pooling windows (stride = window).

    Parameters
    ----------
    x, weight, bias, stride, padding : as in :func:`conv2d_forward`
    pool : (PKH, PKW), the pooling window and its stride
    training : keep what the backward pass needs (False: inference, the cache is None)

    Returns
    -------
    out : array of shape (N, PH, PW, F) with PH = OH // PKH, PW = OW // PKW
    cache : what :func:`conv2d_relu_max_pool2d_backward` needs; its content depends on the
        path taken (on NumPy a pool-aware path that evaluates the convolution only where a
        window looks, see :func:`gpucnn.functional._numpy_kernels.conv_relu_max_pool_forward_fast`).
    """
    # a convolution Winograd's algorithm takes is faster whole, then pooled, than pool-aware;
    # at inference its 2x2 output tiles are the 2x2 pooling windows, pooled as they are made
    winograd = _winograd_for(x, weight, bias, stride, padding)
    if winograd and not training and tuple(pool) == (2, 2):
        pooled, _ = winograd.forward(x, weight, bias, padding, relu=True, training=False, pool=True)
        return pooled, None
    fast = (
        None if winograd
        else conv_relu_max_pool_forward_fast(x, weight, bias, stride, padding, pool, training)
    )  # fmt: skip
    if fast is not None:
        out, cache = fast
        return out, (("phases", cache) if training else None)
    conv_out, cols = conv2d_forward(x, weight, bias, stride, padding, training)
    out = max_pool2d_forward(conv_out, pool, pool, relu=True)
    return out, (("layers", (cols, conv_out, out)) if training else None)


def conv2d_relu_max_pool2d_backward(
    grad_out: Array,
    cache: tuple,
    weight: Array,
    x_shape: tuple[int, int, int, int],
    stride: Pair,
    padding: Padding,
    pool: Pair,
    need_input_grad: bool = True,
) -> tuple[Array | None, Array, Array]:
    """Gradients of :func:`conv2d_relu_max_pool2d_forward`.

    ``grad_out`` has shape (N, PH, PW, F); the other arguments are those of the forward pass
    and its ``cache``. Returns ``(grad_x, grad_weight, grad_bias)`` as :func:`conv2d_backward`.
    """
    kind, saved = cache
    if kind == "phases":
        return conv_relu_max_pool_backward_fast(
            grad_out, saved, weight, x_shape, stride, padding, pool, need_input_grad
        )
    cols, conv_out, out = saved
    grad_conv = max_pool2d_backward(grad_out, conv_out, out, pool, pool, relu=True)
    return conv2d_backward(grad_conv, cols, weight, x_shape, stride, padding, need_input_grad)
