"""Run folders: the files one training run writes, guarded so that no result is ever lost.

A run folder holds ``checkpoint.npz`` (resumable state), ``model.npz`` (final weights) and
``metrics.json``. While a process trains into it, the folder is locked (``.lock``, an
advisory ``flock`` holding the owner's process id), so a second writer is refused instead
of silently mixing two runs. A lock left by a process that died is detected and reported.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .safe_read import file_kind

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the pid file alone guards the folder
    fcntl = None

RESULT_FILES = ("model.npz", "checkpoint.npz", "metrics.json")
LOCK_NAME = ".lock"
TEMP_PATTERNS = (".checkpoint.npz.*.tmp", ".model.npz.*.tmp", ".metrics.json.*.tmp")


class RunFolderError(ValueError):
    """A run folder cannot be used: it holds an earlier run, is locked or is not writable."""


def earlier_results(folder: Path) -> list[str]:
    """The result files of an earlier run present in ``folder``."""
    return [name for name in RESULT_FILES if (folder / name).exists()]


def prepare(folder: Path, flag: str = "--out") -> list[Path]:
    """Create ``folder`` and check that files can be written there, before any training.

    Returns the folders this call created, ``folder`` first (for :func:`remove_if_empty`).

    Raises
    ------
    RunFolderError naming ``flag`` when the folder cannot be created or written.
    """
    created, missing = [], folder
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise RunFolderError(
            f"{flag} {folder}: cannot write there ({exc.strerror or exc}); choose a writable folder"
        ) from None
    return created


def remove_if_empty(created: list[Path]) -> None:
    """Remove the folders :func:`prepare` created, innermost first, as long as they are empty:
    a run that stopped before writing anything (a bad flag found late, an unreadable file)
    leaves no empty folder behind. A folder with anything in it is kept."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): it and its parents stay
            return


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files an interrupted write left in ``folder`` (only while locked)."""
    removed = []
    for pattern in TEMP_PATTERNS:
        for path in folder.glob(pattern):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _read_owner(path: Path) -> tuple[int | None, str]:
    try:
        text = path.read_text().split()
        return int(text[0]), (text[1] if len(text) > 1 else "")
    except (OSError, ValueError, IndexError):
        return None, ""


@contextlib.contextmanager
def locked(folder: Path, report=None) -> Iterator[Path]:
    """Hold the lock of run folder ``folder`` for the duration of the ``with`` block.

    Parameters
    ----------
    folder : an existing, writable folder.
    report : called with one line when a stale lock (of a dead process) is taken over.

    Raises
    ------
    RunFolderError when another live process holds the lock.
    """
    path = folder / LOCK_NAME
    host = socket.gethostname()
    while True:
        # a run that failed on this new folder may just have removed it (remove_if_empty)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), 0o666)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # reading the owner from a pipe would block forever
            os.close(fd)
            raise RunFolderError(
                f"{path}: expected the run folder's lock to be a regular file; received "
                f"{file_kind(mode)}"
            )
        busy = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                busy = True
        owner, owner_host = _read_owner(path)
        if fcntl is None and owner is not None and owner != os.getpid():
            busy = _pid_alive(owner) or owner_host != host
        if busy:
            os.close(fd)
            who = f"process {owner}" if owner is not None else "another process"
            raise RunFolderError(
                f"run folder {folder} is in use by {who} (lock {path}); wait for it to finish "
                f"or choose another --out"
            )
        try:  # the file may have been unlinked by its previous owner in the meantime
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    if owner is not None and owner != os.getpid() and report is not None:
        report(f"note: took over the stale lock of process {owner} (no longer running) in {folder}")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {host}\n".encode())
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``.

    Raises
    ------
    RunFolderError naming ``path`` when it cannot be written (disk full, no permission); a
    previous ``path`` is then left intact.
    """
    atomic_write(path, lambda f: f.write(text.encode()), RunFolderError)


def atomic_write(path: Path, write, error: type[Exception]) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, sync it, and rename it
    over ``path``; an ``OSError`` becomes ``error`` naming ``path`` and saying whether a
    previous ``path`` is intact. Files follow the umask."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        follow_umask(fd)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
        raise error(f"cannot write {path}: {exc.strerror or exc}; {kept}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def follow_umask(fd: int) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the mode an ordinary file gets (0666 & ~umask)."""
    if not hasattr(os, "fchmod"):
        return
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)


__all__ = [
    "RESULT_FILES",
    "RunFolderError",
    "atomic_write_text",
    "earlier_results",
    "atomic_write",
    "follow_umask",
    "locked",
    "prepare",
    "remove_stale_temporaries",
]
