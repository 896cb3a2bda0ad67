"""MNIST and Fashion-MNIST: find, download, verify and load the four standard IDX files.

Each file is pinned twice: the SHA-256 of the ``.gz`` the mirrors serve, and the SHA-256 of
the decompressed IDX content. A local copy is accepted when either matches, so a file that
was recompressed (same images, other gzip bytes) still verifies, while a corrupt, truncated
or different file never does. Downloads must match the ``.gz`` pin.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from platformdirs import user_cache_path

from ..safe_read import read_bytes
from ..validation import check_bool, check_instance
from .download import DownloadError, download_file, sha256_of
from .idx import MAX_IDX_BYTES, IdxError, decompress, parse_idx
from .images import to_nchw

DATA_ENV = "GPUCNN_DATA"
SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


class DatasetError(ValueError):
    """A dataset cannot be found, downloaded or verified; the message says what to do."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    mirrors: tuple[str, ...]
    gz_sha256: dict[str, str]
    idx_sha256: dict[str, str]
    classes: tuple[str, ...]


MNIST = DatasetSpec(
    name="mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    gz_sha256={
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    idx_sha256={
        "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    classes=tuple(str(d) for d in range(10)),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    gz_sha256={
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    idx_sha256={
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
)


def default_root() -> Path:
    """``$GPUCNN_DATA`` if set, else the user cache folder of this OS (``$XDG_CACHE_HOME/gpucnn``
    or ``~/.cache/gpucnn`` on Linux, ``~/Library/Caches/gpucnn`` on macOS, ``%LOCALAPPDATA%``
    on Windows)."""
    return Path(os.environ.get(DATA_ENV) or user_cache_path("gpucnn", appauthor=False))


def _candidates(root: Path, spec: DatasetSpec, name: str) -> list[Path]:
    stem = name[: -len(".gz")]
    return [folder / f for folder in (root, root / spec.name) for f in (name, stem)]


def read_verified(path: Path, spec: DatasetSpec, name: str) -> np.ndarray:
    """Read one dataset file, refusing it unless it matches a pinned checksum."""
    data = read_bytes(path, MAX_IDX_BYTES, "dataset file", DatasetError)
    try:
        raw = decompress(data, str(path))
    except IdxError as exc:
        raise DatasetError(str(exc)) from None
    expected_gz, expected_idx = spec.gz_sha256[name], spec.idx_sha256[name]
    if sha256_of(data) != expected_gz:
        got = sha256_of(raw)
        if got != expected_idx:
            raise DatasetError(
                f"{path}: checksum mismatch: expected the {spec.name} file {name} (sha256 "
                f"{expected_gz} compressed"
                + (f" or {expected_idx} uncompressed" if expected_idx else "")
                + f"); received content with sha256 {got}. The file is corrupt, truncated or another dataset: delete it"
            )
    try:
        return parse_idx(raw, str(path))
    except IdxError as exc:
        raise DatasetError(str(exc)) from None


def load_idx_dataset(
    spec: DatasetSpec,
    root: str | os.PathLike | None = None,
    download: bool = False,
    mirrors: tuple[str, ...] | None = None,
    progress: bool | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load the train and test splits of an MNIST-format dataset.

    Parameters
    ----------
    spec : which dataset (:data:`MNIST` or :data:`FASHION_MNIST`).
    root : folder holding the four files (directly or in a ``<dataset>/`` subfolder);
        default :func:`default_root`.
    download : fetch missing files into ``root/<dataset>/`` from the mirrors.
    mirrors : override the mirror list (tests point it at a local server).

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : images float32 of shape (N, 1, 28, 28) scaled to
        [0, 1]; labels int64 of shape (N,).
    """
    owner = {"mnist": "load_mnist", "fashion-mnist": "load_fashion_mnist"}.get(
        spec.name, "load_idx_dataset"
    )
    if root is not None:
        check_instance(
            "root", root, (str, os.PathLike), owner=owner, describe="a str or os.PathLike, or None"
        )
    download = check_bool("download", download, owner=owner)
    if progress is not None:
        progress = check_bool("progress", progress, owner=owner)
    root = Path(root) if root is not None else default_root()
    arrays = {}
    for key, name in SPLIT_FILES.items():
        path = next((p for p in _candidates(root, spec, name) if p.is_file()), None)
        if path is None:
            if not download:
                raise DatasetError(
                    f"{spec.name} file {name} not found in {root} (or {root / spec.name}); pass "
                    f"--data-dir DIR pointing at the four files, or allow downloading"
                )
            try:
                path = download_file(
                    name,
                    mirrors or spec.mirrors,
                    spec.gz_sha256[name],
                    root / spec.name / name,
                    progress=progress,
                )
            except DownloadError as exc:
                raise DatasetError(
                    f"{exc}. Offline? Copy the four {spec.name} files into a folder and pass --data-dir DIR"
                ) from None
        arrays[key] = read_verified(path, spec, name)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{spec.name} {split}: expected images (N, H, W) and labels (N,); received "
                f"{images.shape} and {labels.shape}"
            )
    return (
        (to_nchw(arrays["train_images"], spec.name), arrays["train_labels"].astype(np.int64)),
        (to_nchw(arrays["test_images"], spec.name), arrays["test_labels"].astype(np.int64)),
    )


def load_mnist(root=None, download: bool = False, **kwargs):
    """MNIST digits; see :func:`load_idx_dataset`."""
    return load_idx_dataset(MNIST, root, download, **kwargs)


def load_fashion_mnist(root=None, download: bool = False, **kwargs):
    """Fashion-MNIST (Zalando); see :func:`load_idx_dataset`."""
    return load_idx_dataset(FASHION_MNIST, root, download, **kwargs)
