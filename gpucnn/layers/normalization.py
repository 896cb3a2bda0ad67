"""BatchNorm2D and BatchNorm1D: per-channel normalisation with running statistics as buffers."""

from __future__ import annotations

import math
from typing import Any

from ..backend import Array, namespace
from ..functional.normalization import (
    batch_norm_forward,
    batch_norm_input_grad,
    batch_norm_parameter_grads,
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

    In data-parallel training the statistics are those of the whole global batch: the trainer
    sets ``sum_over_processes`` (a function that sums a 1-d array over the ranks), and each
    training step then all-reduces three sums per channel in forward and two in backward, so
    ``mpirun -n P`` trains as one process does on the same global batch.
    """

    rank = 0  # the per-sample rank this kind normalises: 3 for (H, W, C), 1 for (D,)
    batch_statistics = True
    autocast = False  # statistics in float32 under a mixed-precision policy

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
        self._share = 1.0  # this process's count / the global batch's count

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
        return self.forward_then_relu(x, training, relu=False)

    def forward_then_relu(self, x: Array, training: bool, relu: bool) -> Array:
        """``forward``, then ``max(., 0)`` in the same pass with ``relu`` (the fused
        ``BatchNorm, ReLU`` step of :mod:`gpucnn.layers.fused`).

        An input of a lower precision than the parameters (a mixed-precision model) is
        normalised in the parameters' dtype, statistics included, and the output cast back."""
        self.check_input(x)
        kept = self.weight.data.dtype
        if x.dtype == kept:
            return self._forward_then_relu(x, training, relu)
        xp = namespace(x)
        return xp.astype(self._forward_then_relu(xp.astype(x, kept), training, relu), x.dtype)

    def _forward_then_relu(self, x: Array, training: bool, relu: bool) -> Array:
        if not training:
            self._cache = None
            out, _ = batch_norm_forward(
                x, self.weight.data, self.bias.data,
                self.running_mean.data, self.running_var.data, self.eps, relu,
            )  # fmt: skip
            return out
        if self.sum_over_processes is None:
            count = math.prod(x.shape[:-1])
            self._check_count(count, x.shape)
            mean, var = batch_norm_statistics(x)
        else:
            mean, var, count = self._global_statistics(x)
        out, self._cache = batch_norm_forward(
            x, self.weight.data, self.bias.data, mean, var, self.eps, relu
        )
        self._update_running(mean, var, count)
        return out

    def _check_count(self, count: int, shape: tuple[int, ...]) -> None:
        if count < 2:
            raise self.error(
                "expected more than one value per channel in training (the batch variance of "
                f"one value is undefined); received input of shape {tuple(shape)}"
            )

    def _global_statistics(self, x: Array) -> tuple[Array, Array, int]:
        """Mean, biased variance and count of every process's share of the batch.

        Each process takes its share's exact two-pass statistics (count n, mean m, variance v)
        and one float64 all-reduce sums ``[n (m - K), n v + n (m - K)^2, n]``, the first two
        moments about a shift K common to all processes (the running mean: near the batch
        mean once training has begun), so ``var = S2 / N - (S1 / N)^2`` cancels only the
        spread of the processes' means about K, in float64."""
        xp = namespace(x)
        C = x.shape[-1]
        local_count = math.prod(x.shape[:-1])
        shift = xp.astype(self.running_mean.data, xp.float64)
        if local_count:
            mean, var = (xp.astype(a, xp.float64) for a in batch_norm_statistics(x))
            offset = mean - shift
            first, second = local_count * offset, local_count * (var + offset * offset)
        else:  # an idle process (a short last batch) adds nothing, but joins the call
            first = second = xp.zeros((C,), dtype=xp.float64)
        count = xp.full((1,), float(local_count), dtype=xp.float64)
        sums = self.sum_over_processes(xp.concat([first, second, count]))
        count = round(float(sums[2 * C]))
        self._check_count(count, (count, *x.shape[1:]))
        self._share = local_count / count
        mean_offset = sums[:C] / count
        var = xp.clip(sums[C : 2 * C] / count - mean_offset * mean_offset, 0.0, None)
        return xp.astype(shift + mean_offset, x.dtype), xp.astype(var, x.dtype), count

    def _update_running(self, mean: Array, var: Array, count: int) -> None:
        """In place, so the buffers keep their addresses (a recorded CUDA graph writes them)."""
        m = self.momentum
        running_mean, running_var = self.running_mean.data, self.running_var.data
        running_mean[...] = (1.0 - m) * running_mean + m * mean
        running_var[...] = (1.0 - m) * running_var + (m * count / (count - 1)) * var

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        kept = self.weight.data.dtype
        if grad_out.dtype == kept:
            return self._backward(grad_out, need_input_grad)
        xp = namespace(grad_out)  # a mixed-precision model: as in forward
        grad_x = self._backward(xp.astype(grad_out, kept), need_input_grad)
        return None if grad_x is None else xp.astype(grad_x, grad_out.dtype)

    def _backward(self, grad_out: Array, need_input_grad: bool) -> Array | None:
        grad_w, grad_b = batch_norm_parameter_grads(grad_out, self._cache)
        self.weight.grad, self.bias.grad = grad_w, grad_b
        if self.sum_over_processes is not None:
            # the parameters' gradients stay this process's own (the trainer's gradient
            # all-reduce weighs and sums them); the input gradient needs the global channel
            # means of grad_out and grad_out * x_hat, each process's sums weighted by its
            # share as its loss gradient is (see gpucnn.distributed). Every process joins
            # the call, whether or not it needs the input gradient.
            xp = namespace(grad_out)
            sums = self.sum_over_processes(xp.concat([grad_b * self._share, grad_w * self._share]))
            grad_b, grad_w = sums[: grad_b.shape[0]], sums[grad_b.shape[0] :]
        if not need_input_grad:
            return None
        count = max(math.prod(grad_out.shape[:-1]), 1)  # an idle process has no values
        return batch_norm_input_grad(
            grad_out, self._cache, self.weight.data, grad_b / count, grad_w / count
        )

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
