"""How a NumPy pass of the network uses every CPU core: gpucnn's own threads, one BLAS thread.

NumPy runs an element-wise pass (a copy, a ``maximum``, a compare) on one core, and most of a
CPU training step is such passes between GEMMs. NumPy and the BLAS release the GIL, so an op
that splits its images over threads, each running the op's whole pipeline (im2col, GEMM,
pooling) on its own images, uses every core for all of it. The BLAS must then run each call
on one thread: OpenBLAS's threads keep spinning for a while after a multi-threaded call and
take the cores from ours (measured on a 2-core Xeon: a copy split over two threads ran 2x
faster alone, and no faster right after a two-thread GEMM).

:func:`parallel` is that mode: while one is open (process-wide), the BLAS runs single-threaded
and :func:`over_images` splits work over :func:`cpu_threads` threads; elsewhere it is one call
on the caller's thread and the BLAS keeps its own threads. :class:`gpucnn.Sequential` opens
it around every NumPy forward and backward pass.

``GPUCNN_CPU_THREADS`` sets the number of threads (1 turns this mode off); by default it is
the BLAS's thread count (so ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and threadpoolctl
limits apply), at most :data:`MAX_THREADS`. Where threadpoolctl finds no BLAS it can limit,
the mode is off.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

CPU_THREADS_ENV = "GPUCNN_CPU_THREADS"
# Each thread's Python (and NumPy's own bookkeeping) takes the GIL between passes, so threads
# stop paying off well before a server's core count. Measured on a 16-core Xeon (AVX-512),
# `reference` training at batch 128 / 512, img/s: BLAS threads alone 5,691 / 4,716; 4 threads
# 6,403 / 7,268; 8 threads 6,197 / 10,785; 16 threads 3,785 / 8,883.
MAX_THREADS = 8
# A part gets at least this much work (bytes its passes touch): on that host parts of 16-32
# images of the reference network (2-4 MB) ran best.
MIN_PART_BYTES = 5 << 19

_lock = threading.Lock()
_blas = None  # threadpoolctl's controller of the loaded BLAS libraries, found once
_open = 0  # parallel() blocks open in this process
_limiter = None  # the BLAS limit held while any is open
_threads = 1  # threads over_images uses while any is open
_pool: ThreadPoolExecutor | None = None
_pool_key = (0, 0)  # (workers, process id): a forked child makes its own pool
_worker = threading.local()  # .active in the pool's threads: no nested splitting


def _blas_controller():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    return _blas


def cpu_threads() -> int:
    """Threads a parallel pass uses: ``GPUCNN_CPU_THREADS``, else the BLAS's thread count up
    to :data:`MAX_THREADS` (1 where no BLAS thread count can be set).

    Raises ``ValueError`` for a setting that is not a positive integer.
    """
    setting = os.environ.get(CPU_THREADS_ENV, "").strip()
    if setting:
        if not setting.isdigit() or int(setting) < 1:
            raise ValueError(
                f"expected {CPU_THREADS_ENV} to be a positive integer; received {setting!r}"
            )
        return int(setting) if _blas_controller().lib_controllers else 1
    counts = [lib.num_threads for lib in _blas_controller().lib_controllers]
    return min(max(counts, default=1), MAX_THREADS)


@contextmanager
def parallel() -> Iterator[None]:
    """While open, :func:`over_images` splits work over :func:`cpu_threads` threads and the
    BLAS runs one thread per call; on exit of the last open block the BLAS gets its thread
    count back. Blocks nest and may be opened from several threads."""
    global _open, _limiter, _threads
    with _lock:
        if _open == 0:
            _threads = cpu_threads()
            if _threads > 1:
                _limiter = _blas_controller().limit(limits=1)
        _open += 1
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            if _open == 0:
                _threads = 1
                if _limiter is not None:
                    _limiter.restore_original_limits()
                    _limiter = None


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_key
    key = (workers, os.getpid())
    with _lock:
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[1] == key[1]:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="gpucnn-cpu",
                                       initializer=_mark_worker)  # fmt: skip
            _pool_key = key
        return _pool


def _mark_worker() -> None:
    _worker.active = True


def count_parts(n: int, bytes_per_image: int) -> int:
    """Into how many ranges :func:`over_images` splits ``n`` images of that size here and now."""
    threads = _threads if _open and not getattr(_worker, "active", False) else 1
    return min(threads, n, max(1, n * bytes_per_image // max(1, MIN_PART_BYTES)))


def over_images(n: int, bytes_per_image: int, work: Callable[[int, int], None]) -> None:
    """Call ``work(start, stop)`` on consecutive ranges that cover ``range(n)``.

    Inside :func:`parallel` the ranges run at once on up to :func:`cpu_threads` threads (the
    caller's thread takes the first); ``work`` must touch only items ``start:stop`` of the
    arrays it writes. Outside, or when a part would hold under :data:`MIN_PART_BYTES`, it is
    one call ``work(0, n)``. An exception in a part is raised here once every part is done.
    """
    parts = count_parts(n, bytes_per_image)
    if parts <= 1:
        work(0, n)
        return
    bounds = [n * k // parts for k in range(parts + 1)]
    pool = _executor(_threads - 1)
    futures = [pool.submit(work, bounds[k], bounds[k + 1]) for k in range(1, parts)]
    try:
        work(bounds[0], bounds[1])
    finally:
        for future in futures:
            future.exception()  # every part finishes before its arrays can be reused
    for future in futures:
        future.result()
