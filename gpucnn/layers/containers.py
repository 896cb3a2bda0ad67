"""Containers: layers made of layers. ``Residual`` here; ``Sequential`` (also the model) in
:mod:`gpucnn.model`.

A container holds its children in order, names the unnamed ones ``<kind>_<k>`` among their
siblings, builds them one after the other, and runs them as the fused steps
:func:`~gpucnn.layers.fused.plan` finds. Children may be containers, so blocks nest.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from ..backend import Array
from .base import LAYERS, BuildContext, Layer, Shape, layer_from_config, public_shape
from .fused import plan


def as_layer(spec: Layer | dict[str, Any], where: str) -> Layer:
    """A layer object, or one built from its config dict (as a JSON architecture gives)."""
    if isinstance(spec, dict):
        return layer_from_config(spec)
    if not isinstance(spec, Layer):
        raise ValueError(
            f"{where}: expected a Layer or a layer config dict; received {type(spec).__name__} {spec!r}"
        )
    return spec


class Container(Layer):
    """A layer that runs its children one after the other.

    Parameters
    ----------
    layers : the children, Layer objects or their config dicts, in order; at least one.
    name : as for every layer.

    Input: the first child's input; output: the last child's output.
    """

    def __init__(self, layers: Sequence[Layer | dict[str, Any]], name: str | None = None):
        super().__init__(name)
        kind = type(self).__name__
        if isinstance(layers, (str, bytes, dict)) or not isinstance(layers, Sequence) or not layers:
            raise ValueError(f"{kind}: expected a non-empty list of layers; received {layers!r}")
        self.layers = [as_layer(layer, kind) for layer in layers]
        self.steps: list = []
        self._adopt(self.layers)

    def _adopt(self, layers: list[Layer]) -> None:
        """Refuse a layer listed twice or already held by another (live) container: building it
        again would replace the weights the other one trains."""
        seen: set[int] = set()
        for layer in layers:
            if id(layer) in seen:
                raise ValueError(
                    f"layer {layer!r} appears twice in this model; create one layer object per position"
                )
            seen.add(id(layer))
            owner = getattr(layer, "_owner", None)
            if owner is not None and owner() is not None and owner() is not self:
                raise ValueError(
                    f"layer '{layer.name}' ({type(layer).__name__}) already belongs to another "
                    "Sequential or block; create a new layer (e.g. "
                    "layer_from_config(layer.get_config())) for this one"
                )
        for layer in layers:
            layer._owner = weakref.ref(self)

    def children(self) -> list[Layer]:
        return list(self.layers)

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        shape = self._build_children(self.layers, input_shape, context)
        self.steps = plan(self.layers)
        return shape

    def _build_children(
        self, layers: Sequence[Layer], input_shape: Shape, context: BuildContext
    ) -> Shape:
        """Name the unnamed ``layers`` ``<kind>_<k>`` (k counting per kind among them), build
        each for the shape its predecessor produces; return the last output shape."""
        counts: dict[str, int] = {}
        for layer in layers:
            if layer.name is None:
                kind = type(layer).__name__.lower()
                counts[kind] = counts.get(kind, 0) + 1
                layer.name = f"{kind}_{counts[kind]}"
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise self.error(f"expected unique layer names; received {names}")
        shape = input_shape
        for layer in layers:
            shape = layer.build(shape, context, self._child_path(layer.name))
        return shape

    def _child_path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def forward(self, x: Array, training: bool = False) -> Array:
        self.check_input(x)
        for step in self.steps:
            x = step.forward(x, training)
        return x

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        g = grad_out
        for index in range(len(self.steps) - 1, -1, -1):
            g = self.steps[index].backward(g, need_input_grad=index > 0 or need_input_grad)
        return g

    def onnx_nodes(self, graph: Any) -> None:
        for layer in self.layers:
            layer.onnx_nodes(graph)

    @property
    def exportable(self) -> bool:
        return all(layer.exportable for layer in self.children())

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "layers": [child_config(layer) for layer in self.layers]}


def child_config(layer: Layer) -> dict[str, Any]:
    """A child's config with its name, so a rebuilt tree has the same names."""
    return dict(layer.get_config(), name=layer.name)


@LAYERS.register("Residual")
class Residual(Container):
    """A residual block: ``f(x) + shortcut(x)``, ``f`` being ``layers`` run in order.

    Parameters
    ----------
    layers : the block's body (Layer objects or config dicts), at least one.
    shortcut : None for the identity (the body must keep the input's shape), or a layer (or
        its config dict) mapping the input to the body's output shape, typically a strided
        1x1 ``Conv2D`` when the body changes the channels or the size; a ``Sequential`` for
        several. It is named ``shortcut`` in the tree (``residual_1.shortcut.weight``).

    Input (N, H, W, C) -> output (N, OH, OW, F) (channels-last inside a model), the body's.
    Backward sums the body's and the shortcut's input gradients. ONNX: the body's nodes,
    the shortcut's, then Add.

    Example
    -------
    >>> Residual([Conv2D(16, 3, padding="same"), ReLU(), Conv2D(16, 3, padding="same")])
    >>> Residual([Conv2D(32, 3, stride=2, padding=1), ReLU(), Conv2D(32, 3, padding=1)],
    ...          shortcut=Conv2D(32, 1, stride=2))
    """

    def __init__(
        self,
        layers: Sequence[Layer | dict[str, Any]],
        shortcut: Layer | dict[str, Any] | None = None,
        name: str | None = None,
    ):
        super().__init__(layers, name)
        self.shortcut = None if shortcut is None else as_layer(shortcut, "Residual shortcut")
        if self.shortcut is not None:
            if self.shortcut.name is None:
                self.shortcut.name = "shortcut"
            self._adopt([*self.layers, self.shortcut])

    def children(self) -> list[Layer]:
        return [*self.layers, *([self.shortcut] if self.shortcut is not None else [])]

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        out = super()._build(input_shape, context)
        if self.shortcut is None:
            short, what = input_shape, "the input (identity shortcut)"
        else:
            if self.shortcut.name in {layer.name for layer in self.layers}:
                raise self.error(
                    f"expected a shortcut name unlike the body's; received {self.shortcut.name!r}"
                )
            short = self.shortcut.build(input_shape, context, self._child_path(self.shortcut.name))
            what = f"the shortcut {type(self.shortcut).__name__}"
        if tuple(short) != tuple(out):
            raise self.error(
                f"expected the body's output shape {public_shape(out)} to equal that of {what}; "
                f"received {public_shape(short)} (give a shortcut such as a strided 1x1 Conv2D "
                "that maps the input to the body's shape)"
            )
        return out

    def forward(self, x: Array, training: bool = False) -> Array:
        out = super().forward(x, training)
        return out + (x if self.shortcut is None else self.shortcut.forward(x, training))

    def backward(self, grad_out: Array, need_input_grad: bool = True) -> Array | None:
        grad_body = super().backward(grad_out, need_input_grad)
        if self.shortcut is None:
            grad_short = grad_out
        else:  # runs even without an input gradient: it sets the shortcut's parameter grads
            grad_short = self.shortcut.backward(grad_out, need_input_grad)
        return grad_body + grad_short if need_input_grad else None

    def onnx_nodes(self, graph: Any) -> None:
        block_input = graph.current
        super().onnx_nodes(graph)
        body_output = graph.current
        graph.current = block_input
        if self.shortcut is not None:
            self.shortcut.onnx_nodes(graph)
        graph.node("Add", self, [body_output])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["shortcut"] = None if self.shortcut is None else child_config(self.shortcut)
        return config
