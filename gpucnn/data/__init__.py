"""Datasets: the offline 8x8 digits, IDX files, MNIST and Fashion-MNIST, splits, the named catalog."""

from .catalog import DATASETS, Dataset, load_dataset
from .digits import load_digits
from .download import DownloadError, download_file
from .idx import IdxError, read_idx, write_idx
from .mnist import FASHION_MNIST, MNIST, DatasetError, default_root, load_fashion_mnist, load_mnist
from .split import standardize, train_val_split

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetError",
    "DownloadError",
    "FASHION_MNIST",
    "IdxError",
    "MNIST",
    "default_root",
    "download_file",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
    "standardize",
    "train_val_split",
    "write_idx",
]
