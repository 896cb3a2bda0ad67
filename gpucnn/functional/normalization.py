"""Batch normalisation over every axis but the last (the channels, or the features).

Shapes: ``x`` is (N, H, W, C) (images, channels-last) or (N, D) (features); the statistics,
``weight`` and ``bias`` are (C,) (or (D,)). ``M`` below is the number of values each channel's
statistics are taken over: N*H*W for images, N for features.
"""

from __future__ import annotations

from ..backend import Array, namespace
from ._dispatch import cuda_kernels
from ._numpy_kernels import (
    batch_norm_apply_fast,
    batch_norm_grad_sums_fast,
    batch_norm_input_grad_fast,
    batch_norm_statistics_fast,
)


def _axes(x: Array) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def batch_norm_statistics(x: Array) -> tuple[Array, Array]:
    """Per-channel mean and biased variance of ``x``: two (C,) arrays.

    The variance is the mean of squared deviations (two passes: no cancellation as in
    E[x^2] - E[x]^2)."""
    fast = batch_norm_statistics_fast(x)
    if fast is not None:
        return fast
    xp = namespace(x)
    mean = xp.mean(x, axis=_axes(x))
    var = xp.mean((x - mean) ** 2, axis=_axes(x))
    return mean, var


def batch_norm_forward(
    x: Array, weight: Array, bias: Array, mean: Array, var: Array, eps: float, relu: bool = False
) -> tuple[Array, tuple[Array, Array, Array]]:
    """``(x - mean) / sqrt(var + eps) * weight + bias``, channel by channel; with ``relu``
    then ``max(., 0)`` (a BatchNorm followed by a ReLU, in one pass on NumPy).

    Parameters
    ----------
    x : (N, ..., C).
    weight, bias, mean, var : (C,). Training passes the batch's own statistics
        (:func:`batch_norm_statistics`); inference the running ones.
    eps : added to the variance.

    Returns
    -------
    out : array of ``x.shape``.
    cache : ``(x, mean, inv_std)`` with the (C,) ``1 / sqrt(var + eps)``, which
        :func:`batch_norm_backward` needs (for batch statistics).
    """
    xp = namespace(x)
    inv_std = 1.0 / xp.sqrt(var + eps)
    scale = weight * inv_std  # (C,): the fast paths compute x * scale + shift
    cuda = cuda_kernels(xp)
    apply = cuda.batch_norm_apply if cuda else batch_norm_apply_fast
    out = apply(x, scale, bias - mean * scale, relu)
    if out is None:
        out = (x - mean) * inv_std * weight + bias
        if relu:
            out = xp.maximum(out, 0.0)
    return out, (x, mean, inv_std)


def batch_norm_backward(
    grad_out: Array,
    cache: tuple[Array, Array, Array],
    weight: Array,
    need_input_grad: bool = True,
) -> tuple[Array | None, Array, Array]:
    """Gradients of :func:`batch_norm_forward` with the batch's own statistics (for a fused
    ReLU, pass the gradient through the ReLU's backward first).

    The mean and variance depend on every value of the channel, so the input gradient is
    ``inv_std * (g - mean(g) - x_hat * mean(g * x_hat))`` with ``g = grad_out * weight`` and
    means over the M values of the channel.

    Returns
    -------
    grad_x : (N, ..., C) or None; grad_weight, grad_bias : (C,).
    """
    grad_weight, grad_bias = batch_norm_parameter_grads(grad_out, cache)
    if not need_input_grad:
        return None, grad_weight, grad_bias
    count = 1
    for n in grad_out.shape[:-1]:
        count *= n
    grad_x = batch_norm_input_grad(grad_out, cache, weight, grad_bias / count, grad_weight / count)
    return grad_x, grad_weight, grad_bias


def batch_norm_parameter_grads(
    grad_out: Array, cache: tuple[Array, Array, Array]
) -> tuple[Array, Array]:
    """``(grad_weight, grad_bias)``, the (C,) sums of ``grad_out * x_hat`` and ``grad_out``."""
    x, mean, inv_std = cache
    fast = batch_norm_grad_sums_fast(grad_out, x, mean, inv_std)
    if fast is not None:
        return fast
    xp = namespace(grad_out)
    axes = _axes(grad_out)
    x_hat = (x - mean) * inv_std
    return xp.sum(grad_out * x_hat, axis=axes), xp.sum(grad_out, axis=axes)


def batch_norm_input_grad(
    grad_out: Array,
    cache: tuple[Array, Array, Array],
    weight: Array,
    mean_grad: Array,
    mean_grad_x_hat: Array,
) -> Array:
    """``inv_std * weight * (grad_out - mean_grad - x_hat * mean_grad_x_hat)``: the input
    gradient, given the channel means of ``grad_out`` and ``grad_out * x_hat`` (C,) over every
    value the statistics were taken over (this batch's, or the whole global batch's when the
    statistics were summed over processes)."""
    x, mean, inv_std = cache
    # as grad_out * a + (x - mean) * b + c per channel (x_hat * m = (x - mean) * inv_std * m)
    a = weight * inv_std
    cuda = cuda_kernels(namespace(grad_out))
    input_grad = cuda.batch_norm_input_grad if cuda else batch_norm_input_grad_fast
    fast = input_grad(grad_out, x, mean, a, -a * inv_std * mean_grad_x_hat, -a * mean_grad)
    if fast is not None:
        return fast
    x_hat = (x - mean) * inv_std
    return (grad_out - mean_grad - x_hat * mean_grad_x_hat) * (weight * inv_std)


def fold_batch_norm(
    weight: Array,
    bias: Array,
    norm_weight: Array,
    norm_bias: Array,
    mean: Array,
    var: Array,
    eps: float,
) -> tuple[Array, Array]:
    """A convolution's ``weight`` (F, C, KH, KW) and ``bias`` (F,) with the inference-mode
    BatchNorm that follows it folded in: ``conv(x, w', b') == batch_norm(conv(x, w, b))`` with
    ``w' = w * s`` per filter and ``b' = (b - mean) * s + norm_bias``, ``s = norm_weight /
    sqrt(var + eps)`` (all (F,)). One pass over the activations fewer at inference."""
    xp = namespace(weight)
    scale = norm_weight / xp.sqrt(var + eps)
    return weight * xp.reshape(scale, (-1, 1, 1, 1)), (bias - mean) * scale + norm_bias


__all__ = [
    "batch_norm_backward",
    "batch_norm_forward",
    "batch_norm_input_grad",
    "batch_norm_parameter_grads",
    "batch_norm_statistics",
    "fold_batch_norm",
]
