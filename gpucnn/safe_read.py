"""Bounded reading of files a user names: every reader of a path given to gpucnn goes here.

Three guards, so that no input can hang a command, exhaust memory or run code:

- **Regular files only.** A named pipe blocks its reader until someone writes, and a device
  such as ``/dev/zero`` never ends; both are refused by name before anything is read (the
  file is opened non-blocking and checked with ``fstat``, so a path swapped for a pipe after
  a first check is refused too).
- **Size limits** on whole-file reads (JSON at most :data:`MAX_JSON_BYTES`), named in the
  message.
- **Declared sizes before inflating.** An ``.npz`` archive is read member by member through
  :class:`NpzArchive`: each member's ``.npy`` header (shape and dtype) is read without
  inflating its data and must agree with the zip entry's uncompressed size; callers compare
  those shapes with what the architecture or the other arrays imply before calling
  :meth:`NpzArchive.read`, which also checks the available memory. A zip entry is never
  inflated past the size its directory declares. Nothing is unpickled
  (``allow_pickle=False``; object arrays are refused from their header).

Every refusal is a ``ValueError`` (by default :class:`UnreadableFileError`, or the ``error``
class a caller passes) whose one-line message names the file and states expected vs received.
"""

from __future__ import annotations

import json
import math
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .resources import check_allocation

MAX_JSON_BYTES = 64 << 20  # 64 MiB: architectures and metrics.json files take kilobytes
MAX_TEXT_BYTES = 16 << 20  # 16 MiB: a class-name list
NPY_MAGIC = b"\x93NUMPY"

Error = type[Exception]


class UnreadableFileError(ValueError):
    """A file cannot be read safely: not a regular file, too large, or malformed."""


def file_kind(mode: int) -> str:
    """What a ``st_mode`` describes, as a message says it ("a named pipe", "a directory")."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def not_regular(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists but is not a regular file (symlinks followed), else None."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else file_kind(mode)


def require_regular(
    path: str | os.PathLike, what: str = "file", error: Error = UnreadableFileError
) -> None:
    """Raise ``error`` naming ``path`` when it exists and is not a regular file."""
    kind = not_regular(path)
    if kind is not None:
        raise error(f"{path}: expected a regular {what}; received {kind}")


def open_regular(
    path: str | os.PathLike, what: str = "file", error: Error = UnreadableFileError
) -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file.

    Raises ``error`` naming ``path``: not a regular file (what it is instead), not found,
    or not readable.
    """
    require_regular(path, what, error)  # devices are not even opened (opening may act on them)
    try:
        # O_NONBLOCK: were the path replaced by a pipe since the check, open must not wait
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: expected a regular {what}; received {file_kind(mode)}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(
    path: str | os.PathLike, limit: int, what: str = "file", error: Error = UnreadableFileError
) -> bytes:
    """The whole content of regular file ``path``, refused when it exceeds ``limit`` bytes."""
    with open_regular(path, what, error) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            data = f.read(limit + 1) if size <= limit else b""
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if size > limit or len(data) > limit:
        received = max(size, len(data))
        raise error(
            f"{path}: expected a {what} of at most {limit:,} bytes; received {received:,}"
            + (" or more" if len(data) > limit else "")
        )
    return data


def read_text(
    path: str | os.PathLike, limit: int = MAX_TEXT_BYTES, what: str = "text file",
    error: Error = UnreadableFileError,
) -> str:  # fmt: skip
    """UTF-8 text of at most ``limit`` bytes; undecodable bytes are refused naming the file."""
    data = read_bytes(path, limit, what, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: expected UTF-8 text; received {_bad_byte(exc)}") from None


def read_json(
    path: str | os.PathLike, what: str = "JSON file", limit: int | None = None,
    error: Error = UnreadableFileError,
) -> Any:  # fmt: skip
    """Parse the JSON file ``path`` (UTF-8, at most ``limit`` bytes, default
    :data:`MAX_JSON_BYTES`).

    Raises ``error`` naming ``path`` (and ``what`` it is) for a non-regular or oversized file,
    bytes that are not UTF-8, invalid JSON, or nesting too deep to parse.
    """
    data = read_bytes(path, MAX_JSON_BYTES if limit is None else limit, what, error)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path} is not valid JSON: expected UTF-8 text; received {_bad_byte(exc)}"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise error(f"{what} {path}: JSON nested too deeply to read") from None


def _bad_byte(exc: UnicodeDecodeError) -> str:
    return f"byte 0x{exc.object[exc.start]:02x} at position {exc.start}"


