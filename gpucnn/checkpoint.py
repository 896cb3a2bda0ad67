"""Checkpoints: one ``.npz`` with the model state, optimizer state and a JSON description.

The description (architecture, optimizer config, epoch, RNG states, anything the caller
adds) is stored as a plain unicode array, so loading uses ``allow_pickle=False`` and never
executes code from the file. Writes go to a temporary file in the same folder that is then
renamed over the target: a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Backend
from .layers import Dense, Flatten
from .model import Sequential
from .runfolder import atomic_write
from .safe_read import MAX_JSON_BYTES, NpyHeader, NpzArchive, open_regular

NPZ_MAGIC = b"PK\x03\x04"
MALFORMED = (KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError)

FORMAT = "gpucnn-checkpoint"
# Version 3: the whole model state (parameters and buffers, named from their place in the layer
# tree) under "model/". Version 2 held parameters only, under "param/" (models then had no
# buffers, and their names are the same). Version 1 also stored the rows of a Dense weight
# that follows Flatten in the internal (H, W, C) order; such files are converted on load
# (weights and optimizer buffers) to the public (C, H, W) order, so they predict as before.
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
STATE_PREFIXES = {1: "param/", 2: "param/", 3: "model/"}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds: ``meta`` (JSON data), the model state (parameters and
    buffers, as ``model.state_dict()`` gives it), optimizer arrays and further ``state``
    arrays (e.g. a callback's best weights)."""

    meta: dict[str, Any]
    model_state: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The model state (the name older code used, when it held parameters only)."""
        return self.model_state


def save_checkpoint(
    path: str | os.PathLike,
    model: Sequential,
    optimizer=None,
    state_arrays: dict[str, np.ndarray] | None = None,
    **meta: Any,
) -> Path:
    """Atomically write ``model`` (and ``optimizer``) to ``path``; extra keywords go to meta.

    ``state_arrays`` are further arrays (e.g. a callback's best weights), read back as
    ``Checkpoint.state``. The file gets the mode of any new file (0666 less the umask).

    Raises
    ------
    CheckpointError when the file cannot be written (disk full, no permission); the message
    says whether a previous ``path`` is intact.
    """
    path = Path(path)
    info: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": model.get_config(),
        "model_random": model.random.get_state(),
        **meta,
    }
    arrays = {f"{STATE_PREFIXES[VERSION]}{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        state = optimizer.state_dict()  # JSON parts to meta, buffers to arrays
        info["optimizer"] = {k: v for k, v in state.items() if k != "arrays"}
        arrays.update({f"optim/{k}": v for k, v in state["arrays"].items()})
    arrays.update({f"state/{k}": v for k, v in (state_arrays or {}).items()})
    arrays["meta"] = np.array(json.dumps(info))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write {path}: {exc.strerror or exc}; nothing was written"
        ) from None
    atomic_write(path, lambda f: np.savez(f, **arrays), CheckpointError)
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint without unpickling anything.

    Only the members a checkpoint holds are read, each after its declared shape (from the
    ``.npy`` header, read without inflating the data) is checked against the saved
    architecture: a small file cannot inflate into gigabytes (see :mod:`gpucnn.safe_read`).

    Raises
    ------
    CheckpointError naming ``path`` for a missing, non-regular, corrupt or mismatched file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    with open_regular(path, "checkpoint file", CheckpointError) as f:
        try:
            head = f.read(512)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head.startswith(NPZ_MAGIC):
        raise CheckpointError(
            f"{path} is not a gpucnn checkpoint: expected a .npz archive; received {_describe_bytes(head)}"
        )
    with NpzArchive(path, "gpucnn checkpoint", CheckpointError) as archive:
        meta = _read_meta(path, archive)
        expected = _expected_shapes(path, meta)
        prefix = STATE_PREFIXES[meta["version"]]
        arrays = {}
        for name in archive.names:
            if name != "meta":
                _check_member(path, name, archive.header(name), expected, prefix)
        for name in archive.names:
            if name != "meta":
                arrays[name] = archive.read(name)
    params = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    optim = {k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}
    state = {k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")}
    for name, value in params.items():
        if not np.all(np.isfinite(value)):
            raise CheckpointError(
                f"{path}: model state {name} holds NaN/inf or non-float values (dtype {value.dtype}); "
                "the file is corrupt or comes from a diverged run"
            )
    if meta["version"] == 1:
        _upgrade_version_1(path, meta, params, optim)
    return Checkpoint(meta, params, optim, state)


def _read_meta(path: Path, archive: NpzArchive) -> dict[str, Any]:
    """The checkpoint's JSON description, bounded like any JSON file, format and version checked."""
    if "meta" not in archive:
        raise CheckpointError(f"{path} is not a gpucnn checkpoint (no readable 'meta' entry)")
    header = archive.header("meta")
    if header.shape != () or header.dtype.kind != "U" or header.nbytes > 4 * MAX_JSON_BYTES:
        raise CheckpointError(
            f"{path}: expected 'meta' to be one text string of at most {MAX_JSON_BYTES:,} "
            f"characters; received {header.describe()}"
        )
    try:
        meta = json.loads(str(archive.read("meta")))
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(
            f"{path} is not a gpucnn checkpoint (no readable 'meta' entry)"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        meta = meta if isinstance(meta, dict) else {}
        raise CheckpointError(
            f"{path}: expected format {FORMAT!r}; received {meta.get('format')!r}"
        )
    if meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: expected checkpoint version {' or '.join(map(str, READABLE_VERSIONS))} "
            f"(a newer gpucnn may have written it); received {meta.get('version')!r}"
        )
    if not isinstance(meta.get("architecture"), dict):
        raise CheckpointError(f"{path}: malformed checkpoint: no architecture description")
    return meta


def _expected_shapes(path: Path, meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter and buffer of the saved architecture (what the arrays
    must have); rebuilding it on NumPy is the one source of those shapes."""
    try:
        model = Sequential.from_config(meta["architecture"], backend="numpy")
    except (*MALFORMED, MemoryError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the saved architecture ({exc})") from None
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def _check_member(
    path: Path, name: str, header: NpyHeader, expected: dict[str, tuple[int, ...]], prefix: str
) -> None:
    """Refuse a member the architecture does not imply, before its data is inflated.

    ``<prefix><p>`` (the model state: ``model/`` from version 3, ``param/`` before) and
    ``optim/<p>/<slot>`` must have the shape of parameter or buffer ``p``; ``state/...``
    arrays (callback state, e.g. the best weights) that end in a parameter name must have
    its shape, and any other may be at most as large as the whole model state.
    """
    kind, _, rest = name.partition("/")
    received = f"received {header.describe()}"
    if kind in (prefix[:-1], "optim", "state") and header.dtype.kind not in "fiub":
        raise CheckpointError(f"{path}: member {name!r}: expected numbers; {received}")
    if kind == prefix[:-1]:
        if rest not in expected:
            raise CheckpointError(
                f"{path}: model state {rest!r} is not in the saved architecture "
                f"(expected names in {sorted(expected)})"
            )
        if header.dtype.kind != "f":
            raise CheckpointError(
                f"{path}: model state {rest} holds NaN/inf or non-float values (dtype {header.dtype}); "
                "the file is corrupt or comes from a diverged run"
            )
        if header.shape != expected[rest]:
            raise CheckpointError(
                f"{path}: model state {rest}: expected shape {expected[rest]} (the saved "
                f"architecture's); {received}"
            )
    elif kind == "optim":
        parameter = rest.rpartition("/")[0]
        if parameter not in expected:
            raise CheckpointError(
                f"{path}: optimizer state {rest!r} is for no parameter of the saved architecture "
                f"(expected names in {sorted(expected)})"
            )
        if header.shape != expected[parameter]:
            raise CheckpointError(
                f"{path}: optimizer state {rest}: expected shape {expected[parameter]} (the "
                f"parameter's); {received}"
            )
    elif kind == "state":
        parameter = rest.partition("/")[2]
        limit = sum(8 * math.prod(shape) for shape in expected.values())
        if parameter in expected and header.shape != expected[parameter]:
            raise CheckpointError(
                f"{path}: state {rest}: expected shape {expected[parameter]} (parameter "
                f"{parameter}'s); {received}"
            )
        if header.nbytes > limit:
            raise CheckpointError(
                f"{path}: state {rest}: expected at most {limit:,} bytes (the model's state in "
                f"float64); {received} ({header.nbytes:,} bytes)"
            )
    else:
        raise CheckpointError(
            f"{path}: unexpected member {name!r}: a gpucnn checkpoint holds 'meta', "
            f"'{prefix}...', 'optim/...' and 'state/...' arrays only"
        )


def _upgrade_version_1(
    path: Path, meta: dict[str, Any], params: dict[str, np.ndarray], optim: dict[str, np.ndarray]
) -> None:
    """Reorder, in place, the rows of each Dense weight after an image Flatten from the
    version-1 (H, W, C) order to the (C, H, W) order, with the optimizer buffers of the same
    weight (e.g. ``dense_1.weight/velocity``); then mark ``meta`` as the current version."""
    try:
        model = Sequential.from_config(meta["architecture"], backend="numpy")
    except (*MALFORMED, MemoryError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the saved architecture ({exc})") from None
    image = None  # the internal (H, W, C) shape a Flatten received, until the next Dense
    for layer in model.modules():  # version-1 models are flat: modules() is their layer list
        if isinstance(layer, Flatten):
            image = layer.input_shape if len(layer.input_shape) == 3 else None
        elif isinstance(layer, Dense) and image is not None:
            H, W, C = image
            name = f"{layer.path}.weight"
            buffers = [(optim, key) for key in optim if key.startswith(name + "/")]
            for store, key in [(params, name), *buffers]:
                rows = store.get(key)
                if rows is not None and rows.ndim == 2 and rows.shape[0] == H * W * C:
                    hwc = rows.reshape(H, W, C, rows.shape[1])
                    store[key] = np.ascontiguousarray(
                        hwc.transpose(2, 0, 1, 3).reshape(C * H * W, rows.shape[1])
                    )
            image = None
    meta["upgraded_from_version"] = meta["version"]
    meta["version"] = VERSION


def restore_model(checkpoint: Checkpoint, model: Sequential) -> None:
    """Load the model state into ``model`` after checking that the architectures are identical."""
    saved = checkpoint.meta["architecture"]
    current = model.get_config()
    if (
        saved.get("input_shape") != current["input_shape"]
        or saved.get("layers") != current["layers"]
    ):
        raise CheckpointError(
            "checkpoint architecture does not match the model: expected "
            f"{_describe(current)}; received {_describe(saved)}"
        )
    try:
        model.load_state_dict(checkpoint.model_state)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint model state does not fit the model: {exc}") from None
    try:
        model.random.set_state(checkpoint.meta["model_random"])
    except MALFORMED as exc:
        raise CheckpointError(f"checkpoint random state is malformed ({exc!r})") from None


def restore_optimizer(checkpoint: Checkpoint, optimizer) -> None:
    """Load the saved optimizer state (buffers, step count, lr) into ``optimizer``.

    Raises
    ------
    CheckpointError if the checkpoint holds no optimizer state or a different optimizer's.
    """
    saved = checkpoint.meta.get("optimizer")
    if saved is None:
        raise CheckpointError("this checkpoint holds no optimizer state")
    try:
        optimizer.load_state_dict({**saved, "arrays": checkpoint.optimizer})
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {exc}") from None


def load_model(
    path: str | os.PathLike, backend: str | Backend | None = "auto"
) -> tuple[Sequential, Checkpoint]:
    """Rebuild the saved architecture on ``backend`` and load its weights."""
    checkpoint = load_checkpoint(path)
    try:
        model = Sequential.from_config(checkpoint.meta["architecture"], backend=backend)
    except (*MALFORMED, MemoryError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the saved architecture ({exc})") from None
    try:
        restore_model(checkpoint, model)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model, checkpoint


def _describe_bytes(head: bytes) -> str:
    """What a file's first bytes look like, for messages."""
    if head.startswith(b"\x93NUMPY"):
        return "a .npy array (a single array, not a saved model)"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\x1f\x8b"):
        return "gzip data"
    if not head:
        return "an empty file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"binary data starting with {head[:8].hex()}"
    return f"a text file starting with {text[:20]!r}"


def _describe(config: dict[str, Any]) -> str:
    return f"input {tuple(config['input_shape'])} -> {_describe_layers(config['layers'])}"


def _describe_layers(layers: list[dict[str, Any]]) -> str:
    """``[Conv2D(filters=8, ...), Residual(layers=[...], shortcut=None)]`` for messages."""

    def value(v: Any) -> str:
        if isinstance(v, list) and v and isinstance(v[0], dict):
            return _describe_layers(v)
        return _describe_layers([v])[1:-1] if isinstance(v, dict) else str(v)

    return (
        "["
        + ", ".join(
            f"{layer.get('type')}("
            + ", ".join(f"{k}={value(v)}" for k, v in layer.items() if k not in ("type", "name"))
            + ")"
            for layer in layers
        )
        + "]"
    )
