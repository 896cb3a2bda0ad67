"""Seeded, stratified train/validation splits and standardisation."""

from __future__ import annotations

import numpy as np

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
    if n_val >= len(x) > 0:
        raise ArgumentError(
            f"{owner}: expected val_fraction to leave at least one training sample; received "
            f"{val_fraction} of {len(x)} samples, which holds out all {n_val}"
        )
    labels = np.asarray(y)
    if labels.dtype.kind in "fc" and not np.all(np.isfinite(labels)):
        raise ArgumentError(f"{owner}: expected finite labels; received a NaN or infinite label")
    if n_val == 0:
        return (x, y), (x.subset([]) if hasattr(x, "subset") else x[:0], y[:0])
    counts = np.unique_counts(labels).counts
    stratify = counts.min() >= 2 and len(counts) <= min(n_val, len(x) - n_val)
    train, val = _split_indices(labels, n_val, seed, stratify)
    if hasattr(x, "subset"):  # a disk-backed source: split row indices, read nothing
        return (x.subset(train), y[train]), (x.subset(val), y[val])
    return (x[train], y[train]), (x[val], y[val])


def _split_indices(labels: np.ndarray, n_val: int, seed: int, stratify: bool):
    """``(train, val)`` row indices: the split scikit-learn's ``train_test_split(...,
    test_size=n_val, random_state=seed, shuffle=True, stratify=labels if stratify else None)``
    makes (the tests check they are equal, so runs and resumed runs keep their splits),
    without importing scikit-learn, which costs 1.5-2 s at the start of every command.

    Stratified: each class gives the training side its share of ``len - n_val`` rows (floors,
    then one more to the largest remainders, ties drawn), the validation side its share of
    ``n_val`` from what is left, each class's rows drawn in a seeded order; both sides are
    shuffled. Otherwise one seeded permutation: its first ``n_val`` rows are held out.
    """
    n = len(labels)
    rng = np.random.RandomState(seed)  # the generator scikit-learn draws from, in its order
    if not stratify:
        order = rng.permutation(n)
        return order[n_val:], order[:n_val]
    _, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes)
    members = np.split(np.argsort(codes, kind="mergesort"), np.cumsum(counts)[:-1])
    train_counts = _proportional_counts(counts, n - n_val, rng)
    val_counts = _proportional_counts(counts - train_counts, n_val, rng)
    train, val = [], []
    for rows, n_train, n_held in zip(members, train_counts, val_counts, strict=True):
        shuffled = rows[rng.permutation(len(rows))]
        train.append(shuffled[:n_train])
        val.append(shuffled[n_train : n_train + n_held])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


def _proportional_counts(counts: np.ndarray, draws: int, rng: np.random.RandomState):
    """``draws`` split over classes in proportion to ``counts``: each class its floor, then one
    more for the classes with the largest remainders, ties drawn with ``rng``."""
    exact = counts / counts.sum() * draws
    share = np.floor(exact)
    missing = int(draws - share.sum())
    remainders = exact - share
    for value in np.unique(remainders)[::-1]:  # largest first
        if missing <= 0:
            break
        (tied,) = np.nonzero(remainders == value)
        take = min(len(tied), missing)
        share[rng.choice(tied, size=take, replace=False)] += 1
        missing -= take
    return share.astype(int)


def standardize(x_train: np.ndarray, *others: np.ndarray):
    """Subtract the training mean and divide by its std (one scalar each, from ``x_train``).

    Returns the standardised training array followed by ``others`` transformed alike.
    """
    arrays = [check_array("x", a, owner="standardize") for a in (x_train, *others)]
    mean, std = float(arrays[0].mean()), float(arrays[0].std()) or 1.0
    return tuple(((a - mean) / std).astype(np.float32) for a in arrays)
