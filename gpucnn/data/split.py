"""Seeded, stratified train/validation splits and standardisation."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split


def train_val_split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """Hold out ``round(len(x) * val_fraction)`` samples, chosen with ``seed``.

    The split is stratified by ``y`` (each class keeps its share on both sides) whenever
    every class has at least two samples and the hold-out can hold one of each; otherwise
    it is a plain seeded shuffle.

    Returns ``(x_train, y_train), (x_val, y_val)``; the validation part may be empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"expected val_fraction in [0, 1); received {val_fraction!r}")
    n_val = int(round(len(x) * val_fraction))
    if n_val == 0:
        return (x, y), (x[:0], y[:0])
    counts = np.unique_counts(np.asarray(y)).counts
    stratify = y if counts.min() >= 2 and len(counts) <= min(n_val, len(x) - n_val) else None
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=n_val, random_state=seed, shuffle=True, stratify=stratify
    )
    return (x_train, y_train), (x_val, y_val)


def standardize(x_train: np.ndarray, *others: np.ndarray):
    """Subtract the training mean and divide by its std (one scalar each, from ``x_train``).

    Returns the standardised training array followed by ``others`` transformed alike.
    """
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
    return tuple(((a - mean) / std).astype(np.float32) for a in (x_train, *others))
