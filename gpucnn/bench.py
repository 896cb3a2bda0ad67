"""Throughput benchmark on synthetic data: training and inference images/s, per-layer times.

Used by ``gpucnn bench``. Every figure is the median of several timed runs after warm-up;
on a GPU the device is synchronised before each clock read.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any

import numpy as np

from .architectures import architecture
from .backend import blas_info, device_info, select_backend, synchronize, to_device
from .cuda_graph import training_step
from .functional._cpu_threads import cpu_threads
from .model import Sequential
from .optim import SGD
from .resources import check_allocation, peak_rss_mib, retain_freed_memory

INPUT_SHAPE = (1, 28, 28)
CLASSES = 10


def _median_time(fn, repeats: int, xp) -> float:
    times = []
    for _ in range(repeats):
        synchronize(xp)
        start = time.perf_counter()
        fn()
        synchronize(xp)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_model(name: str, backend, seed: int = 0) -> Sequential:
    return Sequential.from_config(
        architecture(name, INPUT_SHAPE, CLASSES), backend=backend, seed=seed
    )


def synthetic_batch(model: Sequential, batch_size: int, seed: int):
    """Random images (batch_size, *INPUT_SHAPE) in [0, 1) and labels, on the model's device."""
    check_allocation(
        4 * batch_size * math.prod(INPUT_SHAPE), f"a synthetic batch of {batch_size} images"
    )
    rng = np.random.default_rng(seed)
    x = rng.random((batch_size, *INPUT_SHAPE), dtype=np.float32)
    y = rng.integers(0, CLASSES, batch_size)
    return to_device(x, model.xp), to_device(y, model.xp)


def train_throughput(model: Sequential, batch_size: int, steps: int, repeats: int) -> float:
    """Training images/s: forward, loss, backward and an SGD-momentum step per batch."""
    retain_freed_memory()  # as Trainer.fit does
    xp = model.xp
    x, y = synthetic_batch(model, batch_size, seed=0)
    optimizer = SGD(lr=0.01, momentum=0.9)
    step = training_step(model, optimizer)

    def run():
        for _ in range(steps):
            step(x, y)

    _median_time(run, 1, xp)  # warm-up: allocator, BLAS threads, kernels
    return batch_size * steps / _median_time(run, repeats, xp)


def infer_throughput(model: Sequential, batch_size: int, repeats: int) -> float:
    """Inference images/s: ``predict_proba`` on ``batch_size`` images (in the model's
    inference blocks), probabilities back on the host."""
    xp = model.xp
    x, _ = synthetic_batch(model, batch_size, seed=1)

    def run():
        model.predict_proba(x)

    _median_time(run, 2, xp)
    return batch_size / _median_time(run, repeats, xp)


class StepTimer:
    """A ``step_hook`` for :meth:`Sequential.forward` / ``backward``: the seconds each step
    takes, per phase, with the device synchronised around it."""

    def __init__(self, xp):
        self.xp = xp
        self.times: dict[tuple[str, str], list[float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, phase: str):
        synchronize(self.xp)
        start = time.perf_counter()
        yield
        synchronize(self.xp)
        self.times.setdefault((name, phase), []).append(time.perf_counter() - start)


def layer_profile(model: Sequential, batch_size: int, repeats: int) -> list[dict[str, Any]]:
    """Median forward and backward milliseconds of every step for one training batch.

    Steps are the model's layers, except that fused runs (a ``ReLU, MaxPool2D`` pair, see
    :mod:`gpucnn.layers.fused`) are one step, reported as ``relu_1+maxpool2d_1``.
    """
    x, y = synthetic_batch(model, batch_size, seed=2)
    model.loss_and_backward(x, y, check=False)  # warm-up, not timed
    timer = StepTimer(model.xp)
    for _ in range(repeats):
        model.loss_and_backward(x, y, check=False, step_hook=timer)
    return [
        {
            "layer": step.name,
            "forward_ms": 1e3 * statistics.median(timer.times[step.name, "forward"]),
            "backward_ms": 1e3 * statistics.median(timer.times[step.name, "backward"]),
        }
        for step in model.steps
    ]


def run_bench(args) -> dict[str, Any]:
    """Measure and print what ``gpucnn bench`` reports; returns the report (its --json)."""
    if min(args.batch_size) < 1 or args.infer_batch_size < 1 or args.repeats < 1 or args.steps < 1:
        raise ValueError("--batch-size, --infer-batch-size, --repeats and --steps must be >= 1")
    backend = select_backend(args.backend)
    model = build_model(args.model, backend)
    if args.precision:
        model.set_precision(args.precision)
    results = []
    for batch_size in args.batch_size:
        train = train_throughput(model, batch_size, args.steps, args.repeats)
        infer = infer_throughput(model, batch_size, args.repeats)
        results.append(
            {
                "batch_size": batch_size,
                "train_images_per_second": train,
                "infer_images_per_second": infer,
            }
        )
        print(
            f"{args.model} batch {batch_size:>4}: train {train:>9.0f} img/s   inference {infer:>9.0f} img/s",
            flush=True,
        )
    infer_large = infer_throughput(model, args.infer_batch_size, args.repeats)
    print(f"{args.model} inference at batch {args.infer_batch_size}: {infer_large:.0f} img/s")
    profile = [] if args.no_profile else layer_profile(model, args.batch_size[0], args.repeats)
    if profile:
        print(f"per-layer median ms at batch {args.batch_size[0]} (forward / backward):")
        for row in profile:
            print(f"  {row['layer']:<24} {row['forward_ms']:8.2f} / {row['backward_ms']:8.2f}")
    report = {
        "model": args.model,
        "backend": backend.name,
        "backend_reason": backend.reason,
        "precision": model.precision.name,
        "train_images_per_second": results[0]["train_images_per_second"],
        "infer_images_per_second": results[0]["infer_images_per_second"],
        "infer_batch_size": args.infer_batch_size,
        "infer_images_per_second_large_batch": infer_large,
        "peak_rss_mib": peak_rss_mib(),
        "results": results,
        "layers": profile,
        "repeats": args.repeats,
        "steps": args.steps,
        "device": device_info(backend),
        **blas_info(),
        "cpu_threads": cpu_threads(),
    }
    print(
        f"peak RSS {report['peak_rss_mib']:.0f} MiB; backend {backend.name}; BLAS {report.get('blas')} x{report.get('blas_threads')}; CPU threads {report['cpu_threads']}"
    )
    return report
