"""Start a new training from a saved model: fine-tuning, or transfer to a dataset with another
number of classes (the last Dense layer is then replaced by a freshly initialised one).

Used by ``gpucnn train --init MODEL.npz``; from Python::

    model, replaced = init_from("runs/mnist-reference-...", (1, 28, 28), num_classes=5)
    Trainer(model, SGD(lr=0.01)).fit(x, y)
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .backend import Backend
from .checkpoint import MALFORMED, CheckpointError, load_checkpoint
from .layers import Dense
from .model import Sequential, model_file


@dataclass
class ReplacedHead:
    """The Dense layer that :func:`init_from` replaced: its path and its old and new units."""

    path: str
    old_units: int
    new_units: int

    def __str__(self) -> str:
        return (
            f"replaced the last Dense layer '{self.path}' ({self.old_units} classes) by a new "
            f"one with {self.new_units} outputs, freshly initialised"
        )


def init_from(
    path: str | os.PathLike,
    input_shape: tuple[int, ...],
    num_classes: int,
    backend: str | ModuleType | Backend | None = "auto",
    seed: int = 0,
    dtype: str | None = None,
) -> tuple[Sequential, ReplacedHead | None]:
    """The saved model at ``path`` with its weights, ready to train on new data.

    Parameters
    ----------
    path : a model or checkpoint ``.npz``, or a run folder (its ``model.npz``).
    input_shape : the new data's per-sample shape, ``(C, H, W)``: must be the model's.
    num_classes : K of the new data; when the model has another number of outputs, its last
        Dense layer (which only parameter-free layers may follow) gets K units and fresh
        weights drawn from ``seed``; every other array keeps its saved value.
    backend, seed, dtype : as for :class:`~gpucnn.Sequential` (``seed`` seeds dropout and
        the new layer; ``dtype`` None keeps the saved one).

    Returns
    -------
    (model, replaced) : ``replaced`` describes the new Dense layer, or is None.

    Raises
    ------
    CheckpointError (a ``ValueError``) for an unreadable file, an input shape that differs, or
    a model whose outputs do not come from a Dense layer that could be replaced.
    """
    file = model_file(path)
    checkpoint = load_checkpoint(file)
    config = checkpoint.meta["architecture"]
    saved_shape = tuple(config.get("input_shape") or ())
    if saved_shape != tuple(input_shape):
        raise CheckpointError(
            f"{file}: expected a model for the data's input shape {tuple(input_shape)}; "
            f"received a model that takes {saved_shape}"
        )
    model = _build(config, file, backend, seed, dtype)
    replaced = None
    if tuple(model.output_shape) != (num_classes,):
        index = _head_index(model, file, num_classes)
        head = model.layers[index]
        config = copy.deepcopy(config)
        config["layers"][index]["units"] = num_classes
        replaced = ReplacedHead(head.path, head.units, num_classes)
        fresh = _build(config, file, backend, seed, dtype)
        state = {**checkpoint.model_state}
        state.update({k: v for k, v in fresh.state_dict().items() if k.startswith(head.path + ".")})
        model = fresh
    else:
        state = checkpoint.model_state
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"{file}: model state does not fit its architecture: {exc}") from None
    return model, replaced


def _build(
    config: dict[str, Any], file: Path, backend: Any, seed: int, dtype: str | None
) -> Sequential:
    try:
        return Sequential.from_config(config, backend=backend, seed=seed, dtype=dtype)
    except (*MALFORMED, MemoryError) as exc:
        raise CheckpointError(f"{file}: cannot rebuild the saved architecture ({exc})") from None


def _head_index(model: Sequential, file: Path, num_classes: int) -> int:
    """The index of the top-level Dense layer that makes the outputs (only parameter-free
    layers such as ReLU or Dropout after it), or a CheckpointError saying why there is none."""
    for index in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[index]
        if isinstance(layer, Dense):
            return index
        if layer.parameters() or layer.buffers():
            break
    raise CheckpointError(
        f"{file}: expected a model whose outputs come from a Dense layer (to replace it for "
        f"{num_classes} classes); received outputs {model.output_shape} from "
        f"{type(model.layers[-1]).__name__} '{model.layers[-1].path}'"
    )


__all__ = ["ReplacedHead", "init_from"]
