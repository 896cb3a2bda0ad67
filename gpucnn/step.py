"""The one training step: forward, loss, backward, a gradient hook, the update, running sums.

Every way of training runs this step: the trainer's eager loop, the CUDA-graph recording
(:mod:`gpucnn.cuda_graph` records :meth:`TrainingStep.__call__` once and replays it), and
data-parallel training, which calls :meth:`TrainingStep.forward_backward`, averages the
gradients over ranks, then :meth:`TrainingStep.update`. Loss scaling, mixed precision or
gradient accumulation are added here, once.

The dtype policy says which dtype the parameters are kept in and which one the step computes
in. Today both are the model's dtype (float32 or float64); the policy is where a compute dtype
separate from the parameters' one (bfloat16 GEMMs with float32 weights) plugs in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .backend import Array
from .functional.losses import add_batch_sums

# called between backward and the update with (loss, logits): an all-reduce, a finiteness check
GradientHook = Callable[[Array, Array], None]


@dataclass(frozen=True)
class DTypePolicy:
    """The dtypes of a training step.

    Attributes
    ----------
    parameter_dtype : the dtype the parameters and the optimizer state are kept in.
    compute_dtype : the dtype the layers compute in; the loss is computed in at least float32.
    """

    parameter_dtype: str
    compute_dtype: str

    @classmethod
    def of(cls, model) -> DTypePolicy:
        """The policy of a model that computes in its own dtype."""
        return cls(model.dtype_name, model.dtype_name)


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
    policy : the dtype policy (default: the model's dtype for everything).
    label_smoothing : epsilon of the training loss's label smoothing, in [0, 1).

    ``x`` is (N, *input_shape) and ``labels`` (N,) int, on the model's device; the 0-d loss and
    (N, K) logits stay there.
    """

    def __init__(
        self,
        model,
        optimizer,
        sums: Array | None = None,
        policy: DTypePolicy | None = None,
        label_smoothing: float = 0.0,
    ):
        self.model, self.optimizer, self.sums = model, optimizer, sums
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.policy = policy or DTypePolicy.of(model)
        if self.policy.compute_dtype != model.dtype_name:
            raise ValueError(
                f"expected a compute dtype equal to the model's ({model.dtype_name}); received "
                f"{self.policy.compute_dtype!r} (mixed precision is not available)"
            )

    def forward_backward(self, x: Array, labels: Array) -> tuple[Array, Array]:
        """Forward in training mode, softmax cross-entropy, backward (no input gradient):
        every parameter's ``grad`` is set. Returns ``(loss, logits)``."""
        return self.model.loss_and_backward(
            x, labels, check=False, label_smoothing=self.label_smoothing
        )

    def update(self) -> None:
        """The optimizer's step on the gradients now held by the parameters."""
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


__all__ = ["DTypePolicy", "GradientHook", "TrainingStep"]
