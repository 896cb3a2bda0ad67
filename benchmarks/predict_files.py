"""Time ``gpucnn predict`` on many PNG files (decoding included), with the gpucnn on the path.

    PYTHONPATH=. python benchmarks/predict_files.py [--count 1000] [--size 28] [--json FILE]

Writes ``count`` grey PNGs of ``size`` x ``size`` pixels (Pillow's default PNG filters) and a
randomly initialised ``reference`` model into a temporary folder, then times one
``gpucnn predict MODEL FILE...`` run in this process (median of ``--repeats``, output
discarded) and, separately, decoding the files alone with ``gpucnn.data.images.load_images``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gpucnn import Sequential
from gpucnn.architectures import architecture
from gpucnn.checkpoint import save_checkpoint
from gpucnn.cli import main
from gpucnn.data.images import load_images


def run(count: int, size: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = Sequential.from_config(
            architecture("reference", (1, size, size), 10), backend="numpy"
        )
        save_checkpoint(folder / "model.npz", model)
        files = []
        for i in range(count):
            pixels = np.zeros((size, size), np.uint8)
            pixels[size // 4 : -size // 4, size // 3 : -size // 3] = rng.integers(
                100, 256, dtype=np.uint8
            )
            pixels = np.clip(pixels + rng.integers(0, 40, pixels.shape), 0, 255).astype(np.uint8)
            files.append(str(folder / f"{i}.png"))
            Image.fromarray(pixels).save(files[-1])
        decode = []
        for _ in range(repeats):  # decoding alone: the image reader
            start = time.perf_counter()
            for path in files:
                load_images(path)
            decode.append(time.perf_counter() - start)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = main(["predict", str(folder / "model.npz"), *files, "--backend", "numpy"])
            times.append(time.perf_counter() - start)
            if code != 0:
                raise SystemExit(f"predict failed with exit code {code}")
    return {
        "files": count,
        "size": size,
        "predict_median_s": statistics.median(times),
        "decode_median_s": statistics.median(decode),
        "predict_times_s": times,
        "decode_times_s": decode,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    result = run(args.count, args.size, args.repeats)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
