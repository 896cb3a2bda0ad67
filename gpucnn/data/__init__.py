"""Datasets: the offline 8x8 digits, IDX files, MNIST and Fashion-MNIST, splits, the named
catalog, and your own data (image folders, .npz, disk-backed .npy)."""

from .catalog import DATASETS, Dataset, load_dataset
from .digits import load_digits
from .download import DownloadError, download_file
from .files import FolderImages, ImageSource, NpyImages, load_data, load_image_folder, load_npz
from .idx import IdxError, read_idx, write_idx
from .images import ImageError, read_image
from .mnist import FASHION_MNIST, MNIST, DatasetError, default_root, load_fashion_mnist, load_mnist
from .split import standardize, train_val_split

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetError",
    "DownloadError",
    "FASHION_MNIST",
    "FolderImages",
    "ImageError",
    "ImageSource",
    "IdxError",
    "MNIST",
    "NpyImages",
    "default_root",
    "download_file",
    "load_data",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "load_npz",
    "read_idx",
    "read_image",
    "standardize",
    "train_val_split",
    "write_idx",
]
