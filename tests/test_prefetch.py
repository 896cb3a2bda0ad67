"""Batches of disk-backed data read ahead by worker threads give the results of reading them
one by one: the same arrays in the same order, and the same trained weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpucnn import Sequential
from gpucnn.data import DatasetError
from gpucnn.data.files import FolderImages, load_data
from gpucnn.data.prefetch import Prefetcher
from gpucnn.trainer import Trainer
from gpucnn.validation import ArgumentError


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two classes of 15 PNG/JPEG images each, of mixed sizes (resized when read)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label, name in enumerate(["dark", "light"]):
        (root / name).mkdir(parents=True)
        for i in range(15):
            size = (10, 12, 14)[i % 3]
            pixels = rng.integers(0, 100, (size, size, 3)) + 120 * label
            path = root / name / f"{i}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


def batches_of(n: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


@pytest.mark.parametrize(("workers", "depth"), [(1, 1), (3, 2), (4, 16)])
def test_prefetched_batches_equal_direct_reads_in_order(image_folder, workers, depth):
    data = load_data(image_folder, (8, 8), 3, 0.2, 0, stream=True)
    assert isinstance(data.x_train, FolderImages)
    batches = batches_of(len(data.x_train), 7)
    with Prefetcher(data.x_train, batches, workers=workers, depth=depth) as reader:
        prefetched = list(reader)
    assert len(prefetched) == len(batches)
    for rows, batch in zip(batches, prefetched, strict=True):
        np.testing.assert_array_equal(batch, data.x_train[rows])


def test_a_read_error_is_raised_at_its_batch(tmp_path):
    class Failing:
        def __getitem__(self, rows):
            if 5 in rows:
                raise DatasetError("row 5 is unreadable")
            return np.zeros((len(rows), 1, 2, 2), np.float32)

    reader = Prefetcher(Failing(), [np.array([0, 1]), np.array([5]), np.array([2])], depth=3)
    assert next(reader).shape == (2, 1, 2, 2)
    with pytest.raises(DatasetError, match="row 5 is unreadable"):
        next(reader)
    reader.close()
    with pytest.raises(StopIteration):
        next(reader)


@pytest.mark.parametrize(("workers", "depth"), [(0, 1), (1, 0)])
def test_prefetcher_refuses_bad_sizes(workers, depth):
    with pytest.raises(
        ArgumentError, match="expected (workers|depth) to be an int >= 1; received 0"
    ):
        Prefetcher(np.zeros((2, 1)), [], workers=workers, depth=depth)


def small_model(seed: int = 0) -> Sequential:
    config = {
        "input_shape": [3, 8, 8],
        "layers": [
            {"type": "Conv2D", "filters": 2, "kernel_size": 3},
            {"type": "ReLU"},
            {"type": "Flatten"},
            {"type": "Dense", "units": 2},
        ],
    }
    return Sequential.from_config(config, backend="numpy", seed=seed)


def test_training_on_prefetched_folder_batches_equals_unprefetched(image_folder):
    data = load_data(image_folder, (8, 8), 3, 0.2, 0, stream=True)
    results = []
    for prefetch in (0, 3):
        model = small_model()
        trainer = Trainer(model, seed=1, log=None, progress=False)
        trainer.prefetch_batches = prefetch
        history = trainer.fit(
            data.x_train,
            data.y_train,
            validation_data=(data.x_test, data.y_test),
            epochs=2,
            batch_size=5,
        )
        results.append((model.state_dict(), history["loss"], history["val_loss"]))
    (a, loss_a, val_a), (b, loss_b, val_b) = results
    assert loss_a == loss_b and val_a == val_b
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
