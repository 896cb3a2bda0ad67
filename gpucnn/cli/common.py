"""What every subcommand shares: the user-error types, the one-line parser, the error printer
and the run data and image helpers that more than one command reads."""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import BackendError
from ..checkpoint import CheckpointError
from ..data import Dataset, DatasetError, IdxError, load_dataset
from ..data.download import DownloadError
from ..data.files import load_data
from ..data.images import ImageError
from ..distributed import DistributedError, MPICommunicator

USER_ERRORS = (
    ValueError,
    OSError,
    DatasetError,
    DownloadError,
    CheckpointError,
    BackendError,
    IdxError,
    ImageError,
    DistributedError,
)


class UsageError(Exception):
    """A command-line mistake (printed as one line, exit code 2)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, that takes no abbreviated flags
    (``--epoch 2`` must not silently mean ``--epochs``) and suggests close choices."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            choices = [str(c) for c in action.choices or ()]
            close = difflib.get_close_matches(str(value), choices, n=1)
            if not close:
                raise
            raise argparse.ArgumentError(
                action, f"{exc.message}; did you mean '{close[0]}'?"
            ) from None


class _State:
    """The MPI ranks of the running command (set by a distributed ``train``), read by the
    error printer of ``main``."""

    communicator: MPICommunicator | None = None


STATE = _State()


def error(line: str) -> None:
    """Print an error line on stderr; in a distributed run only rank 0 prints the errors
    that every rank meets together (same flags, all-reduced training decisions)."""
    if STATE.communicator is None or STATE.communicator.is_root:
        print(line, file=sys.stderr)


def add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--plugin`` (repeatable) to a subcommand that reads architectures."""
    parser.add_argument(
        "--plugin",
        action="append",
        metavar="MODULE|FILE.py",
        help="import your module first (a .py file or a module name, repeatable), e.g. one that "
        "registers a custom layer with @LAYERS.register('Name') for JSON architectures and "
        "saved models that use it",
    )


def import_plugins(specs: list[str]) -> None:
    """Import each ``--plugin``: a ``.py`` file (by path, once per file) or a module name
    (searched on ``sys.path`` and in the working folder, as ``python -m`` does).

    Raises
    ------
    UsageError (one line) when a plugin is missing or fails while being imported.
    """
    for spec in specs:
        path = Path(spec)
        if spec.endswith(".py") or path.is_file():
            if not path.is_file():
                raise UsageError(f"--plugin {spec}: expected a Python file; it does not exist")
            _import_file(spec, path.resolve())
            continue
        if os.getcwd() not in sys.path:  # the console script's sys.path lacks the working folder
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            raise UsageError(
                f"--plugin {spec}: expected an importable module or a .py file; received a name "
                f"Python cannot import ({exc})"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the user's code: its failure is one line
            raise UsageError(
                f"--plugin {spec}: importing it raised {type(exc).__name__}: {exc}"
            ) from None


def _import_file(spec: str, path: Path) -> None:
    # one module name per file, so a second --plugin of the same file (or a second command in
    # the same process) does not run it, and register its layers, twice
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"gpucnn_plugin_{path.stem}_{digest}"
    if name in sys.modules:
        return
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"--plugin {spec}: expected a Python source file; cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code: its failure is one line
        del sys.modules[name]
        raise UsageError(
            f"--plugin {spec}: importing it raised {type(exc).__name__}: {exc}"
        ) from None


def load_run_data(run: dict[str, Any], download: bool, warn: bool) -> Dataset:
    """The run's dataset: a named one, or the user's own data at ``run["data"]``."""
    if not run.get("data"):
        return load_dataset(run["dataset"], run.get("data_dir"), download, run["seed"])

    def on_skip(path: str, reason: str) -> None:
        if warn:
            print(f"gpucnn: warning: skipped {path}: {reason}", file=sys.stderr, flush=True)

    return load_data(
        run["data"],
        image_size=run.get("image_size"),
        channels=run.get("channels"),
        test_fraction=run.get("test_fraction", 0.2),
        seed=run["seed"],
        stream=run.get("stream"),
        on_skip=on_skip,
    )


def border_median(images: np.ndarray) -> float:
    """The median of the outermost ring of pixels of (N, C, H, W) images (their background)."""
    ring = np.concatenate(
        [
            images[..., 0, :].ravel(),
            images[..., -1, :].ravel(),
            images[..., :, 0].ravel(),
            images[..., :, -1].ravel(),
        ]
    )
    return float(np.median(ring)) if ring.size else 0.0
