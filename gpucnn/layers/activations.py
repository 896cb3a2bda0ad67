"""Element-wise activations: LeakyReLU, SiLU, GELU, Sigmoid and Tanh.

Each is a parameter-free :class:`Elementwise` layer over the paired functions of
:mod:`gpucnn.functional.activations`: any per-sample shape in, the same shape out, so they
follow a ``Conv2D`` (N, H, W, C) or a ``Dense`` (N, D) alike. (``ReLU`` lives in
:mod:`gpucnn.layers.core`, where the fused steps find it.)
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import Array
from ..functional.activations import (
    GELU_APPROXIMATIONS,
    gelu_backward,
    gelu_forward,
    leaky_relu_backward,
    leaky_relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    silu_backward,
    silu_forward,
    tanh_backward,
    tanh_forward,
)
from .base import LAYERS, Layer


class Elementwise(Layer):
    """A parameter-free element-wise layer: input (N, ...) -> output of the same shape.

    A subclass implements ``_forward(x) -> (out, cache)`` and ``_backward(grad_out, cache)``
    (the cache is kept in training only) and ``onnx_nodes``; arguments it takes go to
    ``get_config`` as for any layer.
    """

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        out, cache = self._forward(x)
        self._cache = cache if training else None
        return out

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        if self._cache is None:
            raise self.error("backward needs a forward pass with training=True first")
        return self._backward(grad_out, self._cache)

    def _forward(self, x: Array) -> tuple[Array, Any]:
        raise NotImplementedError

    def _backward(self, grad_out: Array, cache: Any) -> Array:
        raise NotImplementedError


@LAYERS.register("LeakyReLU")
class LeakyReLU(Elementwise):
    """``x`` where ``x > 0``, else ``negative_slope * x``. ONNX: LeakyRelu.

    Parameters
    ----------
    negative_slope : the slope below zero, a finite number (PyTorch's default 0.01).

    Input (N, ...) -> output of the same shape; no parameters.
    """

    def __init__(self, negative_slope: float = 0.01, name: str | None = None):
        super().__init__(name)
        if (
            isinstance(negative_slope, bool)
            or not isinstance(negative_slope, (int, float))
            or not math.isfinite(negative_slope)
        ):
            raise ValueError(
                f"LeakyReLU: expected negative_slope as a finite number; received {negative_slope!r}"
            )
        self.negative_slope = float(negative_slope)

    def _forward(self, x: Array) -> tuple[Array, Array]:
        return leaky_relu_forward(x, self.negative_slope), x

    def _backward(self, grad_out: Array, x: Array) -> Array:
        return leaky_relu_backward(grad_out, x, self.negative_slope)

    def onnx_nodes(self, graph: Any) -> None:
        graph.node("LeakyRelu", self, [], alpha=self.negative_slope)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "negative_slope": self.negative_slope}


@LAYERS.register("Sigmoid")
class Sigmoid(Elementwise):
    """Logistic sigmoid ``1 / (1 + exp(-x))``, overflow-free. ONNX: Sigmoid.

    Input (N, ...) -> output of the same shape; no parameters.
    """

    def _forward(self, x: Array) -> tuple[Array, Array]:
        out = sigmoid_forward(x)
        return out, out

    def _backward(self, grad_out: Array, out: Array) -> Array:
        return sigmoid_backward(grad_out, out)

    def onnx_nodes(self, graph: Any) -> None:
        graph.node("Sigmoid", self, [])


@LAYERS.register("Tanh")
class Tanh(Elementwise):
    """Hyperbolic tangent. ONNX: Tanh.

    Input (N, ...) -> output of the same shape; no parameters.
    """

    def _forward(self, x: Array) -> tuple[Array, Array]:
        out = tanh_forward(x)
        return out, out

    def _backward(self, grad_out: Array, out: Array) -> Array:
        return tanh_backward(grad_out, out)

    def onnx_nodes(self, graph: Any) -> None:
        graph.node("Tanh", self, [])


@LAYERS.register("SiLU")
class SiLU(Elementwise):
    """SiLU (swish) ``x * sigmoid(x)``. ONNX (opset 17 has no SiLU): Sigmoid, then Mul by ``x``.

    Input (N, ...) -> output of the same shape; no parameters.
    """

    def _forward(self, x: Array) -> tuple[Array, tuple[Array, Array]]:
        out, sig = silu_forward(x)
        return out, (x, sig)

    def _backward(self, grad_out: Array, cache: tuple[Array, Array]) -> Array:
        return silu_backward(grad_out, *cache)

    def onnx_nodes(self, graph: Any) -> None:
        x = graph.current
        graph.node("Sigmoid", self, [], output=f"{self.path}/sigmoid")
        graph.node("Mul", self, [x])


@LAYERS.register("GELU")
class GELU(Elementwise):
    """Gaussian error linear unit ``x * Phi(x)``, ``Phi`` the standard normal distribution
    function.

    Parameters
    ----------
    approximate : ``"none"`` (default): the exact ``Phi(x) = (1 + erf(x / sqrt(2))) / 2``, as
        PyTorch's default; ``"tanh"``: ``(1 + tanh(sqrt(2 / pi) * (x + 0.044715 x**3))) / 2``,
        as PyTorch's ``approximate="tanh"``.

    Input (N, ...) -> output of the same shape; no parameters. ONNX (opset 17 has no Gelu):
    composed of Mul, Erf (or Tanh) and Add nodes with scalar constants.
    """

    def __init__(self, approximate: str = "none", name: str | None = None):
        super().__init__(name)
        if approximate not in GELU_APPROXIMATIONS:
            raise ValueError(
                f"GELU: expected approximate in {GELU_APPROXIMATIONS}; received {approximate!r}"
            )
        self.approximate = approximate

    def _forward(self, x: Array) -> tuple[Array, tuple[Array, Array]]:
        out, aux = gelu_forward(x, self.approximate)
        return out, (x, aux)

    def _backward(self, grad_out: Array, cache: tuple[Array, Array]) -> Array:
        x, aux = cache
        return gelu_backward(grad_out, x, aux, self.approximate)

    def onnx_nodes(self, graph: Any) -> None:
        x, path = graph.current, self.path
        if self.approximate == "none":  # Phi(x) * 2 = 1 + erf(x / sqrt(2))
            graph.node("Mul", self, [graph.constant(self, "sqrt_half", math.sqrt(0.5))],
                       output=f"{path}/scaled")  # fmt: skip
            graph.node("Erf", self, [], output=f"{path}/erf")
        else:  # Phi(x) * 2 ~ 1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))
            graph.node("Mul", self, [x], output=f"{path}/square")
            graph.node("Mul", self, [x], output=f"{path}/cube")
            graph.node("Mul", self, [graph.constant(self, "cubic", 0.044715)],
                       output=f"{path}/cubic_term")  # fmt: skip
            graph.node("Add", self, [x], output=f"{path}/inner")
            graph.node("Mul", self, [graph.constant(self, "scale", math.sqrt(2.0 / math.pi))],
                       output=f"{path}/scaled")  # fmt: skip
            graph.node("Tanh", self, [], output=f"{path}/tanh")
        graph.node("Add", self, [graph.constant(self, "one", 1.0)], output=f"{path}/two_phi")
        graph.node("Mul", self, [x], output=f"{path}/two_gelu")
        graph.node("Mul", self, [graph.constant(self, "half", 0.5)])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "approximate": self.approximate}


__all__ = ["Elementwise", "GELU", "LeakyReLU", "SiLU", "Sigmoid", "Tanh"]
