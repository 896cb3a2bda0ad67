"""Seeded, stratified train/validation splits and standardisation."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from ..validation import ArgumentError, check_array, check_float, check_int


def train_val_split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """Hold out ``round(len(x) * val_fraction)`` samples, chosen with ``seed``.

    The split is stratified by ``y`` (each class keeps its share on both sides) whenever
    every class has at least two samples and the hold-out can hold one of each; otherwise
    it is a plain seeded shuffle.

    Returns ``(x_train, y_train), (x_val, y_val)``; the validation part may be empty.
    """
    owner = "train_val_split"
    val_fraction = check_float("val_fraction", val_fraction, 0, 1, high_open=True, owner=owner)
    seed = check_int("seed", seed, 0, 2**32 - 1, owner=owner)  # scikit-learn's seed range
    x = check_array("x", x, owner=owner)
    y = check_array("y", y, owner=owner, describe="an array of labels")
    if len(x.shape) == 0 or len(y.shape) != 1 or y.shape[0] != x.shape[0]:
        raise ArgumentError(
            f"{owner}: expected y of shape ({x.shape[0] if x.shape else 'N'},), one label per "
            f"sample of x; received y of shape {tuple(y.shape)} for x of shape {tuple(x.shape)}"
        )
    n_val = int(round(len(x) * val_fraction))
    if n_val == 0:
        return (x, y), (x.subset([]) if hasattr(x, "subset") else x[:0], y[:0])
    counts = np.unique_counts(np.asarray(y)).counts
    stratify = y if counts.min() >= 2 and len(counts) <= min(n_val, len(x) - n_val) else None
    if hasattr(x, "subset"):  # a disk-backed source: split row indices, read nothing
        train, val = train_test_split(
            np.arange(len(x)), test_size=n_val, random_state=seed, shuffle=True, stratify=stratify
        )
        return (x.subset(train), y[train]), (x.subset(val), y[val])
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=n_val, random_state=seed, shuffle=True, stratify=stratify
    )
    return (x_train, y_train), (x_val, y_val)


def standardize(x_train: np.ndarray, *others: np.ndarray):
    """Subtract the training mean and divide by its std (one scalar each, from ``x_train``).

    Returns the standardised training array followed by ``others`` transformed alike.
    """
    arrays = [check_array("x", a, owner="standardize") for a in (x_train, *others)]
    mean, std = float(arrays[0].mean()), float(arrays[0].std()) or 1.0
    return tuple(((a - mean) / std).astype(np.float32) for a in arrays)
