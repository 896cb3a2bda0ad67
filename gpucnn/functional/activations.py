"""Element-wise activations and dropout. Shapes are preserved: any (N, ...) array."""

from __future__ import annotations

from ..backend import Array, namespace
from ._dispatch import cuda_kernels
from ._numpy_kernels import relu_backward_fast, relu_forward_fast


def relu_forward(x: Array) -> Array:
    """``max(x, 0)`` element-wise."""
    fast = relu_forward_fast(x)
    return fast if fast is not None else namespace(x).maximum(x, 0.0)


def relu_backward(grad_out: Array, out: Array) -> Array:
    """Pass the gradient where the forward output was positive (the subgradient at 0 is 0)."""
    xp = namespace(grad_out, out)
    cuda = cuda_kernels(xp)
    fused = cuda.relu_backward(grad_out, out) if cuda else relu_backward_fast(grad_out, out)
    if fused is not None:
        return fused
    # multiplying by a 0/1 mask is several times faster than where() on NumPy (measured)
    return grad_out * xp.astype(out > 0, grad_out.dtype)


def dropout_forward(x: Array, rate: float, uniform: Array) -> tuple[Array, Array]:
    """Inverted dropout: zero each element with probability ``rate``, scale the rest.

    Parameters
    ----------
    x : array of any shape
    rate : drop probability in [0, 1)
    uniform : array of ``x.shape`` with samples from U[0, 1) (drawn by the caller, which owns
        the random state)

    Returns
    -------
    out : ``x * scale``
    scale : array of ``x.shape`` holding 0 or ``1 / (1 - rate)``, reused by the backward pass
    """
    xp = namespace(x, uniform)
    scale = xp.astype(uniform >= rate, x.dtype) * (1.0 / (1.0 - rate))
    return x * scale, scale


def dropout_backward(grad_out: Array, scale: Array) -> Array:
    """Gradient of :func:`dropout_forward`: the same scale applied to the gradient."""
    return grad_out * scale
