"""Fully connected (affine) layer math."""

from __future__ import annotations

from ..backend import Array, namespace
from ._dispatch import matmul


def dense_forward(x: Array, weight: Array, bias: Array) -> Array:
    """``x @ weight + bias``.

    Parameters
    ----------
    x : array of shape (N, D)
    weight : array of shape (D, O)
    bias : array of shape (O,)

    Returns
    -------
    out : array of shape (N, O)
    """
    xp = namespace(x, weight, bias)
    out = matmul(xp, x, weight)
    out += bias
    return out


def dense_backward(
    grad_out: Array, x: Array, weight: Array, need_input_grad: bool = True
) -> tuple[Array | None, Array, Array]:
    """Gradients of :func:`dense_forward`.

    Returns
    -------
    grad_x : array of shape (N, D), or None when ``need_input_grad`` is False
    grad_weight : array of shape (D, O)
    grad_bias : array of shape (O,)
    """
    xp = namespace(grad_out, x, weight)
    grad_weight = matmul(xp, xp.matrix_transpose(x), grad_out)
    grad_bias = xp.sum(grad_out, axis=0)
    grad_x = matmul(xp, grad_out, xp.matrix_transpose(weight)) if need_input_grad else None
    return grad_x, grad_weight, grad_bias
