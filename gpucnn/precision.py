"""Precision policies: the dtype a model keeps its parameters in, and the one its layers compute in.

A policy is named as in Keras:

* ``"float32"`` / ``"float64"``: everything in that dtype (the default: the model's dtype);
* ``"mixed_bfloat16"``: parameters, optimizer state, BatchNorm statistics and the loss in
  float32; convolutions, dense layers and activations in bfloat16 (the GEMMs accumulate in
  float32 on cuBLAS). bfloat16 has float32's exponent range, so gradients need no scaling;
* ``"mixed_float16"``: the same with float16, whose range is small: the loss is multiplied by a
  :class:`LossScaler` before backward so small gradients do not flush to zero, and a step whose
  gradients overflow is skipped while the scale halves.

How the model applies it (:class:`gpucnn.Sequential`): each forward pass casts the input and
the parameters of every layer with ``autocast`` (all but BatchNorm) to the compute dtype; the
output goes back to the model's dtype at the boundary, so the loss, ``predict_proba`` and
callers see float32; backward casts the gradient down at the boundary and each parameter's
gradient back up to float32 for the optimizer.

Mixed precision pays only on a GPU: NumPy has no bfloat16 and computes float16 without BLAS,
far slower than float32, so a NumPy model refuses a mixed policy unless ``emulate=True`` (for
tests of a mixed-precision set-up on a CPU; float16 only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .backend import Array

# name -> (parameter dtype, compute dtype)
POLICIES = {
    "float32": ("float32", "float32"),
    "float64": ("float64", "float64"),
    "mixed_bfloat16": ("float32", "bfloat16"),
    "mixed_float16": ("float32", "float16"),
}
MIXED = tuple(name for name, (kept, compute) in POLICIES.items() if kept != compute)


@dataclass(frozen=True)
class Policy:
    """One precision policy (see the module docstring).

    Attributes
    ----------
    name : ``"float32"``, ``"float64"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``.
    parameter_dtype : the dtype of parameters, optimizer state, buffers and the loss.
    compute_dtype : the dtype the autocast layers compute in.
    """

    name: str
    parameter_dtype: str
    compute_dtype: str

    @property
    def mixed(self) -> bool:
        return self.compute_dtype != self.parameter_dtype

    @property
    def loss_scaling(self) -> bool:
        """float16 gradients underflow without a loss scale; bfloat16 ones do not."""
        return self.compute_dtype == "float16"


def policy(name: str) -> Policy:
    """The policy called ``name``; ValueError naming the choices otherwise."""
    if not isinstance(name, str) or name not in POLICIES:
        raise ValueError(f"expected precision in {sorted(POLICIES)}; received {name!r}")
    return Policy(name, *POLICIES[name])


def compute_dtype(xp: ModuleType, policy: Policy) -> Any:
    """The dtype object of ``policy.compute_dtype`` in namespace ``xp``.

    bfloat16 is not in the array API: CuPy (14 and later) takes NumPy's extension dtype from
    the ``ml_dtypes`` package, which is then needed."""
    name = policy.compute_dtype
    if hasattr(xp, name):
        return getattr(xp, name)
    if name != "bfloat16":
        raise ValueError(f"precision {policy.name!r}: the array namespace has no {name}")
    try:
        import ml_dtypes
    except ImportError:
        raise ValueError(
            f"precision {policy.name!r} needs the ml_dtypes package for bfloat16 "
            "(pip install ml_dtypes); it is not installed"
        ) from None
    return ml_dtypes.bfloat16


def check_backend(policy: Policy, backend, emulate: bool = False) -> None:
    """Refuse a mixed policy on a CPU backend (one line saying why), unless ``emulate`` and
    the policy is float16 (NumPy has float16 arithmetic, but no bfloat16 GEMM)."""
    if not policy.mixed or backend.is_gpu:
        return
    if emulate and policy.compute_dtype == "float16":
        return
    emulated = " (emulate=True runs only mixed_float16 there)" if emulate else ""
    raise ValueError(
        f"precision {policy.name!r} needs the CuPy backend (a CUDA GPU); received backend "
        f"{backend.name!r}, which has no fast {policy.compute_dtype} arithmetic (compute in "
        f"float32 there){emulated}"
    )


class LossScaler:
    """Dynamic loss scaling for float16 gradients.

    The loss gradient is multiplied by ``scale`` before backward; :meth:`unscale` divides the
    float32 parameter gradients by it and says whether they are all finite. A step whose
    gradients overflowed is skipped and the scale halves; after ``growth_interval`` finite
    steps in a row it doubles (up to ``2**24``), so it settles just below overflow.

    Parameters
    ----------
    scale : the first scale (``2**15``, as PyTorch and Keras start).
    growth_interval : finite steps in a row before the scale doubles.
    """

    MAX_SCALE = 2.0**24

    def __init__(self, scale: float = 2.0**15, growth_interval: int = 2000):
        self.scale = float(scale)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0
        self.skipped = 0

    def state_dict(self) -> dict[str, float]:
        """The scaler's state, JSON-serialisable (a checkpoint keeps it, so a resumed run goes
        on with the scale it had reached)."""
        return {
            "scale": self.scale,
            "growth_interval": self.growth_interval,
            "good_steps": self.good_steps,
            "skipped": self.skipped,
        }

    @classmethod
    def from_state(cls, state: dict[str, float]) -> LossScaler:
        """The scaler a :meth:`state_dict` describes."""
        scaler = cls(float(state["scale"]), int(state["growth_interval"]))
        scaler.good_steps, scaler.skipped = int(state["good_steps"]), int(state["skipped"])
        return scaler

    def unscale(self, xp: ModuleType, grads: Sequence[Array]) -> tuple[list[Array], bool]:
        """``(grads / scale, finite)``; updates the scale. One host read (the finiteness)."""
        grads = [g / self.scale for g in grads]
        finite = bool(xp.all(xp.stack([xp.all(xp.isfinite(g)) for g in grads]))) if grads else True
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale = min(self.scale * 2.0, self.MAX_SCALE)
                self.good_steps = 0
        else:
            self.scale = max(self.scale / 2.0, 1.0)
            self.good_steps = 0
            self.skipped += 1
        return grads, finite


__all__ = ["MIXED", "POLICIES", "LossScaler", "Policy", "check_backend", "compute_dtype", "policy"]
