"""MaxPool2D, AvgPool2D and GlobalAvgPool2D: parameter-free layers over
:mod:`gpucnn.functional.pooling`."""

from __future__ import annotations

from typing import Any

from ..backend import Array
from ..functional.im2col import as_pair, output_size
from ..functional.pooling import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from .base import LAYERS, BuildContext, Layer, Shape, public_shape


class _Pool2D(Layer):
    """Shared geometry: window (KH, KW), stride (SH, SW) defaulting to the window, no padding."""

    def __init__(
        self,
        pool_size: int | tuple[int, int] = 2,
        stride: int | tuple[int, int] | None = None,
        name: str | None = None,
    ):
        super().__init__(name)
        kind = type(self).__name__
        self.pool_size = as_pair(pool_size, f"{kind} pool_size")
        self.stride = self.pool_size if stride is None else as_pair(stride, f"{kind} stride")

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        if len(input_shape) != 3:
            raise self.error(
                f"expected an image input of shape (C, H, W); received per-sample shape {input_shape}"
            )
        H, W, C = input_shape
        OH = output_size(H, self.pool_size[0], self.stride[0])
        OW = output_size(W, self.pool_size[1], self.stride[1])
        if OH < 1 or OW < 1:
            raise self.error(
                f"window {self.pool_size} does not fit: expected an input height and width of "
                f"at least {self.pool_size}; received input shape {public_shape(input_shape)}"
            )
        return (OH, OW, C)

    onnx_op = ""  # the ONNX pooling operator
    onnx_attributes: dict[str, Any] = {}

    def onnx_nodes(self, graph: Any) -> None:
        """An ONNX pooling node with this window and stride, no padding, floor rounding."""
        graph.node(
            self.onnx_op, self, [],
            kernel_shape=list(self.pool_size), strides=list(self.stride),
            pads=[0, 0, 0, 0], ceil_mode=0, **self.onnx_attributes,
        )  # fmt: skip

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "stride": list(self.stride),
        }


@LAYERS.register("MaxPool2D")
class MaxPool2D(_Pool2D):
    """Max pooling with exact backprop: each output gradient goes to one input (the argmax;
    the first in row-major order on ties). Windows may overlap.

    Parameters
    ----------
    pool_size : KH = KW as an int, or (KH, KW). Default 2.
    stride : int or pair; defaults to ``pool_size``.

    Input (N, H, W, C) -> output (N, OH, OW, C); no parameters. ONNX: MaxPool.
    """

    onnx_op = "MaxPool"

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        out = max_pool2d_forward(x, self.pool_size, self.stride)
        self._cache = (x, out) if training else None
        return out

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        x, out = self._cache
        return max_pool2d_backward(grad_out, x, out, self.pool_size, self.stride)


@LAYERS.register("AvgPool2D")
class AvgPool2D(_Pool2D):
    """Average pooling; same parameters and shapes as :class:`MaxPool2D`.

    ONNX: AveragePool; every window lies inside the image, so the mean is over KH*KW values,
    as here (count_include_pad is moot).
    """

    onnx_op = "AveragePool"
    onnx_attributes = {"count_include_pad": 0}

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        self._cache = tuple(x.shape) if training else None
        return avg_pool2d_forward(x, self.pool_size, self.stride)

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        return avg_pool2d_backward(grad_out, self._cache, self.pool_size, self.stride)


@LAYERS.register("GlobalAvgPool2D")
class GlobalAvgPool2D(Layer):
    """Mean of each channel over the whole image, one value per channel.

    Input (N, C, H, W) in the public layout ((N, H, W, C) inside a model) -> output (N, C);
    no parameters. A ``Dense`` can follow directly (no ``Flatten``). ONNX: GlobalAveragePool,
    then Flatten(axis=1).
    """

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        if len(input_shape) != 3:
            raise self.error(
                f"expected an image input of shape (C, H, W); received per-sample shape {input_shape}"
            )
        return (input_shape[2],)

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        self._cache = tuple(x.shape) if training else None
        return global_avg_pool2d_forward(x)

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        return global_avg_pool2d_backward(grad_out, self._cache)

    def onnx_nodes(self, graph: Any) -> None:
        graph.node("GlobalAveragePool", self, [], output=f"{self.path}/pool")
        graph.node("Flatten", self, [], axis=1)
