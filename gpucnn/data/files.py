"""Your own data: a folder of class sub-folders, an ``.npz`` file, or a folder of ``.npy`` arrays.

Three layouts, all giving float32 images (N, C, H, W) in [0, 1] and int64 labels:

- ``DIR/<class>/<image>``: one sub-folder per class, any image format Pillow reads; the
  sorted folder names become the class names. Images are brought to one shape as
  :mod:`gpucnn.data.images` describes (bilinear resize, luma grey / repeated RGB). A file
  that is not a readable image is skipped with one warning naming it.
- ``FILE.npz`` with arrays ``x`` (N, C, H, W) or (N, H, W) and ``y`` (N,), optionally
  ``x_test``, ``y_test`` and ``class_names``. Integer pixels are read as 0..255.
- ``DIR/x.npy`` + ``DIR/y.npy`` (optionally ``x_test.npy``, ``y_test.npy``,
  ``class_names.txt`` one name per line): the images are read batch by batch from disk
  with ``pread`` (nothing is memory-mapped, so the resident memory stays bounded whatever
  the file's size) when they do not fit in memory or when asked to.

Bigger-than-memory data is an :class:`ImageSource`: it has a ``shape`` and ``len`` and
``source[rows]`` returns those rows as float32 NumPy images; :class:`gpucnn.Trainer` reads
one batch at a time from it. Data that fits is loaded as one array (the fast path).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..resources import check_allocation
from ..safe_read import (
    MAX_TEXT_BYTES,
    NpyHeader,
    NpzArchive,
    not_regular,
    open_regular,
    read_npy,
    read_npy_header,
    read_text,
)
from ..validation import (
    check_bool,
    check_callable,
    check_choice,
    check_float,
    check_instance,
    check_int,
    check_int_tuple,
)
from .images import (
    COLOUR_MODES,
    ImageError,
    allowed_size_quietly,
    fit_channels,
    read_image,
    to_nchw,
)
from .mnist import DatasetError

SkipHook = Callable[[str, str], None]


# ---------------------------------------------------------------------- disk-backed sources
class ImageSource:
    """Images read from disk on demand: ``source[key]`` -> float32 (n, C, H, W) in [0, 1].

    ``key`` is a slice or an integer array of rows; subclasses implement :meth:`_read`.
    A source keeps a row selection (``rows``), so :meth:`subset` is free.
    """

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, item_shape: tuple[int, int, int], total: int, rows: np.ndarray | None):
        self.item_shape = tuple(int(s) for s in item_shape)
        self.rows = np.arange(total, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.item_shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        rows = self.rows[key]
        if rows.ndim == 0:
            return self._read(rows[None])[0]
        order = np.argsort(rows, kind="stable")  # read in file order, return in the asked order
        out = np.empty((len(rows), *self.item_shape), np.float32)
        out[order] = self._read(rows[order])
        return out

    def subset(self, indices: np.ndarray) -> ImageSource:
        """The same source restricted to ``indices`` (positions in this source)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.rows = self.rows[np.asarray(indices, np.int64)]
        return clone

    def load(self) -> np.ndarray:
        """All selected images as one in-memory array."""
        return self[:]

    def _read(self, rows: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class NpyImages(ImageSource):
    """The rows of an ``.npy`` file of shape (N, C, H, W) or (N, H, W), read with ``pread``.

    Integer pixels are divided by 255. Pages are read, not mapped, so the process's resident
    memory holds only the batch being read.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open_regular(self.path, ".npy file", DatasetError) as f:  # a pipe would block
            header = read_npy_header(f, str(self.path), DatasetError)
        shape, fortran, dtype = header.shape, header.fortran_order, header.dtype
        self.offset = header.header_bytes
        if fortran or dtype.hasobject or len(shape) not in (3, 4):
            raise DatasetError(
                f"{self.path}: expected a C-ordered numeric array of shape (N, C, H, W) or (N, H, W); "
                f"received shape {shape}, dtype {dtype}{', Fortran order' if fortran else ''}"
            )
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise DatasetError(f"{self.path}: expected numeric pixels; received dtype {dtype}")
        self.file_dtype = dtype
        item = shape[1:] if len(shape) == 4 else (1, *shape[1:])
        self.row_bytes = int(np.prod(item)) * dtype.itemsize
        expected = self.offset + shape[0] * self.row_bytes
        if os.path.getsize(self.path) < expected:
            raise DatasetError(
                f"{self.path}: truncated: expected {expected} bytes for shape {shape}; received {os.path.getsize(self.path)}"
            )
        super().__init__(item, shape[0], None)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        buffer = bytearray(len(rows) * self.row_bytes)
        view = memoryview(buffer)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            start = 0
            while start < len(rows):  # one read per run of consecutive rows
                stop = start + 1
                while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                    stop += 1
                want = (stop - start) * self.row_bytes
                got = os.preadv(fd, [view[start * self.row_bytes : start * self.row_bytes + want]],
                                self.offset + int(rows[start]) * self.row_bytes)  # fmt: skip
                if got != want:
                    raise DatasetError(f"{self.path}: short read at row {int(rows[start])}")
                start = stop
        finally:
            os.close(fd)
        pixels = np.frombuffer(buffer, self.file_dtype).reshape(len(rows), *self.item_shape)
        if np.issubdtype(self.file_dtype, np.integer):
            scaled = pixels.astype(np.float32)
            scaled /= 255.0  # in place: no second float copy
            return scaled
        return pixels.astype(np.float32)


class FolderImages(ImageSource):
    """Image files decoded batch by batch (see :func:`gpucnn.data.images.read_image`)."""

    def __init__(self, paths: list[Path], channels: int, size: tuple[int, int]):
        self.paths = [Path(p) for p in paths]
        self.channels, self.size = channels, (int(size[0]), int(size[1]))
        super().__init__((channels, *self.size), len(self.paths), None)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([read_image(self.paths[r], self.channels, self.size) for r in rows])


def is_disk_backed(x) -> bool:
    """True for data read batch by batch from disk (an :class:`ImageSource` or ``np.memmap``)."""
    return isinstance(x, (ImageSource, np.memmap))


# ---------------------------------------------------------------------- image folders
def _warn(path: str, reason: str) -> None:
    warnings.warn(f"skipped {path}: {reason}", stacklevel=3)


def list_image_folder(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """The files of ``root/<class>/``, their labels and the sorted class names.

    Hidden files and folders (a leading dot) are ignored; files directly in ``root`` too.

    Raises
    ------
    DatasetError when ``root`` is not a folder or has fewer than two class sub-folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: expected a folder with one sub-folder per class; not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DatasetError(
            f"{root}: expected one sub-folder per class (at least 2); received {len(classes)} "
            f"sub-folder(s){': ' + classes[0] if classes else ''}"
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and not any(
                part.startswith(".") for part in path.relative_to(root).parts
            ):
                paths.append(path)
                labels.append(label)
    return paths, np.asarray(labels, np.int64), classes


def scan_image_folder(
    root: str | Path,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    on_skip: SkipHook | None = None,
) -> tuple[FolderImages, np.ndarray, list[str], list[str]]:
    """Index an image folder without decoding it: read each file's header only.

    ``image_size`` defaults to the most common size among the images, ``channels`` to 3 if
    any image has colour, else 1. Files whose header is unreadable are skipped and reported
    to ``on_skip(path, reason)`` (default: a :class:`UserWarning` each).

    Returns
    -------
    source : a :class:`FolderImages` decoding batch by batch.
    y : int64 labels (N,).
    classes : the class names (sorted sub-folder names).
    skipped : the paths skipped.

    Raises
    ------
    DatasetError when no file, or no file of some class, is a readable image.
    """
    from PIL import Image

    on_skip = on_skip or _warn
    paths, labels, classes = list_image_folder(root)
    kept, kept_labels, skipped, sizes, colour = [], [], [], Counter(), False
    for path, label in zip(paths, labels, strict=True):
        try:
            with allowed_size_quietly(Image), Image.open(path) as image:
                width, height = image.size
                colour = colour or image.mode in COLOUR_MODES
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            skipped.append(str(path))
            on_skip(str(path), f"not a readable image ({reason})")
            continue
        sizes[(height, width)] += 1
        kept.append(path)
        kept_labels.append(label)
    _check_classes(root, classes, np.asarray(kept_labels, np.int64))
    size = tuple(image_size) if image_size else sizes.most_common(1)[0][0]
    source = FolderImages(kept, channels or (3 if colour else 1), size)
    return source, np.asarray(kept_labels, np.int64), classes, skipped


def _check_classes(root, classes: list[str], labels: np.ndarray) -> None:
    if len(labels) == 0:
        raise DatasetError(f"{root}: no readable image in any class folder")
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DatasetError(
            f"{root}: expected at least one readable image per class; received none in "
            + ", ".join(repr(c) for c in empty)
        )


def load_image_folder(
    root: str | Path,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    on_skip: SkipHook | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Decode a whole ``root/<class>/<image>`` folder into memory.

    Parameters are those of :func:`scan_image_folder`; files that fail to decode are
    skipped too.

    Returns
    -------
    x : float32 (N, C, H, W) in [0, 1].
    y : int64 (N,).
    classes : the class names.
    skipped : the paths skipped.
    """
    root, image_size, channels = _check_common("load_image_folder", root, image_size, channels)
    if on_skip is not None:
        check_callable("on_skip", on_skip, owner="load_image_folder")
    on_skip = on_skip or _warn
    scanned = scan_image_folder(root, image_size, channels, on_skip)
    return _decode_all(root, *scanned, on_skip)


def _check_common(owner: str, path: Any, image_size: Any, channels: Any) -> tuple[Path, Any, Any]:
    """The path, ``image_size`` (None or an (H, W) tuple) and ``channels`` (None, 1 or 3)
    checked for the loaders, the path as a :class:`~pathlib.Path`."""
    check_instance("path", path, (str, os.PathLike), owner=owner, describe="a str or os.PathLike")
    if image_size is not None:
        image_size = check_int_tuple(
            "image_size", image_size, (2,), owner=owner, describe="(H, W) with H, W >= 1"
        )
    if channels is not None:
        channels = check_choice("channels", channels, (1, 3), owner=owner)
    return Path(path), image_size, channels


def _decode_all(root, source: FolderImages, labels, classes, skipped, on_skip: SkipHook):
    """Decode every file of a scanned folder; files that fail to decode are skipped too."""
    images, kept = [], []
    for i, path in enumerate(source.paths):
        try:
            images.append(read_image(path, source.channels, source.size))
        except ImageError as exc:
            skipped.append(str(path))
            on_skip(str(path), str(exc).removeprefix(f"{path}: "))
            continue
        kept.append(i)
    labels = labels[kept]
    _check_classes(root, classes, labels)
    return np.stack(images), labels, classes, skipped


# ---------------------------------------------------------------------- arrays
def _labels(array, name: str, n: int | None = None) -> np.ndarray:
    y = np.asarray(array)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (n is not None and len(y) != n):
        raise DatasetError(
            f"{name}: expected integer labels of shape ({n if n is not None else 'N'},); received shape {y.shape}, dtype {y.dtype}"
        )
    if len(y) and y.min() < 0:
        raise DatasetError(f"{name}: expected labels >= 0; received {int(y.min())}")
    return y.astype(np.int64)


def _images(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise DatasetError(
            f"{name}: expected images of shape (N, C, H, W) or (N, H, W); received {array.shape}"
        )
    try:
        x = to_nchw(array, name)
    except ImageError as exc:
        raise DatasetError(str(exc)) from None
    if not np.all(np.isfinite(x)):
        raise DatasetError(f"{name}: expected finite pixel values; received NaN or inf")
    return x


NPZ_MEMBERS = ("x", "y", "x_test", "y_test", "class_names")


def load_npz(path: str | Path) -> dict:
    """Read a dataset ``.npz``: ``x``, ``y`` and optional ``x_test``, ``y_test``, ``class_names``.

    Only those members are read (others are left compressed), each after its header is
    checked against the images': labels (N,) for the N images, class names of bounded size.

    Returns a dict with those keys (absent ones are None), images float32 (N, C, H, W).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    with NpzArchive(path, ".npz file", DatasetError) as archive:
        present = [k for k in NPZ_MEMBERS if k in archive]
        missing = [k for k in ("x", "y") if k not in archive]
        if missing:
            raise DatasetError(
                f"{path}: expected arrays 'x' and 'y'; received {sorted(archive.names)}"
            )
        if ("x_test" in archive) != ("y_test" in archive):
            raise DatasetError(
                f"{path}: expected both 'x_test' and 'y_test' or neither; received {sorted(archive.names)}"
            )
        for images, labels in (("x", "y"), ("x_test", "y_test")):
            if images in archive:
                _check_npz_pair(
                    path, archive.header(images), archive.header(labels), images, labels
                )
        if "class_names" in archive:
            names = archive.header("class_names")
            if (
                names.dtype.kind not in "US"
                or len(names.shape) > 1
                or names.nbytes > MAX_TEXT_BYTES
            ):
                raise DatasetError(
                    f"{path}:class_names: expected a 1-D text array of at most {MAX_TEXT_BYTES:,} "
                    f"bytes; received {names.describe()} ({names.nbytes:,} bytes)"
                )
        arrays = {k: archive.read(k) for k in present}
    out = {"x": _images(arrays["x"], f"{path}:x")}
    out["y"] = _labels(arrays["y"], f"{path}:y", len(out["x"]))
    out["x_test"] = out["y_test"] = None
    if "x_test" in arrays:
        out["x_test"] = _images(arrays["x_test"], f"{path}:x_test")
        out["y_test"] = _labels(arrays["y_test"], f"{path}:y_test", len(out["x_test"]))
    names = arrays.get("class_names")
    out["class_names"] = None if names is None else [str(n) for n in np.asarray(names).ravel()]
    return out


def _check_npz_pair(path: Path, images: NpyHeader, labels: NpyHeader, x: str, y: str) -> None:
    """Refuse, from the headers alone, images that are not image-shaped numbers, labels
    that are not one integer per image, and images whose float32 copy cannot fit."""
    if len(images.shape) not in (3, 4) or images.dtype.kind not in "fiub":
        raise DatasetError(
            f"{path}:{x}: expected numeric images of shape (N, C, H, W) or (N, H, W); "
            f"received {images.describe()}"
        )
    n = images.shape[0]
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"{path}:{y}: expected integer labels of shape ({n},) (one per image in '{x}'); "
            f"its header declares {labels.describe()}"
        )
    check_allocation(
        images.nbytes + 4 * math.prod(images.shape), f"{path}:{x} ({images.describe()}) as float32"
    )


def resize_images(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float32 (N, C, H, W) images to ``size`` = (H, W) with Pillow's bilinear filter."""
    from PIL import Image

    if tuple(x.shape[2:]) == tuple(size):
        return x
    height, width = size
    out = np.empty((*x.shape[:2], height, width), np.float32)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            plane = Image.fromarray(np.ascontiguousarray(x[n, c], np.float32), mode="F")
            out[n, c] = np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR))
    return out


def conform(x: np.ndarray, image_size, channels, name: str) -> np.ndarray:
    """Bring in-memory images to ``channels`` and ``image_size`` (either may be None)."""
    if channels is not None:
        x = fit_channels(x, channels, name)
    if image_size is not None:
        x = resize_images(x, tuple(image_size))
    return x


# ---------------------------------------------------------------------- one entry point
def memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _fits(num_bytes: int) -> bool:
    """Data fits when its float32 copy takes at most a quarter of physical memory."""
    total = memory_bytes()
    return total is None or num_bytes <= total // 4


def _class_names(names, labels: list[np.ndarray], where) -> list[str]:
    count = max(int(y.max()) + 1 for y in labels if len(y))
    if names is None:
        return [str(i) for i in range(count)]
    if len(names) < count:
        raise DatasetError(
            f"{where}: expected at least {count} class names for labels 0..{count - 1}; received {len(names)}"
        )
    return list(names)


def load_data(
    path: str | Path,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    stream: bool | None = None,
    on_skip: SkipHook | None = None,
):
    """Load your own dataset from ``path`` (see the module docstring for the layouts).

    Parameters
    ----------
    path : a folder of class sub-folders, a ``.npz`` file, or a folder with ``x.npy``/``y.npy``.
    image_size : ``(H, W)`` every image is resized to; default: the images' own size (for
        a folder of images, the most common one).
    channels : 1 or 3; default: as stored (a folder: 3 if any image has colour).
    test_fraction : share held out as the test split (seeded by ``seed``, stratified by
        class) when the data has no test split of its own.
    stream : read batches from disk instead of loading everything: None decides by size
        (stream when the images would take over a quarter of physical memory); True always
        (``.npy`` folders and image folders only); False never.
    on_skip : ``on_skip(path, reason)`` for each unreadable image (default: a warning).

    Returns
    -------
    A :class:`gpucnn.data.Dataset` whose ``x_train``/``x_test`` are float32 arrays, or
    :class:`ImageSource` objects when streaming; ``skipped`` lists unreadable files.

    Raises
    ------
    DatasetError for a missing path, an unknown layout, an empty class, bad arrays.
    """
    from .catalog import Dataset
    from .split import train_val_split

    path, image_size, channels = _check_common("load_data", path, image_size, channels)
    test_fraction = check_float("test_fraction", test_fraction, owner="load_data")
    seed = check_int("seed", seed, 0, 2**32 - 1, owner="load_data")  # scikit-learn's seed range
    if stream is not None:
        stream = check_bool("stream", stream, owner="load_data")
    if on_skip is not None:
        check_callable("on_skip", on_skip, owner="load_data")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    kind = not_regular(path)
    if kind is not None and kind != "a directory":
        raise DatasetError(f"{path}: expected a folder or a .npz file; received {kind}")
    skipped: list[str] = []
    x_test = y_test = None
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DatasetError(
                f"{path}: expected a folder of class sub-folders, a folder with x.npy and y.npy, or a .npz file"
            )
        if stream:
            raise DatasetError(
                f"{path}: a .npz file cannot be read batch by batch; save x and y as .npy files in a folder to stream"
            )
        arrays = load_npz(path)
        x = conform(arrays["x"], image_size, channels, f"{path}:x")
        y = arrays["y"]
        if arrays["x_test"] is not None:
            x_test = conform(arrays["x_test"], image_size, channels, f"{path}:x_test")
            y_test = arrays["y_test"]
        classes = _class_names(
            arrays["class_names"], [y] + ([y_test] if y_test is not None else []), path
        )
    elif (path / "x.npy").is_file() or (path / "y.npy").is_file():
        x, y, x_test, y_test, classes = _load_npy_folder(path, image_size, channels, stream)
    else:
        source, y, classes, skipped = scan_image_folder(path, image_size, channels, on_skip)
        in_memory = stream is False or (
            not stream and _fits(len(y) * 4 * int(np.prod(source.item_shape)))
        )
        if in_memory:
            x, y, classes, skipped = _decode_all(
                path, source, y, classes, skipped, on_skip or _warn
            )
        else:
            x = source
    if x_test is None:
        if not 0 < test_fraction < 1:
            raise DatasetError(
                f"{path} has no test split: expected test_fraction in (0, 1); received {test_fraction!r}"
            )
        (x, y), (x_test, y_test) = train_val_split(x, y, test_fraction, seed)
    if x.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{path}: expected test images of shape {x.shape[1:]}; received {x_test.shape[1:]}"
        )
    if len(x) == 0 or len(x_test) == 0:
        raise DatasetError(
            f"{path}: expected at least one training and one test image; received {len(x)} and {len(x_test)}"
        )
    data = Dataset(path.name, x, y, x_test, y_test, classes)
    data.skipped = skipped
    return data


