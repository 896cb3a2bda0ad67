"""Layers: objects that own parameters and forward caches and delegate math to ``functional``."""

from __future__ import annotations

from typing import Any

from .base import BuildContext, Layer, public_shape
from .conv import Conv2D
from .core import Dense, Dropout, Flatten, ReLU
from .pooling import AvgPool2D, MaxPool2D

LAYER_TYPES: dict[str, type[Layer]] = {
    cls.__name__: cls for cls in (Conv2D, MaxPool2D, AvgPool2D, Dense, ReLU, Flatten, Dropout)
}


def layer_from_config(config: dict[str, Any]) -> Layer:
    """Build a layer from ``{"type": "Conv2D", "filters": 32, ...}`` (see ``Layer.get_config``).

    Unknown types or arguments raise ``ValueError`` naming what was expected.
    """
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"expected a layer as a dict with a 'type' key; received {config!r}")
    kwargs = dict(config)
    kind = kwargs.pop("type")
    cls = LAYER_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"expected a layer type in {sorted(LAYER_TYPES)}; received {kind!r}")
    for key in ("kernel_size", "stride", "pool_size", "padding"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for layer {kind}: {exc}") from None


__all__ = [
    "AvgPool2D",
    "BuildContext",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "LAYER_TYPES",
    "Layer",
    "MaxPool2D",
    "ReLU",
    "layer_from_config",
    "public_shape",
]
