"""How a NumPy pass of the network uses every CPU core: gpucnn's own threads, one BLAS thread.

NumPy runs an element-wise pass (a copy, a ``maximum``, a compare) on one core, and most of a
CPU training step is such passes between GEMMs. NumPy and the BLAS release the GIL, so an op
that splits its images over threads, each running the op's whole pipeline (im2col, GEMM,
pooling) on its own images, uses every core for all of it. The BLAS must then run each call
on one thread: OpenBLAS's threads keep spinning for a while after a multi-threaded call and
take the cores from ours (measured on a 2-core Xeon: a copy split over two threads ran 2x
faster alone, and no faster right after a two-thread GEMM).

:func:`parallel` is that mode. In the thread that opened it, :func:`over_images` splits work
over :func:`cpu_threads` threads; everywhere else it is one call on the caller's thread. The
BLAS limit is process-wide (the BLAS has one setting): while any thread has a block open,
every BLAS call in the process runs on one thread, and the last block to close gives the BLAS
its thread count back. :class:`gpucnn.Sequential` opens a block around every NumPy forward
and backward pass.

``GPUCNN_CPU_THREADS`` sets the number of threads (1 turns this mode off; a larger number is
taken as given). By default it is the BLAS's thread count (so ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and threadpoolctl limits apply), at most the cores this process may
run on and :data:`MAX_THREADS`. Where threadpoolctl finds no BLAS it can limit, the mode is off.
"""

from __future__ import annotations

import contextvars
import math
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

CPU_THREADS_ENV = "GPUCNN_CPU_THREADS"
# Threads stop paying off well before a server's core count (likely the GIL, which each
# thread's Python and NumPy's own bookkeeping need between passes). Measured on a 16-core
# Xeon (AVX-512), `reference` training at batch 128 / 512, img/s: BLAS threads alone 5,691 /
# 4,716; 4 threads 6,403 / 7,268; 8 threads 6,197 / 10,785; 16 threads 3,785 / 8,883.
MAX_THREADS = 8
# Splitting a pass into p parts costs about p thread hand-offs (~27 us for a split in two on
# a 2-core EPYC, see _tasks) and saves (1 - 1/p) of its time, so the best p grows as the
# square root of the work: a part gets at least this many bytes when the work is split in two,
# and p / 2 times as many in p parts (512 KiB parts in two, 1 MiB in four, 2 MiB in eight).
# Measured (AMD EPYC, 2 threads, training step ms, medians of 3, 2.5 MiB / 512 KiB): at batch
# 32 reference 15.4 / 10.7, lenet 9.0 / 7.8, resnet 88.6 / 81.3; resnet at batch 128 267 / 256;
# on a 16-core Xeon parts of 2-4 MB of the reference network (16-32 images) ran best.
MIN_PART_BYTES = 1 << 19

_lock = threading.Lock()
_blas = None  # threadpoolctl's controller of the loaded BLAS libraries
_blas_modules = -1  # len(sys.modules) when it was made
_open = 0  # parallel() blocks open in this process, in any thread
_limiter = None  # the BLAS limit held while any is open
_threads = 1  # the thread count of the open blocks, found when the first opened
# per thread: .threads, the split while its block is open (1 inside a part); .depth, its
# open blocks
_local = threading.local()
# The worker threads and the queue they take parts from: plain threads on one SimpleQueue,
# not a ThreadPoolExecutor, whose futures, conditions and idle-thread bookkeeping cost ~50 us
# of Python per part, paid ~60 times in a small network's training step. Measured (AMD EPYC,
# 2 threads, a split in two of an empty part): 75 us through the executor, 27 us here.
_tasks: queue.SimpleQueue = queue.SimpleQueue()
_workers = 0  # worker threads started in this process


def _blas_controller():
    """threadpoolctl's controller of the BLAS libraries loaded now. Looked for again whenever
    modules were imported since the last look (an import may load another BLAS, as SciPy
    brings its own): a look takes ~1.6 ms, the check a ``len``."""
    global _blas, _blas_modules
    if _blas is None or len(sys.modules) != _blas_modules:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
        _blas_modules = len(sys.modules)
    return _blas


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads() -> int:
    """Threads a parallel pass uses: ``GPUCNN_CPU_THREADS``, else the BLAS's thread count up
    to the usable cores and :data:`MAX_THREADS` (1 where no BLAS thread count can be set).

    Raises ``ValueError`` for a setting that is not a positive integer.
    """
    setting = os.environ.get(CPU_THREADS_ENV, "").strip()
    if setting:
        if not (setting.isascii() and setting.isdigit()) or int(setting) < 1:
            raise ValueError(
                f"expected {CPU_THREADS_ENV} to be a positive integer; received {setting!r}"
            )
        return int(setting) if _blas_controller().lib_controllers else 1
    counts = [lib.num_threads for lib in _blas_controller().lib_controllers]
    return max(1, min(max(counts, default=1), _usable_cores(), MAX_THREADS))


