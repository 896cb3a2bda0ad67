"""Parameter and Buffer: the arrays a layer owns.

A :class:`Parameter` is trainable: it has a gradient and an optimizer updates it. A
:class:`Buffer` is persistent but not trainable (running statistics and the like): it is saved,
copied and broadcast with the parameters, and its layer updates it in place during training.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping

from .backend import Array


class _NamedArray:
    """An array a layer owns, with its qualified name; the base of Parameter and Buffer."""

    __slots__ = ("data", "name")

    def __init__(self, data: Array, name: str):
        self.data = data
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        count = 1
        for n in self.data.shape:
            count *= n
        return count


class Parameter(_NamedArray):
    """One trainable array of a layer.

    Parameters
    ----------
    data : the array (any shape), on the model's device and in its dtype.
    name : qualified name, ``"<layer name>.<key>"`` (e.g. ``"conv2d_1.weight"``); it keys
        saved weights and optimizer state.
    decay : whether weight decay applies (True for weights, False for biases).

    Attributes
    ----------
    grad : array of the same shape as ``data`` filled by the layer's ``backward``, or None
        before the first backward pass.
    cast : under a mixed-precision policy, ``data`` cast to the compute dtype by the model at
        the start of each forward pass; None otherwise (see :mod:`gpucnn.precision`).
    """

    __slots__ = ("grad", "decay", "cast")

    def __init__(self, data: Array, name: str, decay: bool = True):
        super().__init__(data, name)
        self.grad: Array | None = None
        self.decay = bool(decay)
        self.cast: Array | None = None

    @property
    def value(self) -> Array:
        """The array a layer computes with: ``cast`` when the model set one, else ``data``."""
        return self.data if self.cast is None else self.cast

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape}, decay={self.decay})"


class Buffer(_NamedArray):
    """One persistent, non-trainable array of a layer (e.g. a running mean).

    Parameters
    ----------
    data : the array (any shape), on the model's device.
    name : qualified name, ``"<layer path>.<key>"`` (e.g. ``"residual_1.batchnorm2d_1.running_mean"``);
        it keys saved model state next to the parameters' names.

    The owning layer writes new values into ``data`` in place (``data[...] = new``) and only in
    training mode, so the array keeps its address: a recorded CUDA graph that updates it stays
    valid, and nothing outside training changes it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Buffer({self.name!r}, shape={self.shape})"


class ParameterView(MutableMapping):
    """``layer.params`` / ``layer.grads``: a dict-like view of one attribute of a layer's
    parameters, keyed by the local name (``"weight"``, ``"bias"``).

    Reading gives the arrays; assigning ``view[key] = array`` replaces the parameter's array
    (as gradient checks do). Keys cannot be added or removed. The ``grads`` view lists only
    parameters whose gradient has been computed.
    """

    def __init__(self, parameters: Mapping[str, Parameter], attribute: str):
        self._parameters = parameters
        self._attribute = attribute

    def __getitem__(self, key: str) -> Array:
        value = getattr(self._parameters[key], self._attribute)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Array) -> None:
        if key not in self._parameters:
            raise KeyError(f"expected a parameter in {sorted(self._parameters)}; received {key!r}")
        setattr(self._parameters[key], self._attribute, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError("parameters cannot be removed from a layer")

    def __iter__(self) -> Iterator[str]:
        return (k for k, p in self._parameters.items() if getattr(p, self._attribute) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(dict(self))


__all__ = ["Buffer", "Parameter", "ParameterView"]
