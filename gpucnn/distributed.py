"""Data-parallel training over MPI: one model, every global batch split over P processes.

Each process (rank) holds the whole model and the whole dataset. Every rank draws the same
seeded shuffle order, takes its contiguous share of each global batch, computes the gradient
of its share's mean loss, and one ``Allreduce`` on a single flat buffer turns the shares into
the gradient of the global batch's mean loss: each rank scales its gradient by
``n_rank / n_batch`` before the sum, so shares of unequal size (a global batch that P does
not divide, or the short last batch of an epoch) still give the exact global mean. The same
buffer carries three numbers more (the share's loss sum, its correct count and whether a
signal arrived), so every rank takes the same decisions (divergence, interruption) after the
same step without a second collective call.

On CuPy, each rank uses the GPU ``local_rank % device_count`` (:meth:`MPICommunicator.select_gpu`).
The flat buffer is reduced in device memory when the MPI library says it is CUDA-aware
(``MPI.Query_CUDA_Support()``, mpi4py >= 4 with an MPI that answers it) and otherwise is
copied to host memory, reduced there and copied back (host staging).
``GPUCNN_MPI_CUDA_AWARE=0`` or ``1`` overrides the answer.

mpi4py is an optional dependency (``pip install "gpucnn[mpi]"``), imported only when an
:class:`MPICommunicator` is made.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from .backend import Array, is_cupy, namespace, synchronize, to_device, to_numpy
from .parameter import Buffer, Parameter

# The world size as MPI launchers export it: Open MPI, MPICH/Intel MPI (Hydra), MVAPICH2.
WORLD_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
EXTRAS = 3  # loss sum, correct count, signal number: appended to the gradient buffer


class DistributedError(RuntimeError):
    """MPI or mpi4py is missing, or the processes cannot work together."""


def mpi_world_size() -> int:
    """The number of processes ``mpirun``/``mpiexec`` started, read from the environment
    (1 when the process was not started by an MPI launcher). Imports nothing."""
    for variable in WORLD_SIZE_VARIABLES:
        value = os.environ.get(variable, "")
        if value.isdigit():
            return int(value)
    return 1


def import_mpi():
    """``mpi4py.MPI``, or :class:`DistributedError` with one line saying what to install."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:  # no mpi4py, or no MPI library behind it
        raise DistributedError(
            f'distributed training needs mpi4py and an MPI library: pip install "gpucnn[mpi]" '
            f"with an MPI installed (e.g. apt-get install openmpi-bin libopenmpi-dev); {exc}"
        ) from None
    return MPI


def _cuda_aware(mpi) -> bool:
    forced = os.environ.get("GPUCNN_MPI_CUDA_AWARE")
    if forced in ("0", "1"):
        return forced == "1"
    query = getattr(mpi, "Query_CUDA_Support", None)
    try:
        return bool(query()) if query is not None else False
    except Exception:  # an MPI that does not implement the query: stage through the host
        return False


