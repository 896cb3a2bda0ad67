"""Dense, ReLU, Flatten and Dropout."""

from __future__ import annotations

import math
from typing import Any

from ..backend import Array, namespace
from ..functional.activations import dropout_backward, dropout_forward, relu_backward, relu_forward
from ..functional.dense import dense_backward, dense_forward
from ..validation import check_float, check_int
from .base import LAYERS, BuildContext, Layer, Shape, public_shape


@LAYERS.register("Dense")
class Dense(Layer):
    """Fully connected layer ``x @ weight + bias``.

    Parameters
    ----------
    units : O, the number of outputs.

    Attributes
    ----------
    weight : Parameter of shape (D, O) (in_features, out_features), He-normal initialised,
        weight-decayed.
    bias : Parameter of shape (O,), zeros.

    Notes
    -----
    Input (N, D) -> output (N, O).
    """

    def __init__(self, units: int, name: str | None = None):
        super().__init__(name)
        self.units = check_int("units", units, 1, owner="Dense")

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        if len(input_shape) != 1:
            raise self.error(
                f"expected a flat input of shape (features,); received per-sample shape "
                f"{public_shape(input_shape)} (add Flatten() before Dense)"
            )
        (D,) = input_shape
        weight = context.random.normal((D, self.units), math.sqrt(2.0 / D), context.dtype)
        self.weight = self.add_parameter("weight", weight, decay=True)
        self.bias = self.add_parameter(
            "bias", context.xp.zeros((self.units,), dtype=context.dtype), decay=False
        )
        return (self.units,)

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        self._cache = x if training else None
        return dense_forward(x, self.weight.value, self.bias.value)

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        grad_x, grad_w, grad_b = dense_backward(
            grad_out, self._cache, self.weight.value, need_input_grad
        )
        self.weight.grad, self.bias.grad = grad_w, grad_b
        return grad_x

    def onnx_nodes(self, graph: Any) -> None:
        graph.node("Gemm", self, [graph.weight(self, "weight"), graph.weight(self, "bias")])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


@LAYERS.register("ReLU")
class ReLU(Layer):
    """Rectified linear unit ``max(x, 0)``; any shape in, same shape out."""

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        out = relu_forward(x)
        self._cache = out if training else None
        return out

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        return relu_backward(grad_out, self._cache)

    def onnx_nodes(self, graph: Any) -> None:
        graph.node("Relu", self, [])


@LAYERS.register("Flatten")
class Flatten(Layer):
    """Flatten each sample into features in the public ``(C, H, W)`` order.

    Input (N, H, W, C) (channels-last inside a model) -> output (N, C*H*W), ordered as an NCHW
    network (PyTorch, ONNX) orders them, so the weight of a following Dense loads unchanged
    there. Costs one small copy of the activations each way; a flat (N, D) input passes through.
    """

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        return (math.prod(input_shape),)

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        xp = namespace(x)
        if x.ndim == 4:
            x = xp.permute_dims(x, (0, 3, 1, 2))
        return xp.reshape(x, (x.shape[0], *self.output_shape))

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        xp = namespace(grad_out)
        if len(self.input_shape) != 3:
            return xp.reshape(grad_out, (grad_out.shape[0], *self.input_shape))
        H, W, C = self.input_shape
        grad = xp.reshape(grad_out, (grad_out.shape[0], C, H, W))
        return xp.permute_dims(grad, (0, 2, 3, 1))

    def onnx_nodes(self, graph: Any) -> None:
        if len(self.input_shape) == 3:  # a flat input passes through, as here
            graph.node("Flatten", self, [], axis=1)


@LAYERS.register("Dropout")
class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability ``rate`` and scale the
    rest by ``1 / (1 - rate)``; identity at inference. Any shape in, same shape out.

    Parameters
    ----------
    rate : drop probability in [0, 1).
    """

    uses_randomness = True

    def __init__(self, rate: float = 0.5, name: str | None = None):
        super().__init__(name)
        self.rate = check_float("rate", rate, 0, 1, high_open=True, owner="Dropout")

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        self.random = context.random
        self.dtype = context.dtype
        return input_shape

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        if not training or self.rate == 0.0:
            self._cache = None
            return x
        out, self._cache = dropout_forward(
            x, self.rate, self.random.uniform(tuple(x.shape), self.dtype)
        )
        return out

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        return grad_out if self._cache is None else dropout_backward(grad_out, self._cache)

    def onnx_nodes(self, graph: Any) -> None:
        """Identity at inference: no node."""

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate}
