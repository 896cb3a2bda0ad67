"""Reading user images: any format Pillow reads, ``.npy`` arrays and IDX files.

Every reader returns float32 images scaled to [0, 1]. How a picture becomes a model input:

- **Bit depth**: 8-bit images are divided by 255, 16-bit images (``I;16``, ``I``) by 65535,
  floating-point images (``F``) are clipped to [0, 1]; 1-bit images become 0 or 1.
- **Alpha**: transparent pixels are composited over a white background (how a viewer shows
  them), so a dark digit drawn on a transparent canvas reads as dark-on-white.
- **Palette** images are expanded to their RGB colours first.
- **Channels**: to one channel with Pillow's ITU-R 601-2 luma
  (``L = 0.299 R + 0.587 G + 0.114 B``); to three channels by repeating the grey one.
- **Size**: stretched to exactly ``H x W`` (the aspect ratio is not kept) with Pillow's
  bilinear filter, which averages over the source footprint when shrinking.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .. import safe_read
from .idx import IdxError, read_idx

#: Pillow modes that carry colour (everything else is read as grey).
COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "La")
ARRAY_SUFFIXES = (".npy",)


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
        scaled = array.astype(np.float32)
        scaled /= 255.0  # in place: a second float copy of MNIST's training set is 188 MB
        return scaled
    if not np.issubdtype(array.dtype, np.floating):
        raise ImageError(f"{source}: expected numeric pixels; received dtype {array.dtype}")
    return array.astype(np.float32)


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pillow is a dependency; this guards broken installs
        raise ImageError(f"reading images needs Pillow ({exc}); pip install pillow") from None
    return Image


@contextlib.contextmanager
def allowed_size_quietly(Image) -> Iterator[None]:
    """Silence Pillow's DecompressionBombWarning (two lines on stderr) inside the block.

    Pillow warns for images between ``MAX_IMAGE_PIXELS`` and twice that and raises
    ``DecompressionBombError`` above; that error is the limit here (see :func:`_bomb_message`),
    so an image under it is allowed and the warning tells the user nothing to act on.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_image(
    path: str | Path,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode one image file with Pillow into float32 (C, H, W) in [0, 1].

    Parameters
    ----------
    path : any file Pillow reads (PNG of any bit depth, JPEG, BMP, GIF, TIFF, WebP...).
    channels : 1 (grey) or 3 (RGB); None keeps grey images grey and colour images RGB.
    size : ``(H, W)`` to resize to (bilinear, aspect ratio not kept); None keeps the size.

    Raises
    ------
    ImageError when the file is missing, not an image, truncated or corrupt.
    """
    Image = _pil()
    if channels not in (None, 1, 3):
        raise ValueError(f"expected channels 1 or 3; received {channels!r}")
    kind = _format_of(Image, path)
    try:
        with allowed_size_quietly(Image):
            image = Image.open(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(_bomb_message(Image, path, kind, exc)) from None
    except Image.UnidentifiedImageError:
        raise ImageError(
            f"{path}: not {'a ' + kind + ' file' if kind != 'image' else 'an image file'} "
            "(supported: any image Pillow reads, .npy, IDX)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{path}: corrupt {kind} ({_reason(exc)})") from None
    with image:
        kind = image.format or kind
        try:
            with allowed_size_quietly(Image):
                image.load()
                pixels = _to_array(Image, image, channels, size)
        except Image.DecompressionBombError as exc:
            raise ImageError(_bomb_message(Image, path, kind, exc)) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageError(f"{path}: corrupt {kind} data ({_reason(exc)})") from None
    return pixels


def _format_of(Image, path) -> str:
    """The format a file's suffix names (``PNG`` for ``x.png``), or ``image``."""
    return Image.registered_extensions().get(Path(path).suffix.lower(), "image")


def _bomb_message(Image, path, kind: str, exc: BaseException) -> str:
    """One line naming the size a file declares beyond Pillow's decompression-bomb limit."""
    size = _declared_size(Image, path)
    declared = f"{size[0]}x{size[1]} pixels" if size else f"too many pixels ({_reason(exc)})"
    return (
        f"{path}: {kind} declares {declared}; expected at most {2 * Image.MAX_IMAGE_PIXELS} "
        "pixels (Pillow's decompression-bomb limit, twice PIL.Image.MAX_IMAGE_PIXELS)"
    )


def _declared_size(Image, path) -> tuple[int, int] | None:
    """(width, height) from the file's header, read by the format's opener without decoding
    pixels and without the limit check that refused it (the global limit stays untouched)."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(16)
            for name in Image.ID:
                factory, accept = Image.OPEN[name]
                if accept is not None and not accept(prefix):
                    continue
                f.seek(0)
                try:
                    return tuple(factory(f, str(path)).size)
                except Exception:  # noqa: BLE001 - not this format: try the next opener
                    continue
    except OSError:
        pass
    return None


def _to_array(Image, image, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    """A loaded PIL image -> float32 (C, H, W) following the module's conversion rules."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        image = image.convert("RGB")
    mode = image.mode
    if mode in ("RGBA", "LA", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
        image = image.convert("L" if mode != "RGBA" else "RGB")
        mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grey
        if mode == "F":
            scale = 1.0
        elif mode.startswith("I;16") or image.getextrema()[1] > 255:
            scale = 65535.0
        else:
            scale = 255.0
        grey = np.asarray(image, dtype=np.float32) / scale
        image = Image.fromarray(np.clip(grey, 0.0, 1.0).astype(np.float32), mode="F")
        planes = [image]
    elif mode == "L":
        planes = [image]
    elif mode == "RGB":
        planes = list(image.split())
    else:
        raise ValueError(f"unsupported image mode {mode!r}")
    if channels == 1 and len(planes) == 3:
        planes = [image.convert("L")]
    if size is not None:
        height, width = size
        planes = [p.resize((width, height), Image.Resampling.BILINEAR) for p in planes]
    scale = 1.0 if planes[0].mode == "F" else 255.0
    pixels = np.stack([np.asarray(p, dtype=np.float32) for p in planes]) / scale
    if channels == 3 and pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    return pixels


def read_npy(path: str | Path) -> np.ndarray:
    """Read a ``.npy`` array after checking that its header agrees with the file's size, so a
    header declaring a huge shape is refused before anything is allocated.

    Raises
    ------
    ImageError when the file is not a regular ``.npy`` file, holds Python objects, or its
    size differs from what its header declares (truncated or padded).
    """
    return safe_read.read_npy(path, error=ImageError)


def load_images(
    path: str | Path, channels: int | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Read ``.npy`` or IDX (optionally ``.gz``) stacks, or one image file, as float32 (N, C, H, W).

    ``channels`` and ``size`` apply to image files (see :func:`read_image`); arrays keep
    their shape (use :func:`fit_channels` for their channels).
    """
    path = Path(path)
    safe_read.require_regular(path, "image file", ImageError)  # a pipe would block the read
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return to_nchw(read_npy(path), str(path))
    if _is_idx(path):
        try:
            return to_nchw(read_idx(path), str(path))
        except IdxError as exc:
            raise ImageError(str(exc)) from None
    return read_image(path, channels, size)[None]


def _is_idx(path: Path) -> bool:
    """IDX files have no standard suffix: recognise them by their magic bytes (0, 0, type, ndim)."""
    name = path.name.lower()
    if name.endswith(".gz") or "idx" in name or "ubyte" in name:
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and head[:2] == b"\x00\x00" and head[2] in (8, 9, 11, 12, 13, 14)


def fit_channels(images: np.ndarray, channels: int, source: str) -> np.ndarray:
    """Convert RGB to grey (luma) or grey to RGB (repeat) so images have ``channels`` channels."""
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 1 and have == 3:
        weights = np.array([0.299, 0.587, 0.114], np.float32).reshape(1, 3, 1, 1)
        return (images * weights).sum(axis=1, keepdims=True, dtype=np.float32)
    if channels == 3 and have == 1:
        return np.repeat(images, 3, axis=1)
    raise ImageError(f"{source}: expected images with {channels} channel(s); received {have}")
