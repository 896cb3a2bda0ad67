"""What handing a part of a NumPy pass to another CPU thread costs, and what it costs a step.

``gpucnn.functional._cpu_threads.over_images`` splits a pass over the CPU threads; each split
hands parts to worker threads and waits for them. This script times that hand-off on parts
that do nothing (so only the hand-off is left), for the library's workers and for a
``concurrent.futures.ThreadPoolExecutor`` doing the same (the way the library split before),
then the training step of a suite network with either, alternating the two in one process so
that both see the same machine load. Medians are printed with the command and the CPU.

    python benchmarks/thread_handoff.py [--network resnet] [--batch-size 32] [--pairs 8]
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def executor_over_images(pool: ThreadPoolExecutor):
    """``over_images`` with its parts run by ``pool`` (futures), as the library did before."""
    from gpucnn.functional import _cpu_threads as threads

    def over_images(n, bytes_per_image, work):
        parts = threads.count_parts(n, bytes_per_image)
        if parts <= 1:
            work(0, n)
            return
        bounds = [n * k // parts for k in range(parts + 1)]
        futures = [
            pool.submit(contextvars.copy_context().run, threads._in_part, work, lo, hi)
            for lo, hi in zip(bounds[1:-1], bounds[2:], strict=True)
        ]
        try:
            threads._in_part(work, bounds[0], bounds[1])
        finally:
            for future in futures:
                future.exception()
        for future in futures:
            future.result()

    return over_images


def use(over_images) -> None:
    """Make the NumPy kernels split with ``over_images``."""
    from gpucnn.functional import _numpy_kernels, _winograd

    _numpy_kernels.over_images = _winograd.over_images = over_images


def median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="resnet", help="a cpu_suite.py network")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["GPUCNN_CPU_THREADS"] = str(args.threads)

    import numpy as np
    from cpu_suite import build, cpu_name
    from threadpoolctl import threadpool_limits

    from gpucnn.functional import _cpu_threads
    from gpucnn.optim import SGD
    from gpucnn.resources import retain_freed_memory
    from gpucnn.step import TrainingStep

    threadpool_limits(args.threads)
    retain_freed_memory()
    variants = {
        "executor": executor_over_images(ThreadPoolExecutor(args.threads - 1)),
        "workers": _cpu_threads.over_images,
    }
    print(" ".join(["python benchmarks/thread_handoff.py", *sys.argv[1:]]))
    print(f"CPU: {cpu_name()}, {args.threads} threads")

    def nothing(start, stop):
        return None

    with _cpu_threads.parallel():
        for name, over_images in variants.items():
            split = functools.partial(over_images, 100, 1 << 30, nothing)
            median_seconds(split, 200)  # warm-up: threads started
            cost = median_seconds(split, 2000)
            print(f"  empty split in {args.threads}, {name}: {1e6 * cost:.0f} us")

    model = build(args.network)
    step = TrainingStep(model, SGD(0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, *model.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, args.batch_size)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for over_images in variants.values():  # warm-up
        use(over_images)
        median_seconds(lambda: step(x, y), 2)
    for _ in range(args.pairs):
        for name, over_images in variants.items():
            use(over_images)
            seconds[name].append(median_seconds(lambda: step(x, y), 3))
    use(_cpu_threads.over_images)
    before, after = (statistics.median(seconds[name]) for name in variants)
    print(
        f"  {args.network} training step at batch {args.batch_size}: executor "
        f"{1e3 * before:.1f} ms, workers {1e3 * after:.1f} ms, speed-up {before / after:.2f}x "
        f"(medians of {args.pairs} alternating pairs of 3 steps)"
    )


if __name__ == "__main__":
    main()
