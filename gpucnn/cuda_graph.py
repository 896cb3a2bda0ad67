"""One training step as a function, replayed as a CUDA graph on a GPU where that applies.

On a GPU a small-batch step is bound by the host: each of its ~40 kernel launches costs
Python and driver time while the GPU idles. A CUDA graph records the whole step (forward,
loss, backward, optimizer update) once and replays it with one launch. It applies when:

* the backend is CuPy and ``GPUCNN_CUDA_GRAPHS`` is not ``0`` (on by default: on an NVIDIA
  H200 the replayed step equalled eager training bit for bit in the test suite and trained
  the ``reference`` network at 592,511 img/s against 84,616 eagerly at batch 128);
* the optimizer is :class:`~gpucnn.optim.SGD` (Adam's bias corrections change every step
  and would be frozen into the graph) and no layer anywhere in the model's tree draws random
  numbers (``uses_randomness``, e.g. dropout masks: the draw number would be frozen too);
* the batch has the shape the graph was recorded with (an epoch's last, smaller batch runs
  eagerly).

The step recorded is :class:`gpucnn.step.TrainingStep`, the one every training path runs.
Buffers (running statistics) are updated in place by the recorded kernels. The learning rate
and the addresses of the weights, buffers and optimizer state are frozen into the recording, so when one changes (a schedule's next epoch, a restored checkpoint) the next
batch runs eagerly and the one after records the step again. Everything the step allocates
while recording is kept alive with the graph, so no later allocation can reuse memory the
graph writes to. A step that
cannot be recorded (for instance a GEMM with an operand layout the captured path does not
handle) falls back to eager steps for good, with the reason kept in ``disabled_because``.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .backend import Array, is_cupy
from .functional._dispatch import graph_capture
from .step import TrainingStep

GRAPHS_ENV = "GPUCNN_CUDA_GRAPHS"

LOSS_SCALING_REASON = "float16 loss scaling reads the gradients' finiteness on the host each step"
StepFunction = Callable[[Array, Array], tuple[Array, Array]]


def training_step(
    model, optimizer, sums: Array | None = None, label_smoothing: float = 0.0
) -> StepFunction:
    """A function ``step(x, labels) -> (loss, logits)`` that trains ``model`` on one batch.

    It is :class:`~gpucnn.step.TrainingStep` (forward, softmax cross-entropy, backward,
    ``optimizer.step``); ``x`` and ``labels`` are arrays on the model's device, the results
    stay there. ``sums``, a (2,) float64 array on that device, receives each batch's summed
    loss and correct count within the step: a training loop then reads nothing per batch.
    Where CUDA graphs apply (see the module docstring) the step is a :class:`GraphedStep`,
    whose ``loss`` and ``logits`` are the same arrays at every replay: copy them to keep them
    past the next step. ``label_smoothing`` as for the step.
    """
    if is_cupy(model.xp) and os.environ.get(GRAPHS_ENV, "1").strip() != "0":
        return GraphedStep(model, optimizer, sums, label_smoothing)
    return TrainingStep(model, optimizer, sums, label_smoothing=label_smoothing)


class GraphedStep:
    """A training step recorded as a CUDA graph and replayed for every batch of its shape.

    Parameters
    ----------
    model : a :class:`~gpucnn.Sequential` on the CuPy backend.
    optimizer : the optimizer whose ``step`` is part of the recording.
    sums : as for :func:`training_step`.
    """

    def __init__(self, model, optimizer, sums: Array | None = None, label_smoothing: float = 0.0):
        self.model, self.optimizer, self.sums = model, optimizer, sums
        self.step = TrainingStep(model, optimizer, sums, label_smoothing=label_smoothing)
        self.xp = model.xp
        self.graph = None
        self.disabled_because = self._unsupported_reason()
        self.recorded_for: tuple | None = None  # shapes, dtypes and learning rate recorded
        self._warmed: tuple | None = None  # the key after the last eager step
        self._precision = model.precision.name  # the policy the graph and the reason are for
        self.replays = 0

    def _unsupported_reason(self) -> str | None:
        from .optim import SGD

        if type(self.optimizer) is not SGD:
            return f"the optimizer is {type(self.optimizer).__name__}, not SGD"
        for layer in self.model.modules():
            if layer.uses_randomness:
                return f"layer '{layer.path}' ({type(layer).__name__}) draws random numbers"
        if self.model.precision.loss_scaling:
            return LOSS_SCALING_REASON
        return None

    def __call__(self, x: Array, labels: Array) -> tuple[Array, Array]:
        if self.model.precision.name != self._precision:
            # another precision policy: neither the recorded graph (other dtypes inside) nor
            # a reason found under the old one (a failed recording) holds any more
            self._precision = self.model.precision.name
            self.graph, self.recorded_for, self._warmed = None, None, None
            self.disabled_because = self._unsupported_reason()
        if self.disabled_because is not None:
            return self.step(x, labels)
        key = self._key(x, labels)
        if key == self.recorded_for:
            return self._replay(x, labels)
        if key == self._warmed:
            return self._record_and_replay(x, labels, key)
        # Something the graph would freeze changed (batch shape, learning rate, the arrays of
        # the weights or the optimizer state, e.g. after a restore): one eager step first,
        # which also compiles every kernel and fills the memory pool; record on the next.
        result = self.step(x, labels)
        self._warmed = self._key(x, labels)
        return result

    def _key(self, x: Array, labels: Array) -> tuple:
        """What a recorded graph depends on: shapes, dtypes, the optimizer's settings, and the
        device addresses of the weights, buffers and optimizer state it reads and writes."""
        optimizer = self.optimizer
        if getattr(optimizer, "_restored", False):
            # restored state still on the host: the next eager step moves it to the device
            return (object(),)  # matches nothing
        buffers = []
        for p in self.model.parameters():
            buffers.append(p.data.data.ptr)
            slots = optimizer.state.get(p.name, {})
            buffers.extend(slots[name].data.ptr for name in sorted(slots))
        buffers.extend(b.data.data.ptr for b in self.model.buffers())
        settings = (
            optimizer.lr, optimizer.weight_decay, optimizer.clip_norm,
            optimizer.momentum, optimizer.nesterov,
        )  # fmt: skip
        if self.sums is not None:
            buffers.append(self.sums.data.ptr)
        shapes = (tuple(x.shape), tuple(labels.shape), x.dtype, labels.dtype)
        return (*shapes, settings, tuple(buffers))

    def _replay(self, x: Array, labels: Array) -> tuple[Array, Array]:
        xp = self.xp
        xp.copyto(self.static_x, x)
        xp.copyto(self.static_labels, labels)
        self.graph.launch(stream=xp.cuda.get_current_stream())
        self.optimizer.steps += 1  # the Python side of optimizer.step
        for p, grad in zip(self.parameters, self.grads, strict=True):
            p.grad = grad  # the arrays the graph writes the gradients to
        self.replays += 1
        return self.loss, self.logits

    def _record_and_replay(self, x: Array, labels: Array, key: tuple) -> tuple[Array, Array]:
        try:
            self._record(x, labels)
        except Exception as exc:  # noqa: BLE001 - any failure to record means eager steps
            self.disabled_because = f"recording failed ({type(exc).__name__}: {exc})"
            self.graph = None
            return self.step(x, labels)
        self.recorded_for = key
        return self._replay(x, labels)

    def _record(self, x: Array, labels: Array) -> None:
        xp = self.xp
        # the graph's input buffers: filled by each replay, nothing runs while recording
        self.static_x = xp.empty_like(x)
        self.static_labels = xp.empty_like(labels)
        steps_before = self.optimizer.steps

        def step():
            try:
                return self.step(self.static_x, self.static_labels)
            finally:
                self.optimizer.steps = steps_before  # recording ran no update

        self.graph, self.kept, (self.loss, self.logits) = record(xp, step)
        self.parameters = list(self.model.parameters())
        self.grads = [p.grad for p in self.parameters]

    def describe(self) -> dict[str, Any]:
        """Whether the step is replayed as a graph, and why not."""
        return {
            "cuda_graph": self.disabled_because is None and self.graph is not None,
            "disabled_because": self.disabled_because,
            "replays": self.replays,
        }


def record(xp, work: Callable[[], Any]) -> tuple[Any, list, Any]:
    """Record ``work()`` (CuPy launches only) as a CUDA graph without running it.

    Returns ``(graph, kept, result)``: ``kept`` holds every allocation made while recording,
    which the graph reads and writes at each replay, so it must live as long as the graph;
    ``result`` is what ``work`` returned (arrays that each replay fills).
    """
    allocate = xp.cuda.get_allocator()
    kept: list = []

    def keep_alive(size: int):
        pointer = allocate(size)
        kept.append(pointer)
        return pointer

    xp.cuda.get_current_stream().synchronize()
    stream = xp.cuda.Stream(non_blocking=True)
    with stream:
        from .functional import _cuda_kernels

        handle = _cuda_kernels.cublas()
        kept.append(handle)  # its workspace is written by the graph's GEMMs at each replay
        handle.use_stream(stream.ptr)  # before capture: CuPy refuses during
        with xp.cuda.using_allocator(keep_alive):  # this thread only; restored on exit
            stream.begin_capture()
            try:
                with graph_capture():
                    result = work()
            finally:
                graph = stream.end_capture()
    return graph, kept, result


InferenceFunction = Callable[[Array], Array]


def inference_step(model) -> InferenceFunction:
    """A function ``forward(x) -> out``: ``model.forward(x, training=False)`` for arrays on
    the model's device, replayed as a CUDA graph where graphs apply (CuPy, and
    ``GPUCNN_CUDA_GRAPHS`` not ``0``); see :class:`GraphedForward`."""
    if is_cupy(model.xp) and os.environ.get(GRAPHS_ENV, "1").strip() != "0":
        return GraphedForward(model)
    model_ref = weakref.ref(model)  # the model keeps this function: no cycle back to it
    return lambda x: model_ref().forward(x, training=False, check=False)


class GraphedForward:
    """Inference passes recorded as CUDA graphs, one per input shape (the last ``LIMIT``).

    At batch 1000 the ``reference`` network's forward pass took about 310 us of GPU time on
    an NVIDIA H200 and about 560 us of host time to launch its 16 kernels eagerly: a replay
    is three launches (input copy, graph, output copy). As with :class:`GraphedStep`, the
    first pass of a new shape (or after a weight array was replaced) runs eagerly, the next
    records; replays read the weights in place, so updates by an optimizer are seen. Each
    graph keeps its activations' memory while it is held. Returns a fresh array each call.
    """

    LIMIT = 2

    def __init__(self, model):
        # weak: the model holds this object, which must not keep the model (and the graphs'
        # GPU memory) alive after the model is dropped
        self._model = weakref.ref(model)
        self.xp = model.xp
        self.graphs: dict[tuple, tuple] = {}  # key -> (graph, kept, static input, output)
        self._warmed: set[tuple] = set()
        self.disabled_because: str | None = None
        self.replays = 0
        self._lock = threading.Lock()  # one input buffer and output per graph: one pass at a time

    @property
    def model(self):
        return self._model()

    def __call__(self, x: Array) -> Array:
        with self._lock:
            return self._forward(x)

    def _forward(self, x: Array) -> Array:
        model = self.model
        if self.disabled_because is not None:
            return model.forward(x, training=False, check=False)
        arrays = [*model.parameters(), *model.buffers()]
        key = (tuple(x.shape), x.dtype, *(a.data.data.ptr for a in arrays))
        entry = self.graphs.get(key)
        if entry is None and key in self._warmed:
            entry = self._record(x, key)
        if entry is None:  # first pass of this key: eager (compiles kernels, fills the pool)
            self._warmed.add(key)
            return model.forward(x, training=False, check=False)
        graph, _, static_x, out = entry
        self.xp.copyto(static_x, x)
        graph.launch(stream=self.xp.cuda.get_current_stream())
        self.replays += 1
        return out.copy()

    def _record(self, x: Array, key: tuple):
        static_x = self.xp.empty_like(x)
        try:
            graph, kept, out = record(
                self.xp, lambda: self.model.forward(static_x, training=False, check=False)
            )
        except Exception as exc:  # noqa: BLE001 - any failure to record means eager passes
            self.disabled_because = f"recording failed ({type(exc).__name__}: {exc})"
            return None
        while len(self.graphs) >= self.LIMIT:
            self.graphs.pop(next(iter(self.graphs)))  # the oldest
        self.graphs[key] = (graph, kept, static_x, out)
        self._warmed.discard(key)
        return self.graphs[key]
