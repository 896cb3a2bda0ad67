"""The layer contract shared by every layer, containers included.

A model is a tree of layers. A layer is constructed with its hyper-parameters, then *built*
for a per-sample input shape (which creates its parameters and buffers and builds its
children), then called:

* ``forward(x, training)`` returns the output and keeps only what ``backward`` needs;
  ``training`` (False by default: inference) reaches every layer of the tree, and only a
  training pass may update a buffer;
* ``backward(grad_out)`` sets the ``grad`` of each of its :class:`~gpucnn.parameter.Parameter`
  objects and returns the input gradient; it never mutates its inputs.

Every layer answers ``children()`` (the layers it holds directly), ``modules()`` (itself and
every descendant, depth first), ``parameters()`` (trainable) and ``buffers()`` (persistent,
non-trainable state such as running statistics), the last two over its whole subtree. Names come
from the position in the tree: a container names each unnamed child ``<kind>_<k>`` among its
siblings, so a layer's ``path`` (``residual_1.conv2d_2``) and its arrays' names
(``residual_1.conv2d_2.weight``) are unique by construction.

Machinery asks layers instead of keeping type tables: ``uses_randomness`` (a recorded CUDA graph
would freeze its draws), ``batch_statistics`` (data-parallel training synchronises them),
``exportable`` / ``onnx_nodes(graph)`` (each layer writes its own ONNX nodes), and the fused
steps of :mod:`gpucnn.layers.fused` say which layer runs they replace.

Layers register under their class name (``LAYERS``), so ``layer_from_config(get_config())``
rebuilds any of them; the base class supplies ``"type"`` and subclasses add their arguments.

Per-sample shapes are channels-last inside the library: an image is ``(H, W, C)`` and a batch
``(N, H, W, C)`` (see :mod:`gpucnn.functional.im2col`). Messages show image shapes in the public
``(C, H, W)`` order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..backend import Array
from ..parameter import Buffer, Parameter, ParameterView
from ..random import Random
from ..registry import Registry

Shape = tuple[int, ...]
LAYERS = Registry("layer", entry_point_group="gpucnn.layers")


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
    """Base class of all layers. Subclasses implement ``_build``, ``forward``, ``backward``;
    containers also ``children``; exportable layers ``onnx_nodes``.

    Attributes
    ----------
    name : the layer's name among its siblings (given, or ``<kind>_<k>`` from its container).
    path : its qualified name in the model's tree (``residual_1.conv2d_2``); set when built.
    params : dict-like view ``{key: array}`` of this layer's own parameters' arrays (assignable).
    grads : dict-like view ``{key: array}`` of the gradients computed so far.
    uses_randomness : class attribute, True for layers that draw random numbers in training
        (dropout masks): a recorded CUDA graph would replay the same draws.
    autocast : class attribute; under a mixed-precision policy the model casts the parameters
        of such layers to the compute dtype before each forward pass (they compute with
        ``parameter.value``, which a layer of your own should use too: ``parameter.data``
        stays float32 and would promote its output). False (BatchNorm) keeps them as they
        are: the layer computes in its parameters' dtype and casts its output to its input's
        (see :mod:`gpucnn.precision`).
    batch_statistics : class attribute, True for layers whose training output depends on the
        whole batch (BatchNorm); data-parallel training sets their ``sum_over_processes`` (a
        function summing a 1-d array over the ranks; None otherwise) for the time of ``fit``,
        so the statistics are those of the global batch.
    """

    uses_randomness: bool = False
    autocast: bool = True
    batch_statistics: bool = False
    sum_over_processes = None

    def __init__(self, name: str | None = None):
        if name is not None and (not isinstance(name, str) or not name or "." in name):
            raise ValueError(
                f"{type(self).__name__}: expected name as a non-empty string without '.'; "
                f"received {name!r}"
            )
        self.name = name
        self.path: str | None = None
        self._parameters: dict[str, Parameter] = {}
        self._buffers: dict[str, Buffer] = {}
        self.input_shape: Shape | None = None
        self.output_shape: Shape | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def build(self, input_shape: Shape, context: BuildContext, path: str | None = None) -> Shape:
        """Create parameters and buffers for per-sample ``input_shape`` (and build children);
        return the per-sample output shape. ``path`` is the layer's qualified name (its
        container passes it; a layer built alone is named after its kind)."""
        if self.name is None:
            self.name = type(self).__name__.lower()
        self.path = self.name if path is None else path
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(self._build(self.input_shape, context))
        return self.output_shape

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        return input_shape

    def add_parameter(self, key: str, data: Array, decay: bool) -> Parameter:
        """Create the parameter ``key`` (named ``"<path>.<key>"``) holding ``data``."""
        parameter = Parameter(data, f"{self.path}.{key}", decay)
        self._parameters[key] = parameter
        return parameter

    def add_buffer(self, key: str, data: Array) -> Buffer:
        """Create the buffer ``key`` (named ``"<path>.<key>"``) holding ``data``: persistent
        state that is saved with the model but not trained. Update it in place, in training
        only: ``buffer.data[...] = new``."""
        buffer = Buffer(data, f"{self.path}.{key}")
        self._buffers[key] = buffer
        return buffer

    # ------------------------------------------------------------------ the tree
    def children(self) -> list[Layer]:
        """The layers this layer holds directly (none for a plain layer)."""
        return []

    def modules(self) -> Iterator[Layer]:
        """This layer and every layer below it, depth first, in execution order."""
        yield self
        for child in self.children():
            yield from child.modules()

    def parameters(self) -> list[Parameter]:
        """The trainable parameters of this layer and its descendants, in tree order."""
        return [p for layer in self.modules() for p in layer._parameters.values()]

    def buffers(self) -> list[Buffer]:
        """The buffers (persistent, non-trainable state) of this layer and its descendants."""
        return [b for layer in self.modules() for b in layer._buffers.values()]

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

    def forward(self, x: Array, training: bool = False) -> Array:
        raise NotImplementedError

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        raise NotImplementedError

    # ------------------------------------------------------------------ description
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as JSON-compatible data, with the registered type under
        ``"type"``; subclasses extend ``super().get_config()``."""
        return {"type": getattr(type(self), "config_name", type(self).__name__)}

    def onnx_nodes(self, graph: Any) -> None:
        """Append this layer's ONNX nodes to ``graph`` (see :mod:`gpucnn.export`); a layer
        that overrides it is exportable."""
        raise NotImplementedError(f"{type(self).__name__} has no ONNX form")

    @property
    def exportable(self) -> bool:
        """Whether this layer writes itself to ONNX (its class overrides ``onnx_nodes``)."""
        return type(self).onnx_nodes is not Layer.onnx_nodes

    @property
    def num_params(self) -> int:
        """Number of trainable values in this layer and its descendants."""
        return sum(p.size for p in self.parameters())

    def error(self, message: str) -> ValueError:
        """A ValueError that names this layer."""
        return ValueError(f"{type(self).__name__} '{self.path or self.name}': {message}")

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
