"""Optimizers (SGD with momentum/Nesterov, Adam), gradient clipping, learning-rate schedules.

An optimizer loops over :class:`~gpucnn.parameter.Parameter` objects (``model.parameters()``)
and updates each ``data`` in place from its ``grad``, on whatever device they live. It owns
weight decay (only parameters with ``decay`` set: weights, never biases) and, with
``clip_norm``, rescales the gradients so that their global L2 norm is at most ``clip_norm``.
The per-parameter math of each optimizer is one function on arrays (``_sgd_update``,
``_adam_update``), the single place a fused device kernel would replace.

Optimizers and schedules register by name (``OPTIMIZERS``, ``SCHEDULES``) and rebuild from
``get_config()`` output with ``make_optimizer`` / ``make_schedule``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .backend import Array, namespace, to_device, to_numpy
from .functional._dispatch import cuda_kernels
from .parameter import Parameter
from .registry import Registry
from .validation import check_bool, check_float, check_int

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")


def grad_square_norm(parameters: Iterable[Parameter]) -> Array:
    """Sum of squares of every gradient, a 0-d array on the parameters' device."""
    total = None
    for p in parameters:
        part = namespace(p.grad).sum(p.grad * p.grad)
        total = part if total is None else total + part
    return total


def clip_grad_norm(
    parameters: Iterable[Parameter], max_norm: float, square_norm: Array | None = None
) -> None:
    """Scale every ``grad`` by ``min(max_norm / ||g||, 1)``, ``||g||`` the global L2 norm.

    ``square_norm`` may pass a :func:`grad_square_norm` already computed. No host read: the
    scale stays on the device.
    """
    parameters = list(parameters)
    if not parameters:
        return
    if square_norm is None:
        square_norm = grad_square_norm(parameters)
    xp = namespace(square_norm)
    scale = xp.minimum(max_norm / (xp.sqrt(square_norm) + 1e-12), 1.0)
    for p in parameters:
        p.grad = p.grad * xp.astype(scale, p.grad.dtype)


def _parameters_of(source: Any) -> list[Parameter]:
    return list(source.parameters() if hasattr(source, "parameters") else source)


