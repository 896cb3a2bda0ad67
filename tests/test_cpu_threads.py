"""The CPU thread mode of the NumPy path: work split over threads, the BLAS on one thread.

The ops that use it are checked against the standard code in ``test_fast_paths.py`` (with
the images split over three threads); here, the splitting itself and the BLAS setting.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from gpucnn.functional import _cpu_threads
from gpucnn.functional._cpu_threads import CPU_THREADS_ENV, cpu_threads, over_images, parallel
from gpucnn.functional._numpy_kernels import matmul_fast

HAS_BLAS_CONTROL = bool(_cpu_threads._blas_controller().lib_controllers)
needs_blas_control = pytest.mark.skipif(
    not HAS_BLAS_CONTROL, reason="threadpoolctl finds no BLAS it can limit"
)


@pytest.fixture(autouse=True)
def no_thread_setting(monkeypatch):
    """Tests start from the default, whatever the environment running them sets."""
    monkeypatch.delenv(CPU_THREADS_ENV, raising=False)


@pytest.fixture
def three_threads(monkeypatch):
    """Three threads, and every range worth splitting."""
    monkeypatch.setenv(CPU_THREADS_ENV, "3")
    monkeypatch.setattr(_cpu_threads, "MIN_PART_BYTES", 0)


def _record_ranges(n: int) -> list[tuple[int, int, int]]:
    calls, lock = [], threading.Lock()

    def work(start, stop):
        with lock:
            calls.append((start, stop, threading.get_ident()))

    over_images(n, 1, work)
    return sorted(calls)


@needs_blas_control
def test_ranges_cover_every_image_once_on_several_threads(three_threads):
    with parallel():
        calls = _record_ranges(10)
    assert [(a, b) for a, b, _ in calls] == [(0, 3), (3, 6), (6, 10)]
    assert threading.get_ident() in {thread for _, _, thread in calls}  # the caller takes one
    assert len({thread for _, _, thread in calls}) >= 2
    with parallel():
        assert [(a, b) for a, b, _ in _record_ranges(2)] == [(0, 1), (1, 2)]  # no empty parts


def test_outside_parallel_it_is_one_call_on_this_thread(three_threads):
    assert _record_ranges(10) == [(0, 10, threading.get_ident())]


@needs_blas_control
def test_small_work_is_not_split(monkeypatch):
    monkeypatch.setenv(CPU_THREADS_ENV, "3")
    with parallel():
        calls = _record_ranges(4)  # 4 bytes: far below MIN_PART_BYTES
    assert calls == [(0, 4, threading.get_ident())]


@needs_blas_control
def test_parts_grow_as_the_square_root_of_the_work(monkeypatch):
    # p parts need p / 2 x MIN_PART_BYTES each (512 KiB in two, 1 MiB in four, 2 MiB in eight)
    monkeypatch.setenv(CPU_THREADS_ENV, "8")
    kib = 1024
    with parallel():
        parts = {
            total: _cpu_threads.count_parts(64, total // 64)
            for total in (512 * kib, 1024 * kib, 4096 * kib, 8192 * kib, 16384 * kib, 65536 * kib)
        }
        assert _cpu_threads.count_parts(3, 1 << 30) == 3  # never more parts than images
    assert parts == {
        512 * kib: 1, 1024 * kib: 2, 4096 * kib: 4, 8192 * kib: 5, 16384 * kib: 8,
        65536 * kib: 8,
    }  # fmt: skip


def test_the_blas_libraries_are_looked_for_again_after_an_import(monkeypatch):
    # an import may load another BLAS (SciPy brings its own), which the thread mode must limit
    # too; without imports the libraries found are kept (a look takes milliseconds)
    import types

    found = _cpu_threads._blas_controller()
    assert _cpu_threads._blas_controller() is found
    monkeypatch.setitem(sys.modules, "gpucnn_test_new_module", types.ModuleType("new"))
    again = _cpu_threads._blas_controller()
    assert again is not found
    assert _cpu_threads._blas_controller() is again
    assert [lib.filepath for lib in again.lib_controllers] == [
        lib.filepath for lib in found.lib_controllers
    ]  # nothing new was loaded


@needs_blas_control
def test_the_blas_runs_one_thread_inside_and_gets_its_count_back():
    def blas_threads():
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    with threadpool_limits(2, user_api="blas"):
        assert cpu_threads() == 2  # follows the BLAS setting
        with parallel():
            assert blas_threads() == {1}
            with parallel():  # nested: the outer block keeps the setting
                pass
            assert blas_threads() == {1}
        assert blas_threads() == {2}


@needs_blas_control
def test_an_error_in_one_part_is_raised_after_every_part_finished(three_threads):
    finished = []

    def work(start, stop):
        if start == 0:
            raise ValueError("part 0 failed")
        threading.Event().wait(0.05)
        finished.append(start)

    with parallel(), pytest.raises(ValueError, match="part 0 failed"):
        over_images(9, 1, work)
    assert sorted(finished) == [3, 6]


@needs_blas_control
def test_work_that_splits_again_runs_serially_in_the_workers(three_threads):
    inner = []

    def work(start, stop):
        inner.append(_record_ranges(stop - start))

    with parallel():
        over_images(9, 1, work)
    workers = [calls for calls in inner if calls[0][2] != threading.get_ident()]
    assert workers and all(len(calls) == 1 for calls in workers)


@needs_blas_control
def test_split_matmul_equals_numpy(three_threads):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 40))
    b = rng.standard_normal((40, 30))
    with parallel():
        for left in (a, a.T.copy().T, rng.standard_normal((40, 50)).T):
            np.testing.assert_allclose(matmul_fast(left, b), left @ b, rtol=1e-12)
    assert matmul_fast(a[0], b) is None  # 2-D operands only


@needs_blas_control
def test_only_the_thread_that_opened_the_block_splits(three_threads):
    seen = {}
    with parallel():
        other = threading.Thread(target=lambda: seen.setdefault("calls", _record_ranges(9)))
        other.start()
        other.join()
        assert len(_record_ranges(9)) == 3
    assert len(seen["calls"]) == 1  # another thread, outside any block: one call


def _finishes(target, seconds: float = 20.0) -> bool:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


@needs_blas_control
def test_a_block_opened_inside_a_part_neither_splits_nor_deadlocks(three_threads):
    inner = []

    def work(start, stop):
        with parallel():
            inner.append(_cpu_threads.count_parts(9, 1 << 30))
            over_images(9, 1, lambda a, b: None)

    def run():
        with parallel():
            over_images(9, 1, work)

    assert _finishes(run), "a block opened inside every part deadlocked the pool"
    assert inner == [1, 1, 1]


@needs_blas_control
@pytest.mark.skipif(_cpu_threads._usable_cores() < 2, reason="needs 2 usable cores")
def test_blocks_in_two_threads_split_alike_by_default(monkeypatch):
    monkeypatch.setattr(_cpu_threads, "MIN_PART_BYTES", 0)
    counts, opened, done = {}, threading.Event(), threading.Event()

    def first():
        with parallel():
            counts["first"] = _cpu_threads.count_parts(8, 1)
            opened.set()
            done.wait(10)

    with threadpool_limits(2, user_api="blas"):
        thread = threading.Thread(target=first)
        thread.start()
        opened.wait(10)
        with parallel():  # the BLAS is limited to 1 thread by now
            counts["second"] = _cpu_threads.count_parts(8, 1)
        done.set()
        thread.join(10)
    assert counts == {"first": 2, "second": 2}


@needs_blas_control
def test_the_parts_see_the_callers_errstate(three_threads):
    values = np.ones(9)
    values[8] = np.inf  # in the last part, which a worker thread runs

    def work(start, stop):
        np.subtract(values[start:stop], values[start:stop])  # inf - inf: invalid

    with parallel(), np.errstate(invalid="raise"), pytest.raises(FloatingPointError):
        over_images(9, 1, work)


def _forward_in_child(queue) -> None:
    from gpucnn.bench import build_model, synthetic_batch

    model = build_model("small", "numpy")
    x, _ = synthetic_batch(model, 16, seed=0)
    queue.put(model.forward(x, training=False).shape)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@needs_blas_control
def test_a_forked_child_runs_its_own_threads(three_threads):
    import multiprocessing

    with parallel():
        _record_ranges(9)  # the pool's threads exist in the parent
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_forward_in_child, args=(queue,))
        child.start()  # forked inside an open block
        child.join(60)
    assert child.exitcode == 0, "the forked child hung or failed"
    assert queue.get(timeout=5) == (16, 10)


@pytest.mark.parametrize("setting", ["0", "-2", "two", "1.5", "\u00b2", "+3"])
def test_a_bad_thread_setting_is_refused(monkeypatch, setting):
    monkeypatch.setenv(CPU_THREADS_ENV, setting)
    with pytest.raises(ValueError, match=f"expected {CPU_THREADS_ENV} to be a positive integer"):
        cpu_threads()


@needs_blas_control
def test_the_worker_threads_are_started_once_and_reused(three_threads):
    def workers():
        return [t for t in threading.enumerate() if t.name.startswith("gpucnn-cpu-")]

    with parallel():
        _record_ranges(9)
        first = workers()
        for _ in range(50):
            _record_ranges(9)
    assert len(first) >= 2 and workers() == first  # two workers beside the caller, kept
    assert all(thread.daemon for thread in first)  # idle ones never hold the process open


@needs_blas_control
def test_idle_workers_keep_no_arrays_of_a_finished_split(three_threads):
    import gc
    import weakref

    def split_once():
        values = np.ones(9_000)

        def work(start, stop):
            values[start * 1000 : stop * 1000] *= 2

        with parallel():
            over_images(9, 1, work)
        assert values.sum() == 18_000
        return weakref.ref(values)

    gone = split_once()
    gc.collect()
    assert gone() is None  # no worker still holds the part it ran last


@needs_blas_control
def test_an_interrupt_while_waiting_is_raised_after_every_part_finished(three_threads):
    import signal

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    # Python's own Ctrl-C handler, whatever this process inherited (a job started in the
    # background of a shell ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = []

    def work(start, stop):
        if start == 0:  # the caller's own part: done at once, the caller then waits
            return
        if start == 3:  # Ctrl-C while the caller waits for the workers (by then surely)
            threading.Event().wait(0.05)
            os.kill(os.getpid(), signal.SIGINT)
        threading.Event().wait(0.2)
        finished.append(start)

    try:
        with parallel(), pytest.raises(KeyboardInterrupt):
            over_images(9, 1, work)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(finished) == [3, 6]


@needs_blas_control
def test_a_wake_up_lost_to_an_interrupt_does_not_leave_the_caller_waiting(
    three_threads, monkeypatch
):
    import queue

    class LosesTheFirstWakeUp(queue.SimpleQueue):
        lost = False

        def get(self, *args, **kwargs):
            item = super().get(*args, **kwargs)
            if not LosesTheFirstWakeUp.lost:  # Ctrl-C handled just after the wake-up
                LosesTheFirstWakeUp.lost = True
                raise KeyboardInterrupt
            return item

    monkeypatch.setattr(_cpu_threads.queue, "SimpleQueue", LosesTheFirstWakeUp)
    outcome = []

    def work(start, stop):
        if start:  # the workers' parts end while the caller waits, its own at once
            threading.Event().wait(0.05)

    def run():
        try:
            with parallel():
                over_images(9, 1, work)
        except KeyboardInterrupt:
            outcome.append("interrupted")

    assert _finishes(run), "the caller kept waiting for a wake-up the interrupt took"
    assert outcome == ["interrupted"] and LosesTheFirstWakeUp.lost
