"""Optimizers (SGD with momentum/Nesterov, Adam) and learning-rate schedules.

Updates are in place on the model's parameter arrays, on whatever device they live.
Weight decay touches only parameters named ``weight`` (never biases).
"""

from __future__ import annotations

import math
from typing import Any

from .backend import namespace, to_device, to_numpy


class Optimizer:
    """Base class: holds the learning rate, per-parameter state and the update loop."""

    def __init__(self, lr: float, weight_decay: float = 0.0):
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"expected a learning rate lr > 0; received {lr!r}")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ValueError(f"expected weight_decay >= 0; received {weight_decay!r}")
        self.lr = float(lr)
        self.base_lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.state: dict[str, dict[str, Any]] = {}
        self.steps = 0

    def step(self, model) -> None:
        """Apply one update to every parameter of ``model`` from its layers' ``grads``."""
        self.steps += 1
        for name, layer, key in model.parameters():
            decay = self.weight_decay if key == "weight" else 0.0
            self._update(name, layer.params[key], layer.grads[key], decay)

    def _update(self, name: str, param, grad, decay: float) -> None:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Host copies of the per-parameter buffers plus step count and current lr."""
        arrays = {
            f"{name}/{slot}": to_numpy(buf).copy()
            for name, slots in self.state.items()
            for slot, buf in slots.items()
        }
        return {"arrays": arrays, "steps": self.steps, "lr": self.lr}

    def load_state_dict(self, state: dict[str, Any], xp, dtype) -> None:
        self.state = {}
        for key, value in state["arrays"].items():
            name, slot = key.rsplit("/", 1)
            self.state.setdefault(name, {})[slot] = to_device(value, xp, dtype)
        self.steps = int(state["steps"])
        self.lr = float(state["lr"])


class SGD(Optimizer):
    """Stochastic gradient descent.

    ``v <- momentum * v + (g + weight_decay * w)``; ``w <- w - lr * v`` (or, with Nesterov,
    ``w <- w - lr * (g + weight_decay * w + momentum * v)``), the PyTorch convention.
    """

    def __init__(
        self,
        lr: float = 0.05,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(lr, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"expected momentum in [0, 1); received {momentum!r}")
        if nesterov and momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0; received momentum=0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, name, param, grad, decay):
        if decay:
            grad = grad + decay * param
        if self.momentum == 0.0:
            param -= self.lr * grad
            return
        slots = self.state.setdefault(name, {})
        if "velocity" not in slots:
            slots["velocity"] = grad * 1.0  # a copy: the first step's buffer is the gradient
        else:
            velocity = slots["velocity"]
            velocity *= self.momentum
            velocity += grad
        velocity = slots["velocity"]
        param -= self.lr * (grad + self.momentum * velocity if self.nesterov else velocity)

    def get_config(self) -> dict[str, Any]:
        return {
            "type": "sgd",
            "lr": self.base_lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }


class Adam(Optimizer):
    """Adam with bias correction; weight decay is decoupled (AdamW): ``w <- w - lr*decay*w``."""

    def __init__(
        self,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(lr, weight_decay)
        for label, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"expected {label} in [0, 1); received {beta!r}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self, name, param, grad, decay):
        slots = self.state.setdefault(name, {})
        if "m" not in slots:
            slots["m"] = grad * 0.0
            slots["v"] = grad * 0.0
        m, v = slots["m"], slots["v"]
        m *= self.beta1
        m += (1.0 - self.beta1) * grad
        v *= self.beta2
        v += (1.0 - self.beta2) * (grad * grad)
        # textbook Adam: m_hat / (sqrt(v_hat) + eps), with the bias corrections folded in
        correction1 = 1.0 - self.beta1**self.steps
        root_correction2 = math.sqrt(1.0 - self.beta2**self.steps)
        if decay:
            param -= (self.lr * decay) * param
        xp = namespace(param)
        param -= (self.lr / correction1) * (m / (xp.sqrt(v) / root_correction2 + self.eps))

    def get_config(self) -> dict[str, Any]:
        return {
            "type": "adam",
            "lr": self.base_lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }


class Schedule:
    """A learning-rate multiplier as a function of the 0-based epoch: ``lr = base_lr * s(epoch)``."""

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError


class ConstantLR(Schedule):
    def __call__(self, epoch: int) -> float:
        return 1.0

    def get_config(self) -> dict[str, Any]:
        return {"type": "constant"}


class StepLR(Schedule):
    """Multiply by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int = 1, gamma: float = 0.5):
        if step_size < 1 or not 0 < gamma <= 1:
            raise ValueError(
                f"expected step_size >= 1 and gamma in (0, 1]; received {step_size}, {gamma}"
            )
        self.step_size, self.gamma = int(step_size), float(gamma)

    def __call__(self, epoch: int) -> float:
        return self.gamma ** (epoch // self.step_size)

    def get_config(self) -> dict[str, Any]:
        return {"type": "step", "step_size": self.step_size, "gamma": self.gamma}


class ExponentialLR(Schedule):
    """Multiply by ``gamma`` every epoch."""

    def __init__(self, gamma: float = 0.9):
        if not 0 < gamma <= 1:
            raise ValueError(f"expected gamma in (0, 1]; received {gamma}")
        self.gamma = float(gamma)

    def __call__(self, epoch: int) -> float:
        return self.gamma**epoch

    def get_config(self) -> dict[str, Any]:
        return {"type": "exponential", "gamma": self.gamma}


class CosineLR(Schedule):
    """Cosine decay from 1 to ``min_factor`` over ``epochs`` epochs."""

    def __init__(self, epochs: int, min_factor: float = 0.0):
        if epochs < 1:
            raise ValueError(f"expected epochs >= 1 for the cosine schedule; received {epochs}")
        self.epochs, self.min_factor = int(epochs), float(min_factor)

    def __call__(self, epoch: int) -> float:
        progress = min(epoch, self.epochs) / self.epochs
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_config(self) -> dict[str, Any]:
        return {"type": "cosine", "epochs": self.epochs, "min_factor": self.min_factor}


def make_optimizer(config: dict[str, Any]) -> Optimizer:
    """Build an optimizer from ``get_config()`` output (e.g. ``{"type": "sgd", "lr": 0.05}``)."""
    kwargs = dict(config)
    kind = kwargs.pop("type", None)
    classes = {"sgd": SGD, "adam": Adam}
    if kind not in classes:
        raise ValueError(f"expected an optimizer type in {sorted(classes)}; received {kind!r}")
    return classes[kind](**kwargs)


def make_schedule(config: dict[str, Any] | None) -> Schedule:
    """Build a schedule from ``get_config()`` output; None means constant."""
    if config is None:
        return ConstantLR()
    kwargs = dict(config)
    kind = kwargs.pop("type", None)
    classes = {
        "constant": ConstantLR,
        "step": StepLR,
        "exponential": ExponentialLR,
        "cosine": CosineLR,
    }
    if kind not in classes:
        raise ValueError(f"expected a schedule type in {sorted(classes)}; received {kind!r}")
    return classes[kind](**kwargs)
