"""Architectures as data: built-in named networks and JSON files listing layers.

A JSON architecture is either a list of layer dicts (the input shape then comes from the
dataset) or ``{"input_shape": [C, H, W], "layers": [...]}``, each layer as produced by
``Layer.get_config()``, e.g. ``{"type": "Conv2D", "filters": 32, "kernel_size": 3}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _reference(num_classes: int) -> list[dict[str, Any]]:
    return [
        {"type": "Conv2D", "filters": 32, "kernel_size": 3},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 64, "kernel_size": 3},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Flatten"},
        {"type": "Dense", "units": 128},
        {"type": "ReLU"},
        {"type": "Dense", "units": num_classes},
    ]


def _lenet(num_classes: int) -> list[dict[str, Any]]:
    # LeNet-5 with ReLU and max pooling; "same" padding on the first conv turns 28x28 into
    # the 32x32 geometry of the original paper.
    return [
        {"type": "Conv2D", "filters": 6, "kernel_size": 5, "padding": "same"},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 16, "kernel_size": 5},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Flatten"},
        {"type": "Dense", "units": 120},
        {"type": "ReLU"},
        {"type": "Dense", "units": 84},
        {"type": "ReLU"},
        {"type": "Dense", "units": num_classes},
    ]


def _small(num_classes: int) -> list[dict[str, Any]]:
    # fits 8x8 digits as well as 28x28 images: "same" padding keeps every size valid
    return [
        {"type": "Conv2D", "filters": 16, "kernel_size": 3, "padding": "same"},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 32, "kernel_size": 3, "padding": "same"},
        {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Flatten"},
        {"type": "Dense", "units": 64},
        {"type": "ReLU"},
        {"type": "Dense", "units": num_classes},
    ]


BUILTIN = {"reference": _reference, "lenet": _lenet, "small": _small}


def architecture(spec: str, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """Resolve a built-in name or a JSON file path to ``{"input_shape", "layers"}``.

    Raises ``ValueError`` for unknown names, unreadable or malformed files, and for an input
    shape that disagrees with the dataset's.
    """
    if spec in BUILTIN:
        return {"input_shape": list(input_shape), "layers": BUILTIN[spec](num_classes)}
    path = Path(spec)
    if not path.suffix and not path.exists():
        raise ValueError(
            f"expected a model name in {sorted(BUILTIN)} or a JSON file; received {spec!r}"
        )
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read architecture file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"architecture file {path} is not valid JSON: {exc}") from None
    if isinstance(data, list):
        data = {"input_shape": list(input_shape), "layers": data}
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise ValueError(
            f"architecture file {path}: expected a list of layers or an object with a 'layers' list"
        )
    data.setdefault("input_shape", list(input_shape))
    if tuple(data["input_shape"]) != tuple(input_shape):
        raise ValueError(
            f"architecture file {path}: input_shape {tuple(data['input_shape'])} does not match the "
            f"dataset's {tuple(input_shape)}"
        )
    return data
