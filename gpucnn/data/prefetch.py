"""Read the batches of disk-backed data ahead of training, in worker threads.

Decoding image files (Pillow releases the GIL while it decodes) and ``pread`` of ``.npy`` rows
overlap with the training step instead of stalling it. :class:`Prefetcher` hands the batches
back in the order they were asked for, each exactly what ``source[rows]`` returns, so training
on prefetched batches gives the results of reading them one by one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..validation import check_int


class Prefetcher:
    """Batches ``source[rows]`` for each ``rows`` of ``batches``, read ahead by worker threads.

    At most ``depth`` batches are read or waiting at any time (a bounded queue: memory stays
    at ``depth`` batches). An error while reading a batch is raised when that batch is asked
    for, as an unprefetched read would raise it. Use as a context manager, or call
    :meth:`close`, so unread batches are dropped and the threads end.

    Parameters
    ----------
    source : disk-backed images (an ImageSource or ``np.memmap``); ``source[rows]`` must be
        safe to call from several threads at once (each read opens its own files).
    batches : the row indices of each batch, in training order.
    workers : reading threads (>= 1).
    depth : batches read ahead (>= 1).

    Examples
    --------
    >>> with Prefetcher(np.arange(10.0).reshape(5, 2), [np.array([3, 1]), np.array([0])]) as p:
    ...     [batch.tolist() for batch in p]
    [[[6.0, 7.0], [2.0, 3.0]], [[0.0, 1.0]]]
    """

    def __init__(
        self, source: Any, batches: Iterable[np.ndarray], workers: int = 2, depth: int = 4
    ):
        self.source = source
        self.workers = check_int("workers", workers, 1, owner="Prefetcher")
        self.depth = check_int("depth", depth, 1, owner="Prefetcher")
        self._batches = iter(batches)
        self._pending: deque[Future] = deque()
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            self.workers, thread_name_prefix="gpucnn-prefetch"
        )
        self._fill()

    def _read(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.source[rows], dtype=np.float32)

    def _fill(self) -> None:
        while self._pool is not None and len(self._pending) < self.depth:
            rows = next(self._batches, None)
            if rows is None:
                return
            self._pending.append(self._pool.submit(self._read, rows))

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if not self._pending:
            self.close()
            raise StopIteration
        future = self._pending.popleft()
        self._fill()  # the next read starts while this batch trains
        return future.result()

    def close(self) -> None:
        """Drop the batches not yet read and end the threads (waits for reads under way)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["Prefetcher"]
