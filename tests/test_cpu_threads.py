"""The CPU thread mode of the NumPy path: work split over threads, the BLAS on one thread.

The ops that use it are checked against the standard code in ``test_fast_paths.py`` (with
the images split over three threads); here, the splitting itself and the BLAS setting.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("setting", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_setting_is_refused(monkeypatch, setting):
    monkeypatch.setenv(CPU_THREADS_ENV, setting)
    with pytest.raises(ValueError, match=f"expected {CPU_THREADS_ENV} to be a positive integer"):
        cpu_threads()