class MPICommunicator:
    """The processes of one data-parallel run, over an mpi4py communicator.

    Parameters
    ----------
    comm : an mpi4py communicator; default ``MPI.COMM_WORLD``.
    cuda_aware : pass CuPy buffers to MPI directly (True) or stage them through the host
        (False); default: what the MPI library reports (see the module docstring).

    Attributes
    ----------
    rank, size : this process's index and the number of processes.
    local_rank : the index among the processes on this machine (picks the GPU).
    allreduce_seconds, allreduce_calls : time spent in (and number of) gradient all-reduces,
        including the wait for slower ranks.

    Raises
    ------
    DistributedError if mpi4py or the MPI library is missing.

    Example
    -------
    >>> comm = MPICommunicator()          # under: mpirun -n 2 python train.py
    >>> Trainer(model, communicator=comm).fit(x, y, batch_size=128)   # 64 images per rank
    """

    def __init__(self, comm: Any = None, cuda_aware: bool | None = None):
        self.mpi = import_mpi()
        self.comm = self.mpi.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        local = self.comm.Split_type(self.mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        local.Free()
        self.cuda_aware = _cuda_aware(self.mpi) if cuda_aware is None else bool(cuda_aware)
        self.allreduce_seconds = 0.0
        self.allreduce_calls = 0
        self.statistics_allreduce_calls = 0
        self.buffer_size = 0

    @property
    def is_root(self) -> bool:
        """True on rank 0, the process that prints and writes files."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size}, cuda_aware={self.cuda_aware})"

    # ------------------------------------------------------------------ work split
    def shard(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items: sizes differ by at most one."""
        return slice(count * self.rank // self.size, count * (self.rank + 1) // self.size)

    def select_gpu(self) -> int | None:
        """Make GPU ``local_rank % device_count`` current for CuPy; returns its id, or None
        when CuPy has no device (then the CPU is used as usual)."""
        from .backend import use_gpu

        return use_gpu(self.local_rank)

    # ------------------------------------------------------------------ collectives
    def _reduce(self, buffer: Array, op) -> Array:
        """Allreduce ``buffer`` (1-d, any namespace) in place where possible; returns it."""
        xp = namespace(buffer)
        if is_cupy(xp) and self.cuda_aware:
            synchronize(xp)  # MPI does not see CuPy's stream
            self.comm.Allreduce(self.mpi.IN_PLACE, buffer, op=op)
            return buffer
        host = np.ascontiguousarray(to_numpy(buffer))
        self.comm.Allreduce(self.mpi.IN_PLACE, host, op=op)
        return host if isinstance(buffer, np.ndarray) else to_device(host, xp)

    def allreduce_gradients(
        self, parameters: Iterable[Parameter], weight: float, extras: Iterable[Any]
    ) -> np.ndarray:
        """Replace every ``grad`` by the sum over ranks of ``weight * grad``, in one call.

        Parameters
        ----------
        parameters : the model's parameters, in the same order on every rank; each ``grad``
            is an array of the parameter's shape.
        weight : this rank's share of the global batch, ``n_rank / n_batch`` (the sum of the
            weights over ranks is 1, so the result is the global batch's mean gradient).
        extras : a few numbers (0-d arrays or floats) summed over ranks in the same call.

        Returns
        -------
        sums : float64 host array of shape (len(extras),), the extras summed over ranks.
        """
        parameters = list(parameters)
        xp = namespace(parameters[0].grad)
        dtype = parameters[0].grad.dtype
        extras = [xp.astype(xp.asarray(e), dtype) for e in extras]
        buffer = xp.concat(
            [xp.reshape(p.grad, (-1,)) * weight for p in parameters]
            + [xp.reshape(e, (1,)) for e in extras]
        )
        start = time.perf_counter()
        buffer = self._reduce(buffer, self.mpi.SUM)
        self.allreduce_seconds += time.perf_counter() - start
        self.allreduce_calls += 1
        self.buffer_size = buffer.shape[0]
        offset = 0
        for p in parameters:  # views of this step's buffer: the next backward replaces them
            p.grad = xp.reshape(buffer[offset : offset + p.size], p.shape)
            offset += p.size
        return to_numpy(buffer[offset:]).astype(np.float64)

    def broadcast_parameters(self, parameters: Iterable[Parameter | Buffer]) -> None:
        """Copy rank 0's parameter (and buffer) values to every rank, in place (one ``Bcast``
        of a flat buffer); all arrays share one dtype, the model's."""
        parameters = list(parameters)
        if not parameters:
            return
        xp = namespace(parameters[0].data)
        flat = xp.concat([xp.reshape(p.data, (-1,)) for p in parameters])
        if is_cupy(xp) and self.cuda_aware:
            synchronize(xp)
            self.comm.Bcast(flat, root=0)
        else:
            host = np.ascontiguousarray(to_numpy(flat))
            self.comm.Bcast(host, root=0)
            flat = to_device(host, xp)
        offset = 0
        for p in parameters:
            p.data[...] = xp.reshape(flat[offset : offset + p.size], p.shape)
            offset += p.size

    def average_buffers(self, buffers: Iterable[Buffer]) -> None:
        """Replace every buffer, in place, by its mean over ranks (one all-reduce).

        Layers update their buffers (running statistics) from each rank's share of a batch;
        averaging them once per epoch gives every rank, and so the saved model, the same state.
        """
        buffers = list(buffers)
        if not buffers:
            return
        xp = namespace(buffers[0].data)
        flat = xp.concat([xp.reshape(b.data, (-1,)) for b in buffers])
        flat = self._reduce(flat, self.mpi.SUM) / self.size
        offset = 0
        for b in buffers:
            b.data[...] = xp.reshape(flat[offset : offset + b.size], b.shape)
            offset += b.size

    def sum_arrays(self, values: Array) -> Array:
        """``values`` (1-d, any namespace) summed over ranks, in a new array of the same
        namespace: the batch statistics of BatchNorm layers (see ``Trainer``)."""
        xp = namespace(values)
        start = time.perf_counter()
        out = self._reduce(xp.asarray(values, copy=True), self.mpi.SUM)
        self.allreduce_seconds += time.perf_counter() - start
        self.statistics_allreduce_calls += 1
        return out

    def sum(self, values: Iterable[float]) -> np.ndarray:
        """Sum a few host numbers over ranks; float64 array of the same length."""
        host = np.array(list(values), dtype=np.float64)
        self.comm.Allreduce(self.mpi.IN_PLACE, host, op=self.mpi.SUM)
        return host

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object from rank 0, e.g. a folder name)."""
        return self.comm.bcast(value, root=0)

    def abort(self, code: int) -> None:
        """End every rank now (after an error on this rank only, the others would wait)."""
        self.comm.Abort(code)

    def stats(self) -> dict[str, Any]:
        """World size and all-reduce totals (``metrics.json`` keeps them)."""
        return {
            "world_size": self.size,
            "allreduce_calls": self.allreduce_calls,
            "statistics_allreduce_calls": self.statistics_allreduce_calls,
            "allreduce_seconds": self.allreduce_seconds,
            "gradient_buffer_elements": self.buffer_size,
            "cuda_aware_mpi": self.cuda_aware,
        }


__all__ = [
    "DistributedError",
    "MPICommunicator",
    "import_mpi",
    "mpi_world_size",
]