@contextmanager
def parallel() -> Iterator[None]:
    """While open, :func:`over_images` in this thread splits work over :func:`cpu_threads`
    threads, and every BLAS call in the process runs on one thread. Blocks nest (an inner
    one, or one opened inside a part of a split, changes nothing), and may be open in several
    threads at once: all use the thread count found when the first of them opened."""
    global _open, _limiter, _threads
    outer = getattr(_local, "threads", 0) == 0  # 1 inside a part: never splits again
    with _lock:
        if _open == 0:  # the BLAS count is read before the limit changes it
            _threads = cpu_threads()
            if _threads > 1:
                _limiter = _blas_controller().limit(limits=1)
        threads = _threads
        _open += 1
    _local.depth = getattr(_local, "depth", 0) + 1
    if outer:
        _local.threads = threads
    try:
        yield
    finally:
        if outer:
            _local.threads = 0
        _local.depth -= 1
        with _lock:
            _open -= 1
            if _open == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None


def _worker(tasks: queue.SimpleQueue) -> None:
    """A worker thread: runs parts until the process ends (it is a daemon, idle in ``get``)."""
    while True:
        outcomes, done, context, work, start, stop = tasks.get()
        error = None
        try:
            context.run(_in_part, work, start, stop)
        except BaseException as exc:  # handed to the caller, which raises it
            error = exc
        # an idle worker keeps nothing of the part it ran (``work`` holds the caller's
        # arrays); dropped before the caller can go on
        del context, work
        outcomes.append(error)  # first the outcome, then the wake-up (see _wait_for)
        done.put(None)
        del outcomes, done, error


def _submit(parts: int, work: Callable, bounds: list[int]) -> tuple[list, queue.SimpleQueue]:
    """Queue parts 1.. for the workers (started, up to ``parts - 1`` of them, if needed).
    Returns ``(outcomes, done)``: as each part ends, its outcome (None, or its exception) is
    appended to the list, and then an item is put on the queue to wake the caller."""
    global _workers
    with _lock:
        while _workers < parts - 1:
            threading.Thread(
                target=_worker, args=(_tasks,), name=f"gpucnn-cpu-{_workers}", daemon=True
            ).start()
            _workers += 1
        tasks = _tasks
    outcomes: list = []
    done: queue.SimpleQueue = queue.SimpleQueue()
    for k in range(1, parts):
        tasks.put((outcomes, done, contextvars.copy_context(), work, bounds[k], bounds[k + 1]))
    return outcomes, done


def _in_part(work: Callable[[int, int], None], start: int, stop: int) -> None:
    """Run one part with this thread marked as inside a part (ops there do not split)."""
    threads, _local.threads = getattr(_local, "threads", 0), 1
    try:
        work(start, stop)
    finally:
        _local.threads = threads


def _after_fork_in_child() -> None:
    # The child has only the forking thread: its open blocks are the only ones, the parent's
    # worker threads are gone (their queue may hold parts, or be locked), and the lock may
    # have been held by a thread that is gone too.
    global _lock, _open, _limiter, _tasks, _workers
    _lock, _tasks, _workers = threading.Lock(), queue.SimpleQueue(), 0
    _open = getattr(_local, "depth", 0)
    if _open == 0 and _limiter is not None:  # only other threads had blocks open
        _limiter.restore_original_limits()
        _limiter = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def count_parts(n: int, bytes_per_image: int) -> int:
    """Into how many ranges :func:`over_images` splits ``n`` images of that size here and now."""
    threads = getattr(_local, "threads", 0)
    if threads <= 1:
        return 1
    if MIN_PART_BYTES <= 0:
        return min(threads, n)
    # p parts of at least MIN_PART_BYTES * p / 2 bytes each: p * p <= 2 * work / MIN_PART_BYTES
    return min(threads, n, max(1, math.isqrt(2 * n * bytes_per_image // MIN_PART_BYTES)))


def _wait_for(outcomes: list, done: queue.SimpleQueue, count: int) -> None:
    """Wait until ``count`` parts have put their outcome in ``outcomes``: the parts write the
    caller's arrays, which must not be reused (or freed) before they end. A Ctrl-C while
    waiting is raised once they have. The count is read from the list, never from the
    wake-ups taken: a KeyboardInterrupt may land just after ``get`` returned, and that
    wake-up is then lost (Python runs the handler when the waiting thread gets back to
    bytecode, which may be only after the queue woke it)."""
    interrupted = None
    while True:
        try:
            while len(outcomes) < count:
                done.get()
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def over_images(n: int, bytes_per_image: int, work: Callable[[int, int], None]) -> None:
    """Call ``work(start, stop)`` on consecutive ranges that cover ``range(n)``.

    In a thread inside :func:`parallel` the ranges run at once on up to :func:`cpu_threads`
    threads (the caller's thread takes the first), each in a copy of the caller's context (so
    ``np.errstate`` applies); ``work`` must touch only items ``start:stop`` of the arrays it
    writes. Ops called inside a part do not split again. Elsewhere, or when the work is too
    small to split (:func:`count_parts`, :data:`MIN_PART_BYTES`), it is one call
    ``work(0, n)``. An exception in a part is raised here once every part is done.
    """
    parts = count_parts(n, bytes_per_image)
    if parts <= 1:
        work(0, n)
        return
    bounds = [n * k // parts for k in range(parts + 1)]
    outcomes, done = _submit(parts, work, bounds)
    try:
        _in_part(work, bounds[0], bounds[1])
    finally:
        _wait_for(outcomes, done, parts - 1)
    for error in outcomes:
        if error is not None:
            raise error
