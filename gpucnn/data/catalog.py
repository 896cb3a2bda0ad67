"""The datasets the command line knows by name, each with its train/test policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..validation import check_bool, check_choice, check_instance, check_int
from .digits import load_digits
from .mnist import FASHION_MNIST, MNIST, load_fashion_mnist, load_mnist
from .split import train_val_split

DATASETS = ("digits", "mnist", "fashion-mnist")
DIGITS_TEST_FRACTION = 0.2


@dataclass
class Dataset:
    """A named dataset: images ``(N, C, H, W)`` float32 in [0, 1] (an in-memory array or a
    disk-backed :class:`gpucnn.data.files.ImageSource`), int64 labels, class names."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # unreadable files left out

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(
    name: str, data_dir: str | Path | None = None, download: bool = False, seed: int = 0
) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : one of ``DATASETS``.
    data_dir : folder with the IDX files (MNIST-like datasets; default ``default_root()``).
    download : fetch missing IDX files.
    seed : digits has no official test split, so a seeded, stratified 20 % hold-out plays
        that role; ``seed`` chooses it.

    Raises
    ------
    ValueError for an unknown name; DatasetError / DownloadError from the loaders.
    """
    owner = "load_dataset"
    name = check_choice("name", name, DATASETS, owner=owner, describe=f"a dataset in {DATASETS}")
    if data_dir is not None:
        check_instance(
            "data_dir", data_dir, (str, Path), owner=owner, describe="a str or Path, or None"
        )
    download = check_bool("download", download, owner=owner)
    seed = check_int("seed", seed, 0, 2**32 - 1, owner=owner)  # scikit-learn's seed range
    if name == "digits":
        x, y = load_digits()
        (x_train, y_train), (x_test, y_test) = train_val_split(x, y, DIGITS_TEST_FRACTION, seed)
        return Dataset(name, x_train, y_train, x_test, y_test, [str(d) for d in range(10)])
    loader, spec = (load_mnist, MNIST) if name == "mnist" else (load_fashion_mnist, FASHION_MNIST)
    (x_train, y_train), (x_test, y_test) = loader(data_dir, download=download)
    return Dataset(name, x_train, y_train, x_test, y_test, list(spec.classes))


__all__ = ["DATASETS", "Dataset", "load_dataset"]
