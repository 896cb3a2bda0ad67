"""Reading user images for prediction: ``.npy`` arrays, IDX files and 8-bit PNGs.

Every reader returns float32 images of shape (N, C, H, W) scaled to [0, 1].
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .idx import IdxError, read_idx

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
MAX_PNG_BYTES = 1 << 28  # decoded pixel data accepted from one PNG (e.g. 8192x8192 RGBA)


class ImageError(ValueError):
    """An image file cannot be read; the message says why."""


def to_nchw(array: np.ndarray, source: str) -> np.ndarray:
    """(H, W), (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W); integers are read as 0..255."""
    if array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = array[:, None]
    elif array.ndim != 4:
        raise ImageError(
            f"{source}: expected an array of shape (H, W), (N, H, W) or (N, C, H, W); received {array.shape}"
        )
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ImageError(f"{source}: expected numeric pixels; received dtype {array.dtype}")
    return array.astype(np.float32)


def read_png(path: Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced PNG into uint8 (1, C, H, W); alpha is dropped."""
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ImageError(f"{path}: not a PNG file")
    try:
        return _decode_png(path, data)
    except (struct.error, ValueError, IndexError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"{path}: corrupt PNG ({exc})") from None


def _decode_png(path: Path, data: bytes) -> np.ndarray:
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
    if header is None:
        raise ImageError(f"{path}: PNG without a header chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in PNG_CHANNELS or interlace:
        raise ImageError(
            f"{path}: expected an 8-bit non-interlaced grey/RGB(A) PNG; received bit depth {depth}, colour type {colour}, interlace {interlace}"
        )
    channels = PNG_CHANNELS[colour]
    stride = width * channels
    expected = height * (stride + 1)
    if expected > MAX_PNG_BYTES:
        raise ImageError(
            f"{path}: PNG declares {width}x{height} pixels; expected at most {MAX_PNG_BYTES} bytes of pixel data"
        )
    try:  # never inflate more than the header declares (a small file may expand to gigabytes)
        raw = zlib.decompressobj().decompress(b"".join(idat), expected + 1)
    except zlib.error as exc:
        raise ImageError(f"{path}: corrupt PNG data ({exc})") from None
    if len(raw) != height * (stride + 1):
        raise ImageError(
            f"{path}: PNG pixel data does not match the declared {width}x{height}: expected "
            f"{expected} bytes; received {len(raw) if len(raw) <= expected else 'more'}"
        )
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    for y in range(height):  # PNG filters chain row to row: decode them in order
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros(stride, np.int32)
        if kind == 0:
            out[y] = line
        elif kind == 2:
            out[y] = (line + prev) & 0xFF
        elif kind in (1, 3, 4):
            for x in range(stride):
                left = out[y, x - channels] if x >= channels else 0
                up, corner = prev[x], prev[x - channels] if x >= channels else 0
                if kind == 1:
                    pred = left
                elif kind == 3:
                    pred = (left + up) // 2
                else:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                out[y, x] = (line[x] + pred) & 0xFF
        else:
            raise ImageError(f"{path}: unknown PNG filter type {kind}")
    pixels = out.astype(np.uint8).reshape(height, width, channels)
    if channels in (2, 4):
        pixels = pixels[..., :-1]
    return pixels.transpose(2, 0, 1)[None]


def read_npy(path: Path) -> np.ndarray:
    """Read a ``.npy`` array after checking that its header agrees with the file's size, so a
    header declaring a huge shape is refused before anything is allocated."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            else:
                shape, _, dtype = fmt.read_array_header_2_0(f)
            offset = f.tell()
        declared = math.prod(shape) * dtype.itemsize
        size = path.stat().st_size - offset
        if dtype.hasobject:
            raise ValueError("it holds Python objects")
        if declared != size:
            raise ValueError(
                f"its header declares shape {shape} ({declared} bytes); the file holds {size}"
            )
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError, SyntaxError, OverflowError) as exc:
        raise ImageError(f"{path}: not a readable .npy array ({exc})") from None


def load_images(path: str | Path) -> np.ndarray:
    """Read ``.npy``, ``.png`` or IDX (optionally ``.gz``) images as float32 (N, C, H, W)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = read_npy(path)
    elif suffix == ".png":
        array = read_png(path)
    else:
        try:
            array = read_idx(path)
        except IdxError as exc:
            raise ImageError(f"{exc} (supported: .npy, .png, IDX)") from None
    return to_nchw(array, str(path))


def fit_channels(images: np.ndarray, channels: int, source: str) -> np.ndarray:
    """Convert RGB to grey (mean) or grey to RGB (repeat) so images have ``channels`` channels."""
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 1 and have == 3:
        return images.mean(axis=1, keepdims=True)
    if channels == 3 and have == 1:
        return np.repeat(images, 3, axis=1)
    raise ImageError(f"{source}: expected images with {channels} channel(s); received {have}")
