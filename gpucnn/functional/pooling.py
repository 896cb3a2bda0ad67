"""Max and average pooling over KH x KW windows with stride (SH, SW), no padding.

Shape symbols are defined in :mod:`gpucnn.functional.im2col`; images are channels-last.
Windows may overlap (stride < window). Trailing rows/columns that no full window covers are
ignored (floor rule), as in PyTorch and Keras.
"""

from __future__ import annotations

from ..backend import Array, namespace
from ..resources import check_arrays
from ._dispatch import cuda_kernels
from ._numpy_kernels import max_pool_backward_fast, max_pool_forward_fast
from .activations import relu_backward, relu_forward
from .im2col import Pair, output_size, window_slice


def _window_indices(x: Array, pool: Pair, stride: Pair):
    """Yield the strided index of every kernel offset, in row-major window order."""
    _, H, W, _ = x.shape
    KH, KW = pool
    SH, SW = stride
    OH, OW = output_size(H, KH, SH), output_size(W, KW, SW)
    for i in range(KH):
        for j in range(KW):
            yield (slice(None), window_slice(i, SH, OH), window_slice(j, SW, OW), slice(None))


def max_pool2d_forward(x: Array, pool: Pair, stride: Pair, relu: bool = False) -> Array:
    """Maximum over each window, optionally followed by ReLU.

    Parameters
    ----------
    x : array of shape (N, H, W, C)
    pool, stride : (KH, KW) and (SH, SW)
    relu : return ``relu(maxpool(x))``, which equals ``maxpool(relu(x))`` (max is monotone)
        at a quarter of the ReLU work for 2x2 windows; pass the same flag to the backward.

    Returns
    -------
    out : array of shape (N, OH, OW, C)
    """
    xp = namespace(x)
    cuda = cuda_kernels(xp)
    out = (
        cuda.max_pool(x, pool, stride, relu)
        if cuda
        else max_pool_forward_fast(x, pool, stride, relu)
    )
    if out is not None:
        return out
    out = _max_over_windows(xp, x, pool, stride)
    return relu_forward(out) if relu else out


def _max_over_windows(xp, x: Array, pool: Pair, stride: Pair) -> Array:
    indices = list(_window_indices(x, pool, stride))
    if len(indices) == 1:  # a 1x1 window: a strided copy
        return xp.asarray(x[indices[0]], copy=True)
    out = xp.maximum(x[indices[0]], x[indices[1]])
    for index in indices[2:]:
        out = xp.maximum(out, x[index])
    return out


def max_pool2d_backward(
    grad_out: Array, x: Array, out: Array, pool: Pair, stride: Pair, relu: bool = False
) -> Array:
    """Route each output gradient to exactly one input: its window's first maximum.

    Parameters
    ----------
    grad_out : array of shape (N, OH, OW, C)
    x, out : the forward pass's input (N, H, W, C) and output (N, OH, OW, C)
    pool, stride, relu : as in the forward pass. With ``relu`` the windows whose output is
        not positive pass no gradient; the others route it to their maximum, which equals
        ``out`` there.

    Returns
    -------
    grad_x : array of shape (N, H, W, C). Where a window holds several equal maxima only the
        first in row-major order receives the gradient, so the gradient's total is preserved.
    """
    cuda = cuda_kernels(namespace(grad_out, x, out))
    fast = cuda.max_pool_backward(grad_out, x, out, pool, stride, relu) if cuda else None
    if fast is not None:
        return fast
    if relu:
        grad_out = relu_backward(grad_out, out)
    fast = max_pool_backward_fast(grad_out, x, out, pool, stride)
    if fast is not None:
        return fast
    xp = namespace(grad_out, x, out)
    check_arrays(f"the max-pool gradient of {x.shape[0]} images", (x.shape, grad_out.dtype), xp=xp)
    grad_x = xp.zeros(x.shape, dtype=grad_out.dtype)
    overlapping = stride[0] < pool[0] or stride[1] < pool[1]
    taken = None  # windows whose maximum was already found at an earlier offset
    for index in _window_indices(x, pool, stride):
        hit = x[index] == out
        if taken is None:
            taken = hit
        else:
            hit = xp.logical_and(hit, xp.logical_not(taken))
            taken = xp.logical_or(taken, hit)
        routed = grad_out * xp.astype(hit, grad_out.dtype)  # faster than where() on NumPy
        if overlapping:
            grad_x[index] += routed
        else:  # each input belongs to one window only: assignment suffices
            grad_x[index] = routed
    return grad_x


def avg_pool2d_forward(x: Array, pool: Pair, stride: Pair) -> Array:
    """Mean over each window: (N, H, W, C) -> (N, OH, OW, C)."""
    xp = namespace(x)
    total = None
    for index in _window_indices(x, pool, stride):
        total = xp.asarray(x[index], copy=True) if total is None else total + x[index]
    return total / (pool[0] * pool[1])


def avg_pool2d_backward(
    grad_out: Array, x_shape: tuple[int, ...], pool: Pair, stride: Pair
) -> Array:
    """Spread each output gradient evenly over its window: returns (N, H, W, C)."""
    xp = namespace(grad_out)
    check_arrays(f"the pool gradient of {x_shape[0]} images", (x_shape, grad_out.dtype), xp=xp)
    grad_x = xp.zeros(x_shape, dtype=grad_out.dtype)
    share = grad_out / (pool[0] * pool[1])
    for index in _window_indices(grad_x, pool, stride):
        grad_x[index] += share
    return grad_x


def global_avg_pool2d_forward(x: Array) -> Array:
    """Mean over each channel's whole image: (N, H, W, C) -> (N, C)."""
    return namespace(x).mean(x, axis=(1, 2))


def global_avg_pool2d_backward(grad_out: Array, x_shape: tuple[int, ...]) -> Array:
    """Spread each channel's gradient evenly over its image: (N, C) -> (N, H, W, C)."""
    xp = namespace(grad_out)
    N, H, W, C = x_shape
    share = xp.reshape(grad_out / (H * W), (N, 1, 1, C))
    # a fresh array, not a broadcast view: callers may write into the gradient they get
    return xp.asarray(xp.broadcast_to(share, (N, H, W, C)), copy=True)
