"""Conv2D: owns the filters and bias, delegates the math to :mod:`gpucnn.functional.conv`."""

from __future__ import annotations

import math
from typing import Any

from ..backend import Array
from ..functional.conv import conv2d_backward, conv2d_forward
from ..functional.im2col import as_pair, output_size, resolve_padding
from ..validation import check_int
from .base import LAYERS, BuildContext, Layer, Shape, public_shape


@LAYERS.register("Conv2D")
class Conv2D(Layer):
    """2-D convolution with F filters, any number of input channels, stride and zero padding.

    Parameters
    ----------
    filters : F, the number of output channels.
    kernel_size : KH = KW as an int, or (KH, KW).
    stride : SH = SW as an int, or (SH, SW). Default 1.
    padding : an int, a pair (PH, PW), ``"valid"`` (0) or ``"same"`` (output size
        ``ceil(input / stride)``). Default 0.

    Attributes
    ----------
    weight : Parameter of shape (F, C, KH, KW), He-normal initialised, weight-decayed.
    bias : Parameter of shape (F,), zeros.

    Notes
    -----
    Input (N, H, W, C) -> output (N, OH, OW, F), channels-last inside a model.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        name: str | None = None,
    ):
        super().__init__(name)
        self.filters = check_int("filters", filters, 1, owner="Conv2D")
        self.kernel_size = as_pair(kernel_size, "Conv2D kernel_size")
        self.stride = as_pair(stride, "Conv2D stride")
        try:  # the functional validator, on a size any valid padding accepts
            resolve_padding(padding, self.kernel_size, self.stride, self.kernel_size)
        except ValueError as exc:
            raise ValueError(f"Conv2D: {exc}") from None
        self.padding_spec = padding
        self.padding = (0, 0, 0, 0)

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        if len(input_shape) != 3:
            raise self.error(
                f"expected an image input of shape (C, H, W); received per-sample shape {input_shape}"
            )
        H, W, C = input_shape
        KH, KW = self.kernel_size
        SH, SW = self.stride
        self.padding = resolve_padding(self.padding_spec, self.kernel_size, self.stride, (H, W))
        PT, PB, PL, PR = self.padding
        OH = output_size(H, KH, SH, PT, PB)
        OW = output_size(W, KW, SW, PL, PR)
        if OH < 1 or OW < 1:
            raise self.error(
                f"kernel {self.kernel_size} does not fit the padded input: expected a padded "
                f"height and width of at least {self.kernel_size}; received "
                f"{(H + PT + PB, W + PL + PR)} from input shape {public_shape(input_shape)} "
                f"with padding {self.padding_spec!r}"
            )
        fan_in = C * KH * KW
        std = math.sqrt(2.0 / fan_in)
        shape = (self.filters, C, KH, KW)
        self.weight = self.add_parameter(
            "weight", context.random.normal(shape, std, context.dtype), decay=True
        )
        self.bias = self.add_parameter(
            "bias", context.xp.zeros((self.filters,), dtype=context.dtype), decay=False
        )
        return (OH, OW, self.filters)

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        out, cols = conv2d_forward(
            x, self.weight.value, self.bias.value, self.stride, self.padding, training
        )
        self._cache = (cols, tuple(x.shape)) if training else None
        return out

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        cols, x_shape = self._cache
        grad_x, grad_w, grad_b = conv2d_backward(
            grad_out,
            cols,
            self.weight.value,
            x_shape,
            self.stride,
            self.padding,
            need_input_grad,
        )
        self.weight.grad, self.bias.grad = grad_w, grad_b
        return grad_x

    def onnx_nodes(self, graph: Any) -> None:
        """Conv with explicit pads [PT, PL, PB, PR], so an asymmetric "same" stays exact."""
        PT, PB, PL, PR = self.padding
        graph.node(
            "Conv", self, [graph.weight(self, "weight"), graph.weight(self, "bias")],
            kernel_shape=list(self.kernel_size), strides=list(self.stride),
            pads=[PT, PL, PB, PR], dilations=[1, 1], group=1,
        )  # fmt: skip

    def get_config(self) -> dict[str, Any]:
        padding = (
            self.padding_spec
            if isinstance(self.padding_spec, (str, int))
            else list(self.padding_spec)
        )
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": padding,
        }
