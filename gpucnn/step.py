"""The one training step: forward, loss, backward, a gradient hook, the update, running sums.

Every way of training runs this step: the trainer's eager loop, the CUDA-graph recording
(:mod:`gpucnn.cuda_graph` records :meth:`TrainingStep.__call__` once and replays it), and
data-parallel training, which calls :meth:`TrainingStep.forward_backward`, averages the
gradients over ranks, then :meth:`TrainingStep.update`. Loss scaling, mixed precision or
gradient accumulation are added here, once.

The model's precision policy (:mod:`gpucnn.precision`) says which dtype the parameters are
kept in and which one the layers compute in; the model casts at its boundary, so the step sees
float32 logits and gradients either way. Under ``"mixed_float16"`` the step scales the loss
(:class:`~gpucnn.precision.LossScaler`): backward runs on the scaled loss, the gradients are
unscaled before anything reads them, and a step whose gradients overflowed updates nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .backend import Array
from .functional.losses import add_batch_sums
from .precision import LossScaler

# called between backward and the update with (loss, logits): an all-reduce, a finiteness check
GradientHook = Callable[[Array, Array], None]


def check_label_smoothing(value: float) -> float:
    """``value`` as a float in [0, 1), or ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"expected label_smoothing in [0, 1); received {value!r}")
    return float(value)


class TrainingStep:
    """``step(x, labels) -> (loss, logits)`` trains ``model`` on one batch.

    Parameters
    ----------
    model : a :class:`~gpucnn.Sequential` model; its outputs are class logits.
    optimizer : updates the parameters from their gradients.
    sums : optional (2,) float64 array on the model's device; each step adds the batch's summed
        loss and correct count to it in place, so a loop reads nothing per batch.
    label_smoothing : epsilon of the training loss's label smoothing, in [0, 1).

    ``x`` is (N, *input_shape) and ``labels`` (N,) int, on the model's device; the 0-d loss and
    (N, K) logits stay there.
    """

    def __init__(
        self,
        model,
        optimizer,
        sums: Array | None = None,
        label_smoothing: float = 0.0,
    ):
        self.model, self.optimizer, self.sums = model, optimizer, sums
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.scaler: LossScaler | None = None  # made at the first float16 step
        self._overflowed = False

    def forward_backward(self, x: Array, labels: Array) -> tuple[Array, Array]:
        """Forward in training mode, softmax cross-entropy, backward (no input gradient):
        every parameter's ``grad`` is set (unscaled; zeros after a float16 overflow, which
        the next :meth:`update` skips). Returns ``(loss, logits)``."""
        if not self.model.precision.loss_scaling:  # bfloat16 gradients need no loss scale
            return self.model.loss_and_backward(
                x, labels, check=False, label_smoothing=self.label_smoothing
            )
        if self.scaler is None:
            self.scaler = LossScaler()
        loss, logits = self.model.loss_and_backward(
            x, labels, check=False, label_smoothing=self.label_smoothing,
            loss_scale=self.scaler.scale,
        )  # fmt: skip
        params = [p for p in self.model.parameters() if p.grad is not None]
        grads, finite = self.scaler.unscale(self.model.xp, [p.grad for p in params])
        xp = self.model.xp
        for p, g in zip(params, grads, strict=True):
            p.grad = g if finite else xp.zeros_like(p.data)
        self._overflowed = not finite
        return loss, logits

    def update(self) -> None:
        """The optimizer's step on the gradients now held by the parameters (none after a
        float16 step whose scaled gradients overflowed)."""
        if self._overflowed:
            self._overflowed = False
            return
        self.optimizer.step(self.model)

    def __call__(
        self, x: Array, labels: Array, before_update: GradientHook | None = None
    ) -> tuple[Array, Array]:
        """The whole step; ``before_update(loss, logits)`` runs between backward and update
        (it may raise to prevent the update)."""
        loss, logits = self.forward_backward(x, labels)
        if before_update is not None:
            before_update(loss, logits)
        self.update()
        if self.sums is not None:
            add_batch_sums(self.sums, loss, logits, labels)
        return loss, logits

    def describe(self) -> dict[str, Any]:
        return {"cuda_graph": False, "disabled_because": "eager steps", "replays": 0}


__all__ = ["GradientHook", "TrainingStep"]