class Optimizer:
    """Base class: learning rate, weight decay, clipping, per-parameter state, the update loop.

    Parameters
    ----------
    lr : learning rate > 0 (the base rate; a schedule sets ``lr`` each epoch).
    weight_decay : L2 factor >= 0 for parameters with ``decay`` set.
    clip_norm : if given (> 0), clip the global gradient norm to it before each update.
    """

    def __init__(self, lr: float, weight_decay: float = 0.0, clip_norm: float | None = None):
        owner = type(self).__name__
        lr = check_float("lr", lr, 0, low_open=True, owner=owner, describe="a learning rate lr")
        weight_decay = check_float("weight_decay", weight_decay, 0, owner=owner)
        if clip_norm is not None:
            clip_norm = check_float("clip_norm", clip_norm, 0, low_open=True, owner=owner)
        self.lr = lr
        self.base_lr = lr
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm
        self.state: dict[str, dict[str, Any]] = {}  # parameter name -> slot -> array
        self.steps = 0
        self._restored = False  # host buffers from load_state_dict, not yet on the device

    def step(self, parameters: Any, square_norm: Array | None = None) -> None:
        """Apply one update to every parameter from its ``grad``.

        Parameters
        ----------
        parameters : a model (anything with ``parameters()``) or an iterable of Parameters.
        square_norm : the gradients' sum of squares (:func:`grad_square_norm`) if already
            computed; it spares recomputing it for clipping.
        """
        parameters = _parameters_of(parameters)
        if self._restored:
            self._adopt_restored_state(parameters)
        if self.clip_norm is not None:
            clip_grad_norm(parameters, self.clip_norm, square_norm)
        self.steps += 1
        updates = [
            (p, self.state.setdefault(p.name, {}), self.weight_decay if p.decay else 0.0)
            for p in parameters
        ]
        cuda = cuda_kernels(namespace(updates[0][0].data)) if updates else None
        if cuda is not None and self._fused_update(cuda, updates):
            return
        for p, slots, decay in updates:
            self._update(p, slots, decay)

    def _adopt_restored_state(self, parameters: list[Parameter]) -> None:
        """Move host buffers from :meth:`load_state_dict` to each parameter's device and dtype."""
        by_name = {p.name: p for p in parameters}
        unknown = sorted(set(self.state) - set(by_name))
        if unknown:
            raise ValueError(
                f"optimizer state for parameters {unknown}: expected names in {sorted(by_name)}"
            )
        for name, slots in self.state.items():
            p = by_name[name]
            xp = namespace(p.data)
            for slot, value in slots.items():
                if tuple(value.shape) != p.shape:
                    raise ValueError(
                        f"optimizer state {name}/{slot}: expected shape {p.shape}; "
                        f"received {tuple(value.shape)}"
                    )
                slots[slot] = to_device(value, xp, p.data.dtype)
        self._restored = False

    def _update(self, p: Parameter, slots: dict[str, Array], decay: float) -> None:
        raise NotImplementedError

    def _fused_update(self, cuda: Any, updates: list[tuple[Parameter, dict, float]]) -> bool:
        """Update every parameter with the CUDA kernels (a few launches for the whole model);
        False, having changed nothing, where they do not apply."""
        return False

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments with the registered name under ``"type"``."""
        config = {
            "type": type(self).config_name,
            "lr": self.base_lr,
            "weight_decay": self.weight_decay,
        }
        if self.clip_norm is not None:  # absent when unset: configs saved before clipping match
            config["clip_norm"] = self.clip_norm
        return config

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` restores: the config, the step count, the current
        lr and host copies of the per-parameter buffers under ``"<parameter>/<slot>"``."""
        arrays = {
            f"{name}/{slot}": to_numpy(buf).copy()
            for name, slots in self.state.items()
            for slot, buf in slots.items()
        }
        return {"config": self.get_config(), "steps": self.steps, "lr": self.lr, "arrays": arrays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output. The buffers move to each parameter's device and
        dtype at the next :meth:`step`.

        Raises
        ------
        ValueError if ``state["config"]`` differs from this optimizer's configuration.
        """
        saved = state.get("config")
        if saved is not None:
            expected = self.get_config()
            # files from before clipping moved here were clipped by the trainer
            if "clip_norm" not in saved:
                expected.pop("clip_norm", None)
            if make_optimizer(saved).get_config() != expected:
                raise ValueError(
                    f"optimizer state from a different optimizer: expected {expected}; received {saved}"
                )
        self.state = {}
        for key, value in state["arrays"].items():
            name, slot = key.rsplit("/", 1)
            self.state.setdefault(name, {})[slot] = to_numpy(value).copy()
        self.steps = int(state["steps"])
        self.lr = float(state["lr"])
        self._restored = True


def _sgd_update(
    param: Array,
    grad: Array,
    velocity: Array | None,
    lr: float,
    momentum: float,
    nesterov: bool,
    decay: float,
) -> Array | None:
    """One SGD step on ``param`` in place; returns the new velocity (None without momentum).

    ``v <- momentum * v + (g + decay * w)`` (the first v is that gradient);
    ``w <- w - lr * v``, or with Nesterov ``w <- w - lr * (g + decay * w + momentum * v)``.
    """
    if decay:
        grad = grad + decay * param
    if momentum == 0.0:
        param -= lr * grad
        return None
    if velocity is None:
        velocity = grad * 1.0  # a copy: the first step's buffer is the gradient
    else:
        velocity *= momentum
        velocity += grad
    param -= lr * (grad + momentum * velocity if nesterov else velocity)
    return velocity


def _adam_update(
    param: Array,
    grad: Array,
    m: Array,
    v: Array,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    decay: float,
    step: int,
) -> None:
    """One Adam step (bias-corrected, decoupled weight decay) on ``param``, ``m``, ``v`` in place."""
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * (grad * grad)
    # textbook Adam: m_hat / (sqrt(v_hat) + eps), with the bias corrections folded in
    correction1 = 1.0 - beta1**step
    root_correction2 = math.sqrt(1.0 - beta2**step)
    if decay:
        param -= (lr * decay) * param
    xp = namespace(param)
    param -= (lr / correction1) * (m / (xp.sqrt(v) / root_correction2 + eps))


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """Stochastic gradient descent (the PyTorch convention; see :func:`_sgd_update`).

    Parameters
    ----------
    lr, weight_decay, clip_norm : see :class:`Optimizer`.
    momentum : in [0, 1).
    nesterov : Nesterov momentum (needs momentum > 0).
    """

    def __init__(
        self,
        lr: float = 0.05,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ):
        super().__init__(lr, weight_decay, clip_norm)
        momentum = check_float("momentum", momentum, 0, 1, high_open=True, owner="SGD")
        nesterov = check_bool("nesterov", nesterov, owner="SGD")
        if nesterov and momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0; received momentum=0")
        self.momentum = momentum
        self.nesterov = nesterov

    def _update(self, p, slots, decay):
        velocity = _sgd_update(
            p.data, p.grad, slots.get("velocity"), self.lr, self.momentum, self.nesterov, decay
        )
        if velocity is not None:
            slots["velocity"] = velocity

    def _fused_update(self, cuda, updates):
        if self.momentum:
            for p, slots, _ in updates:
                if "velocity" not in slots:
                    # zeros: the kernel's first v = momentum * 0 + g is the gradient itself
                    slots["velocity"] = namespace(p.data).zeros_like(p.data)
        return cuda.sgd_multi(
            [(p.data, p.grad, slots.get("velocity", p.data), decay) for p, slots, decay in updates],
            self.lr,
            self.momentum,
            self.nesterov,
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adam with bias correction; weight decay is decoupled (AdamW): ``w <- w - lr*decay*w``.

    Parameters
    ----------
    lr, weight_decay, clip_norm : see :class:`Optimizer`.
    beta1, beta2 : moment decay rates in [0, 1).
    eps : added to the root of the second moment.
    """

    def __init__(
        self,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ):
        super().__init__(lr, weight_decay, clip_norm)
        self.beta1 = check_float("beta1", beta1, 0, 1, high_open=True, owner="Adam")
        self.beta2 = check_float("beta2", beta2, 0, 1, high_open=True, owner="Adam")
        self.eps = check_float("eps", eps, 0, owner="Adam")

    def _update(self, p, slots, decay):
        if "m" not in slots:
            slots["m"] = p.grad * 0.0
            slots["v"] = p.grad * 0.0
        _adam_update(
            p.data, p.grad, slots["m"], slots["v"], self.lr, self.beta1, self.beta2, self.eps,
            decay, self.steps,
        )  # fmt: skip

    def _fused_update(self, cuda, updates):
        for p, slots, _ in updates:
            if "m" not in slots:
                slots["m"] = namespace(p.data).zeros_like(p.data)
                slots["v"] = namespace(p.data).zeros_like(p.data)
        return cuda.adam_multi(
            [(p.data, p.grad, s["m"], s["v"], self.lr * decay) for p, s, decay in updates],
            self.lr / (1.0 - self.beta1**self.steps),
            self.beta1,
            self.beta2,
            self.eps,
            math.sqrt(1.0 - self.beta2**self.steps),
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """:class:`Adam` with decoupled weight decay on by default (``weight_decay=0.01``, as
    PyTorch's ``AdamW``): ``w <- w - lr * weight_decay * w`` at every step, apart from the
    gradient's moments; biases and normalisation parameters are not decayed."""

    def __init__(
        self,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        clip_norm: float | None = None,
    ):
        super().__init__(lr, beta1, beta2, eps, weight_decay, clip_norm)


class Schedule:
    """A learning-rate multiplier as a function of the 0-based epoch: ``lr = base_lr * s(epoch)``."""

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments with the registered name under ``"type"``."""
        return {"type": type(self).config_name}


@SCHEDULES.register("constant")
class ConstantLR(Schedule):
    def __call__(self, epoch: int) -> float:
        return 1.0


@SCHEDULES.register("step")
class StepLR(Schedule):
    """Multiply by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int = 1, gamma: float = 0.5):
        self.step_size = check_int("step_size", step_size, 1, owner="StepLR")
        self.gamma = check_float("gamma", gamma, 0, 1, low_open=True, owner="StepLR")

    def __call__(self, epoch: int) -> float:
        return self.gamma ** (epoch // self.step_size)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "step_size": self.step_size, "gamma": self.gamma}


@SCHEDULES.register("exponential")
class ExponentialLR(Schedule):
    """Multiply by ``gamma`` every epoch."""

    def __init__(self, gamma: float = 0.9):
        self.gamma = check_float("gamma", gamma, 0, 1, low_open=True, owner="ExponentialLR")

    def __call__(self, epoch: int) -> float:
        return self.gamma**epoch

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma}


@SCHEDULES.register("cosine")
class CosineLR(Schedule):
    """Cosine decay from 1 to ``min_factor`` over ``epochs`` epochs."""

    def __init__(self, epochs: int, min_factor: float = 0.0):
        self.epochs = check_int("epochs", epochs, 1, owner="CosineLR")
        # a factor above 1 would make the "decay" raise the learning rate
        self.min_factor = check_float("min_factor", min_factor, 0, 1, owner="CosineLR")

    def __call__(self, epoch: int) -> float:
        progress = min(epoch, self.epochs) / self.epochs
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epochs": self.epochs, "min_factor": self.min_factor}


@SCHEDULES.register("warmup")
class WarmupLR(Schedule):
    """Linear warm-up over the first ``epochs`` epochs, multiplying another schedule.

    ``s(epoch) = min(1, (epoch + 1) / (epochs + 1)) * then(epoch)``: the first epoch trains at
    ``1 / (epochs + 1)`` of the rate, epoch ``epochs`` at the full rate of ``then`` (planned
    over the whole run, so a cosine decay still ends where it would).

    Parameters
    ----------
    epochs : warm-up epochs, >= 1.
    then : the schedule after (and under) the warm-up, or its config; default constant.
    """

    def __init__(self, epochs: int = 1, then: Schedule | dict[str, Any] | None = None):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"WarmupLR: expected epochs as an int >= 1; received {epochs!r}")
        self.epochs = epochs
        self.then = then if isinstance(then, Schedule) else make_schedule(then)

    def __call__(self, epoch: int) -> float:
        return min(1.0, (epoch + 1) / (self.epochs + 1)) * self.then(epoch)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epochs": self.epochs, "then": self.then.get_config()}


def make_optimizer(config: dict[str, Any]) -> Optimizer:
    """Build an optimizer from ``get_config()`` output (e.g. ``{"type": "sgd", "lr": 0.05}``)."""
    return OPTIMIZERS.from_config(config)


def make_schedule(config: dict[str, Any] | None) -> Schedule:
    """Build a schedule from ``get_config()`` output; None means constant."""
    return ConstantLR() if config is None else SCHEDULES.from_config(config)
