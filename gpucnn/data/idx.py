"""The IDX file format of MNIST and Fashion-MNIST: read (raw or gzipped), validate, write.

Layout: two zero bytes, a type code, the number of dimensions D, then D big-endian uint32
sizes, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..safe_read import read_bytes

TYPE_CODES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
MAX_IDX_BYTES = 1 << 31  # 2 GiB: forty times MNIST's training images


class IdxError(ValueError):
    """An IDX file is truncated, corrupt or not an IDX file; the message says which."""


def declared_size(header: bytes) -> int | None:
    """Total bytes (header included) an IDX file with this header must have, or None when
    ``header`` is not the start of an IDX file."""
    if len(header) < 4 or header[:2] != b"\0\0" or header[2] not in TYPE_CODES:
        return None
    ndim = header[3]
    if len(header) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", header[4 : 4 + 4 * ndim])
    return 4 + 4 * ndim + math.prod(dims) * TYPE_CODES[header[2]].itemsize


def decompress(data: bytes, source: str) -> bytes:
    """Gunzip ``data`` if it is gzip, else return it unchanged.

    Decompression stops one byte past the size the IDX header declares (at most
    ``MAX_IDX_BYTES``), so a small file cannot inflate into gigabytes of memory.
    """
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            head = f.read(4)
            if len(head) == 4:
                head += f.read(4 * head[3])
            expected = declared_size(head)
            limit = MAX_IDX_BYTES if expected is None else expected
            if limit > MAX_IDX_BYTES:
                raise IdxError(
                    f"{source}: the IDX header declares {limit} bytes; expected at most {MAX_IDX_BYTES}"
                )
            return head + f.read(max(limit - len(head), 0) + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{source}: corrupt or truncated gzip data ({exc})") from None


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an uncompressed IDX byte string into a native-endian NumPy array."""
    if len(data) < 4:
        raise IdxError(
            f"{source}: expected an IDX header of at least 4 bytes; received {len(data)} bytes"
        )
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in TYPE_CODES:
        raise IdxError(
            f"{source}: not an IDX file: expected magic 0x0000 and a type code in "
            f"{[hex(c) for c in TYPE_CODES]}; received bytes {data[:4].hex()}"
        )
    if ndim == 0:
        raise IdxError(f"{source}: expected at least 1 dimension; received 0")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{source}: truncated header: expected {header} bytes; received {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = TYPE_CODES[code]
    expected = math.prod(dims) * dtype.itemsize
    received = len(data) - header
    if received != expected:
        kind = "truncated" if received < expected else "has trailing bytes"
        raise IdxError(
            f"{source}: {kind}: dimensions {dims} need {expected} data bytes; received {received}"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or not (detected from its first bytes)."""
    path = Path(path)
    data = read_bytes(path, MAX_IDX_BYTES, "IDX file", IdxError)
    return parse_idx(decompress(data, str(path)), str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as IDX; gzip-compressed when ``path`` ends in ``.gz``."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in TYPE_CODES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"expected a dtype in {sorted(str(d) for d in codes)}; received {array.dtype}"
        )
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(TYPE_CODES[code]).tobytes()
    Path(path).write_bytes(gzip.compress(payload) if str(path).endswith(".gz") else payload)
