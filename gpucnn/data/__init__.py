"""Datasets: the offline 8x8 digits now; IDX files, MNIST and batching alongside."""

from .digits import load_digits

__all__ = ["load_digits"]
