"""The layer contract shared by every layer.

A layer is constructed with its hyper-parameters, then *built* for a per-sample input shape
(which creates its parameters), then called:

* ``forward(x, training)`` returns the output and keeps only what ``backward`` needs;
* ``backward(grad_out)`` sets the ``grad`` of each of its :class:`~gpucnn.parameter.Parameter`
  objects and returns the input gradient; it never mutates its inputs.

Layers register under their class name (``LAYERS``), so ``layer_from_config(get_config())``
rebuilds any of them; the base class supplies ``"type"`` and subclasses add their arguments.

Per-sample shapes are channels-last inside the library: an image is ``(H, W, C)`` and a batch
``(N, H, W, C)`` (see :mod:`gpucnn.functional.im2col`). Messages show image shapes in the public
``(C, H, W)`` order.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..backend import Array
from ..parameter import Parameter, ParameterView
from ..random import Random
from ..registry import Registry

Shape = tuple[int, ...]
LAYERS = Registry("layer")


@dataclass
class BuildContext:
    """What a layer needs to create its parameters: namespace, dtype and seeded randomness."""

    xp: ModuleType
    dtype: Any
    random: Random


def public_shape(shape: Shape) -> Shape:
    """A per-sample internal shape in the public order: (H, W, C) -> (C, H, W)."""
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else tuple(shape)


class Layer:
    """Base class of all layers. Subclasses implement ``_build``, ``forward``, ``backward``.

    Attributes
    ----------
    params : dict-like view ``{key: array}`` of the parameters' arrays (assignable).
    grads : dict-like view ``{key: array}`` of the gradients computed so far.
    """

    def __init__(self, name: str | None = None):
        self.name = name
        self._parameters: dict[str, Parameter] = {}
        self.input_shape: Shape | None = None
        self.output_shape: Shape | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def build(self, input_shape: Shape, context: BuildContext) -> Shape:
        """Create parameters for per-sample ``input_shape``; return the per-sample output shape."""
        if self.name is None:
            self.name = type(self).__name__.lower()
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(self._build(self.input_shape, context))
        return self.output_shape

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        return input_shape

    def add_parameter(self, key: str, data: Array, decay: bool) -> Parameter:
        """Create the parameter ``key`` (named ``"<layer>.<key>"``) holding ``data``."""
        parameter = Parameter(data, f"{self.name}.{key}", decay)
        self._parameters[key] = parameter
        return parameter

    def parameters(self) -> list[Parameter]:
        """This layer's parameters, in creation order."""
        return list(self._parameters.values())

    @property
    def params(self) -> ParameterView:
        return ParameterView(self._parameters, "data")

    @params.setter
    def params(self, values: dict[str, Array]) -> None:
        for key, value in values.items():
            self.params[key] = value

    @property
    def grads(self) -> ParameterView:
        return ParameterView(self._parameters, "grad")

    @grads.setter
    def grads(self, values: dict[str, Array]) -> None:
        for key, value in values.items():
            self.grads[key] = value

    def forward(self, x: Array, training: bool = True) -> Array:
        raise NotImplementedError

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as JSON-compatible data, with the registered type under
        ``"type"``; subclasses extend ``super().get_config()``."""
        return {"type": getattr(type(self), "config_name", type(self).__name__)}

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self._parameters.values())

    def error(self, message: str) -> ValueError:
        """A ValueError that names this layer."""
        return ValueError(f"{type(self).__name__} '{self.name}': {message}")

    def check_input(self, x: Array) -> None:
        """Raise unless ``x`` is a batch of this layer's built per-sample input shape."""
        if self.input_shape is None:
            raise RuntimeError(
                f"{type(self).__name__} is not built: put it in a Sequential or call build()"
            )
        if tuple(x.shape[1:]) != self.input_shape or x.ndim != len(self.input_shape) + 1:
            expected = ("N", *self.input_shape)
            raise self.error(
                f"expected input of shape {expected} (channels-last inside the model); "
                f"received {tuple(x.shape)}"
            )


def layer_from_config(config: dict[str, Any]) -> Layer:
    """Build a layer from ``{"type": "Conv2D", "filters": 32, ...}`` (see ``Layer.get_config``).

    Unknown types or arguments raise ``ValueError`` naming what was expected.
    """
    return LAYERS.from_config(config)
