"""What every subcommand shares: the user-error types, the one-line parser, the error printer
and the run data and image helpers that more than one command reads."""

from __future__ import annotations

import argparse
import difflib
import sys
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
