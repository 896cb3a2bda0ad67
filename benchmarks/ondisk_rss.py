"""Peak resident memory of training from an on-disk ``.npy`` dataset larger than you would load.

    PYTHONPATH=. python benchmarks/ondisk_rss.py --gb 2 --folder /tmp/ondisk [--epochs 1]

Writes ``x.npy`` (uint8, N x 3 x 64 x 64, about ``--gb`` GB; kept if present) and ``y.npy``
in ``--folder``, then trains a one-layer model on it, streamed batch by batch
(``load_data(..., stream=True)``), and prints the peak RSS before and after training as JSON.
The float32 copy an in-memory run would hold is 4x the file size.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np

from gpucnn import Sequential
from gpucnn.data.files import load_data
from gpucnn.resources import peak_rss_mib
from gpucnn.trainer import Trainer

SHAPE = (3, 64, 64)


def write_dataset(folder: Path, gb: float) -> None:
    n = int(gb * 1e9) // int(np.prod(SHAPE))
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "x.npy").is_file() and np.load(folder / "x.npy", mmap_mode="r").shape[0] == n:
        return
    x = np.lib.format.open_memmap(folder / "x.npy", "w+", np.uint8, (n, *SHAPE))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    for start in range(0, n, 4096):  # classes differ in brightness, so there is something to learn
        stop = min(start + 4096, n)
        block = rng.integers(0, 128, (stop - start, *SHAPE), dtype=np.uint8)
        x[start:stop] = block + (y[start:stop] * 12).astype(np.uint8)[:, None, None, None]
    x.flush()
    del x
    np.save(folder / "y.npy", y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    folder = Path(args.folder)
    # written in a child process: the pages it writes would otherwise count in this peak RSS
    writer = multiprocessing.get_context("spawn").Process(
        target=write_dataset, args=(folder, args.gb)
    )
    writer.start()
    writer.join()
    start_rss = peak_rss_mib()
    data = load_data(folder, test_fraction=0.05, seed=0, stream=True)
    config = {
        "input_shape": list(SHAPE),
        "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 10}],
    }
    model = Sequential.from_config(config, backend="numpy")
    before = peak_rss_mib()
    start = time.perf_counter()
    Trainer(model, log=print, progress=False).fit(
        data.x_train, data.y_train, validation_data=(data.x_test, data.y_test),
        epochs=args.epochs, batch_size=args.batch_size,
    )  # fmt: skip
    print(json.dumps({
        "file_gb": (folder / "x.npy").stat().st_size / 1e9,
        "images": len(data.x_train) + len(data.x_test),
        "peak_rss_mib_after_import": start_rss,
        "peak_rss_mib_before_fit": before,
        "peak_rss_mib_after_fit": peak_rss_mib(),
        "fit_s": time.perf_counter() - start,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
