"""The files commands write besides a run folder (``--json``, ``export -o``): checked before
any work, so that an output never replaces one of the command's own inputs or a model,
checkpoint or run file it did not write, and written so that a failed write names the file
and leaves the previous one intact."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .. import runfolder
from .common import UsageError

# First bytes of the files an output must not replace unasked: .npz archives (models,
# checkpoints, users' datasets) and .npy arrays; JSON and ONNX outputs are neither.
PROTECTED_MAGIC = {
    b"PK\x03\x04": "a .npz archive (model, checkpoint or data)",
    b"\x93NUMPY": "a .npy array",
}


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one existing file (through symlinks, ``./``, ``..``)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them does not exist (or is not a valid path)
        return False


def protected_kind(path: Path) -> str | None:
    """What the existing file at ``path`` holds when it is one an output must not replace
    without being asked: a run folder's result file or lock, a .npz or a .npy; else None."""
    if not path.is_file():  # missing, a folder, or a device or FIFO (read without blocking)
        return None
    real = path.resolve()
    # a lone metrics.json may be an earlier --json output; beside a model or checkpoint it is
    # a run's record
    if real.name in runfolder.RESULT_FILES and len(runfolder.earlier_results(real.parent)) > 1:
        return f"a run folder's {real.name}"
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return None  # unreadable: the write itself will say what is wrong
    for magic, kind in PROTECTED_MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def check_output(
    path: str | os.PathLike,
    flag: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool | None = None,
) -> Path:
    """Refuse an output ``path`` that is one of ``inputs`` or a file :func:`protected_kind`
    names (unless ``overwrite`` is True); ``overwrite`` None: the command has no --overwrite.

    Returns the path as a :class:`~pathlib.Path`; raises :class:`UsageError` naming ``flag``.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: expected a file name; received a folder")
    for source in inputs:
        if source is not None and same_file(path, source):
            raise UsageError(
                f"{flag} {path} is the input {source}: writing it would destroy what is "
                "being read; choose another output file"
            )
    kind = protected_kind(path)
    if kind is not None and not overwrite:
        how = "pass --overwrite to replace it, or " if overwrite is not None else ""
        raise UsageError(
            f"{flag} {path} exists and is {kind}, which this command did not write; "
            f"{how}choose another output file"
        )
    return path


def write_failed(path: Path, exc: OSError) -> UsageError:
    """The one-line error of a failed write of ``path`` (a full disk, no permission), saying
    whether a previous file is intact (every writer here writes a temporary file first)."""
    kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    return UsageError(f"cannot write {path}: {exc.strerror or exc}; {kept}")


def write_output(path: Path, text: str) -> None:
    """Write ``text`` to ``path``: regular files through a temporary file and a rename (a full
    disk leaves the previous file intact), devices and FIFOs (``/dev/stdout``) in place.

    Raises :class:`UsageError` naming ``path`` when the write fails.
    """
    if path.exists() and not path.is_file():  # through links: /dev/stdout may be a pipe
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        return
    # a symlink stays a symlink: the file it points to is what gets replaced
    target = path.resolve() if path.is_symlink() else path
    runfolder.atomic_write(target, lambda f: f.write(text.encode()), UsageError)
