"""BatchNorm2D and BatchNorm1D: per-channel normalisation with running statistics as buffers."""

from __future__ import annotations

import math
from typing import Any

from ..backend import Array
from ..functional.normalization import (
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_statistics,
)
from .base import LAYERS, BuildContext, Layer, Shape, public_shape


class _BatchNorm(Layer):
    """Batch normalisation over every axis but the channels (see the subclasses).

    Parameters
    ----------
    momentum : weight of the new batch in the running statistics, PyTorch's convention:
        ``running = (1 - momentum) * running + momentum * batch``; in (0, 1].
    eps : added to the variance before the square root; > 0.

    Attributes
    ----------
    weight : Parameter (C,), ones; bias : Parameter (C,), zeros; neither is weight-decayed.
    running_mean : Buffer (C,), zeros; running_var : Buffer (C,), ones. The running variance
        is unbiased (M / (M - 1) times the batch's), as in PyTorch.

    Training normalises with the batch's statistics and updates the running ones in place;
    inference normalises with the running ones and changes nothing.
    """

    rank = 0  # the per-sample rank this kind normalises: 3 for (H, W, C), 1 for (D,)

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, name: str | None = None):
        super().__init__(name)
        kind = type(self).__name__
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, (int, float))
            or not 0.0 < float(momentum) <= 1.0
        ):
            raise ValueError(f"{kind}: expected momentum in (0, 1]; received {momentum!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not float(eps) > 0.0:
            raise ValueError(f"{kind}: expected eps > 0; received {eps!r}")
        self.momentum, self.eps = float(momentum), float(eps)

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        if len(input_shape) != self.rank:
            expected = "an image input (C, H, W)" if self.rank == 3 else "a flat input (features,)"
            other = "BatchNorm1D" if self.rank == 3 else "BatchNorm2D"
            raise self.error(
                f"expected {expected}; received per-sample shape {public_shape(input_shape)} "
                f"(use {other} for that)"
            )
        C = input_shape[-1]
        xp, dtype = context.xp, context.dtype
        self.weight = self.add_parameter("weight", xp.ones((C,), dtype=dtype), decay=False)
        self.bias = self.add_parameter("bias", xp.zeros((C,), dtype=dtype), decay=False)
        self.running_mean = self.add_buffer("running_mean", xp.zeros((C,), dtype=dtype))
        self.running_var = self.add_buffer("running_var", xp.ones((C,), dtype=dtype))
        return input_shape

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        if not training:
            self._cache = None
            out, _ = batch_norm_forward(
                x, self.weight.data, self.bias.data,
                self.running_mean.data, self.running_var.data, self.eps,
            )  # fmt: skip
            return out
        count = math.prod(x.shape[:-1])
        if count < 2:
            raise self.error(
                "expected more than one value per channel in training (the batch variance of "
                f"one value is undefined); received input of shape {tuple(x.shape)}"
            )
        mean, var = batch_norm_statistics(x)
        out, self._cache = batch_norm_forward(
            x, self.weight.data, self.bias.data, mean, var, self.eps
        )
        self._update_running(mean, var, count)
        return out

    def _update_running(self, mean: Array, var: Array, count: int) -> None:
        """In place, so the buffers keep their addresses (a recorded CUDA graph writes them)."""
        m = self.momentum
        running_mean, running_var = self.running_mean.data, self.running_var.data
        running_mean[...] = (1.0 - m) * running_mean + m * mean
        running_var[...] = (1.0 - m) * running_var + (m * count / (count - 1)) * var

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        grad_x, grad_w, grad_b = batch_norm_backward(
            grad_out, self._cache, self.weight.data, need_input_grad
        )
        self.weight.grad, self.bias.grad = grad_w, grad_b
        return grad_x

    def onnx_nodes(self, graph: Any) -> None:
        """BatchNormalization in inference mode, with the running statistics."""
        graph.node(
            "BatchNormalization", self,
            [graph.weight(self, key) for key in ("weight", "bias", "running_mean", "running_var")],
            epsilon=self.eps, momentum=1.0 - self.momentum,
        )  # fmt: skip

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "eps": self.eps}


@LAYERS.register("BatchNorm2D")
class BatchNorm2D(_BatchNorm):
    __doc__ = """Batch normalisation of images, per channel, over the N*H*W values of each.

    Input (N, H, W, C) (channels-last inside a model) -> output of the same shape.""" + _BatchNorm.__doc__.split(
        "\n", 1
    )[1]
    rank = 3


@LAYERS.register("BatchNorm1D")
class BatchNorm1D(_BatchNorm):
    __doc__ = """Batch normalisation of features, per feature, over the N values of each.

    Input (N, D) -> output (N, D); after a Dense layer.""" + _BatchNorm.__doc__.split("\n", 1)[1]
    rank = 1


__all__ = ["BatchNorm1D", "BatchNorm2D"]