# ---------------------------------------------------------------------- .npy headers
@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` header declares: the array's shape, dtype and data size in bytes."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    header_bytes: int  # magic and header, before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def describe(self) -> str:
        return f"shape {self.shape}, dtype {self.dtype}"


def read_npy_header(f: BinaryIO, source: str, error: Error = UnreadableFileError) -> NpyHeader:
    """Read the ``.npy`` header at the start of ``f`` (nothing of the data).

    Raises ``error`` naming ``source`` for a file that is not ``.npy`` or whose dtype holds
    Python objects (which only unpickling could read).
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        offset = f.tell()
    except (ValueError, OSError, EOFError, TypeError, SyntaxError, OverflowError,
            zipfile.BadZipFile, zlib.error) as exc:  # fmt: skip
        raise error(f"{source}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if dtype.hasobject:
        raise error(
            f"{source}: expected a numeric or text array; received dtype {dtype}, which holds "
            "Python objects (never unpickled)"
        )
    return NpyHeader(tuple(int(n) for n in shape), dtype, bool(fortran), offset)


def read_npy(path: str | os.PathLike, check=None, error: Error = UnreadableFileError) -> np.ndarray:
    """Read the ``.npy`` file ``path`` after checking its header: its size must agree with the
    file's, ``check(header)`` (when given) may refuse it, and the memory must suffice."""
    with open_regular(path, ".npy file", error) as f:
        header = read_npy_header(f, str(path), error)
        if check is not None:  # first: what the caller expects says most about a wrong header
            check(header)
        size = os.fstat(f.fileno()).st_size - header.header_bytes
        if header.nbytes != size:
            raise error(
                f"{path}: its header declares {header.describe()} ({header.nbytes:,} bytes); "
                f"the file holds {size:,}"
            )
        check_allocation(header.nbytes, f"{path} ({header.describe()})")
        f.seek(0)
        try:
            return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise error(f"{path}: not a readable .npy array ({exc})") from None


# ---------------------------------------------------------------------- .npz archives
class NpzArchive:
    """An ``.npz`` file opened for bounded reading (see the module docstring).

    ``archive.names`` lists its members (``x`` for ``x.npy``; a member that is not ``.npy``
    keeps its full name), :meth:`header` declares one without inflating its data and
    :meth:`read` inflates it.
    """

    def __init__(
        self, path: str | os.PathLike, what: str = ".npz file", error: Error = UnreadableFileError
    ):
        self.path, self.what, self.error = Path(path), what, error
        self._file = open_regular(path, what, error)
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
            self._file.close()
            raise error(f"{path}: not a readable {what} ({' '.join(str(exc).split())})") from None
        self._entries = {}
        for info in self._zip.infolist():
            name = info.filename.removesuffix(".npy")
            self._entries.setdefault(name, info)
        self._headers: dict[str, NpyHeader] = {}

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def header(self, name: str) -> NpyHeader:
        """The declared shape and dtype of member ``name``; its data is not inflated.

        Raises ``error`` when the member is not an ``.npy`` array, holds Python objects, or
        its header disagrees with the entry's uncompressed size.
        """
        if name in self._headers:
            return self._headers[name]
        info = self._entries[name]
        where = f"{self.path}: not a readable {self.what}: member {info.filename!r}"
        if not info.filename.endswith(".npy"):
            raise self.error(
                f"{where}: expected a .npy array (as numpy.savez writes); received a raw entry"
            )
        try:
            with self._zip.open(info) as f:
                header = read_npy_header(f, where, self.error)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
            raise self.error(f"{where} is corrupt ({' '.join(str(exc).split())})") from None
        if header.header_bytes + header.nbytes != info.file_size:
            raise self.error(
                f"{where}: its header declares {header.describe()} "
                f"({header.header_bytes + header.nbytes:,} bytes); the entry holds {info.file_size:,}"
            )
        self._headers[name] = header
        return header

    def read(self, name: str) -> np.ndarray:
        """Inflate member ``name`` (after :meth:`header`'s checks and a memory check)."""
        header = self.header(name)
        info = self._entries[name]
        check_allocation(header.nbytes, f"{self.path} member {name!r} ({header.describe()})")
        try:
            with self._zip.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
            raise self.error(
                f"{self.path}: not a readable {self.what}: member {info.filename!r} is corrupt ({' '.join(str(exc).split())})"
            ) from None


__all__ = [
    "MAX_JSON_BYTES",
    "MAX_TEXT_BYTES",
    "NpyHeader",
    "NpzArchive",
    "UnreadableFileError",
    "file_kind",
    "not_regular",
    "open_regular",
    "read_bytes",
    "read_json",
    "read_npy",
    "read_npy_header",
    "read_text",
    "require_regular",
]