def _load_npy_folder(path: Path, image_size, channels, stream):
    for name in ("x.npy", "y.npy", "x_test.npy", "y_test.npy", "class_names.txt"):
        kind = not_regular(path / name)  # is_file() below would call a pipe missing
        if kind is not None:
            raise DatasetError(f"{path / name}: expected a regular file; received {kind}")
    for name in ("x.npy", "y.npy"):
        if not (path / name).is_file():
            raise DatasetError(f"{path}: expected x.npy and y.npy; {name} is missing")
    has_test = (path / "x_test.npy").is_file()
    if has_test != (path / "y_test.npy").is_file():
        raise DatasetError(f"{path}: expected both x_test.npy and y_test.npy or neither")
    sources = [NpyImages(path / "x.npy")] + ([NpyImages(path / "x_test.npy")] if has_test else [])
    labels = [_load_npy_labels(path / "y.npy", len(sources[0]))]
    if has_test:
        labels.append(_load_npy_labels(path / "y_test.npy", len(sources[1])))
    names_file = path / "class_names.txt"
    names = (
        read_text(names_file, MAX_TEXT_BYTES, "class-name file", DatasetError).splitlines()
        if names_file.is_file()
        else None
    )
    classes = _class_names([n for n in names if n.strip()] if names else None, labels, path)
    nbytes = sum(4 * len(s) * int(np.prod(s.item_shape)) for s in sources)
    if stream or (stream is None and not _fits(nbytes)):
        want = (channels or sources[0].item_shape[0], *(image_size or sources[0].item_shape[1:]))
        if tuple(want) != sources[0].item_shape:
            raise DatasetError(
                f"{path}: streamed arrays are used as stored: expected --image-size/--channels to match {sources[0].item_shape}; received {tuple(want)}"
            )
        arrays = sources
    else:
        arrays = [conform(s.load(), image_size, channels, str(path)) for s in sources]
        for a, s in zip(arrays, sources, strict=True):
            if not np.all(np.isfinite(a)):
                raise DatasetError(f"{s.path}: expected finite pixel values; received NaN or inf")
    x_test, y_test = (arrays[1], labels[1]) if has_test else (None, None)
    return arrays[0], labels[0], x_test, y_test, classes


def _load_npy_labels(path: Path, n: int) -> np.ndarray:
    """Labels (n,) from ``path``, refused from the header when it declares anything else."""

    def one_per_image(header: NpyHeader) -> None:
        if header.shape != (n,) or header.dtype.kind not in "iu":
            raise DatasetError(
                f"{path}: expected integer labels of shape ({n},) (one per image); its header "
                f"declares {header.describe()}"
            )

    return _labels(read_npy(path, one_per_image, DatasetError), str(path), n)
