"""The training loop: shuffled mini-batches, validation, schedules, checkpoints, signals.

Backend-agnostic: the dataset is moved to the model's device once, batches are gathered
there with ``take``, and metrics stay on the device until an epoch ends. Disk-backed data
(an :class:`gpucnn.data.files.ImageSource` or a ``numpy.memmap``) is instead read and moved
one batch at a time, so memory stays bounded. Augmentation, when set, is applied to each
training batch on the device. On the CPU every
batch's loss is checked for NaN/inf (reading a host number is free); on a GPU that read is
a synchronisation, so it happens every ``GPU_CHECK_EVERY`` batches.

Reproducibility: the shuffle order comes from a NumPy generator seeded by ``seed`` and the
dropout masks from the model's own seeded generator; both states go into checkpoints, with
the position inside an interrupted epoch, so a resumed run equals an uninterrupted one bit
for bit on the CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .augment import Augment
from .backend import Array, synchronize, to_device
from .callbacks import HISTORY_KEYS, BatchLogs, Callback, EarlyStopping
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    restore_model,
    restore_optimizer,
    save_checkpoint,
)
from .cuda_graph import GraphedStep, training_step
from .data.files import is_disk_backed
from .data.prefetch import Prefetcher
from .functional.losses import check_labels, count_correct, softmax_cross_entropy
from .model import Sequential
from .optim import SGD, ConstantLR, Optimizer, Schedule, grad_square_norm
from .precision import LossScaler
from .progress import progress_bar
from .resources import peak_rss_mib, retain_freed_memory
from .step import check_label_smoothing
from .validation import (
    ArgumentError,
    check_array,
    check_bool,
    check_callable,
    check_float,
    check_instance,
    check_int,
    check_pair,
    check_sequence_of,
)

if TYPE_CHECKING:
    from .distributed import MPICommunicator

GPU_CHECK_EVERY = 20


class TrainingError(RuntimeError):
    """Training diverged (non-finite loss or gradient)."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; ``checkpoint`` is where the state was saved (or None)."""

    def __init__(self, signum: int, checkpoint: Path | None):
        self.signum, self.checkpoint = signum, checkpoint
        where = f"state saved to {checkpoint}" if checkpoint else "no checkpoint path was set"
        super().__init__(f"interrupted by {signal.Signals(signum).name}: {where}")


def evaluate(
    model: Sequential,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int | None = None,
    communicator: MPICommunicator | None = None,
) -> tuple[float, float]:
    """Mean softmax cross-entropy and accuracy of ``model`` on ``(x, y)``, in inference mode.

    ``batch_size`` defaults to the model's ``inference_batch_size``. With a ``communicator``
    each rank evaluates its share of ``(x, y)`` and the sums are reduced: every rank returns
    the figures of the whole set.
    """
    if communicator is not None:
        count = len(x)
        share = communicator.shard(count)
        loss_sum, correct = _evaluate_sums(model, x[share], y[share], batch_size)
        loss_sum, correct = communicator.sum([loss_sum, correct])
        return loss_sum / max(count, 1), int(correct) / max(count, 1)
    loss_sum, correct = _evaluate_sums(model, x, y, batch_size)
    return loss_sum / max(len(x), 1), correct / max(len(x), 1)


def _evaluate_sums(model: Sequential, x, y, batch_size: int | None) -> tuple[float, int]:
    """The summed loss and the number of correct predictions on ``(x, y)``."""
    xp = model.xp
    batch_size = batch_size or model.inference_batch_size
    total_loss = xp.asarray(0.0, dtype=xp.float64)
    correct = xp.asarray(0, dtype=xp.int64)
    forward = model.inference_function()
    for start in range(0, len(x), batch_size):
        logits = forward(x[start : start + batch_size])
        labels = to_device(y[start : start + batch_size], xp)
        loss, _ = softmax_cross_entropy(logits, labels, check_range=False)
        total_loss = total_loss + xp.astype(loss, xp.float64) * labels.shape[0]
        correct = correct + count_correct(logits, labels)
    return float(total_loss), int(correct)


def validate_dataset(model: Sequential, x: np.ndarray, y: np.ndarray, what: str) -> None:
    """Check shapes, finiteness and label range once, on the host, before training.

    Disk-backed data is not read here: its batches are checked as they are read.
    """
    expected = ("N", *model.input_shape)
    disk = is_disk_backed(x)
    if (
        not (isinstance(x, np.ndarray) or disk)
        or x.ndim != len(expected)
        or tuple(x.shape[1:]) != model.input_shape
    ):
        raise ValueError(
            f"{what}: expected images of shape {expected}; received {getattr(x, 'shape', type(x))}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: expected floating-point images; received dtype {x.dtype}")
    if not disk and not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: expected finite values; received NaN or inf")
    try:
        check_labels(np.asarray(y), len(x), model.output_shape[0])
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


@dataclass
class _Epoch:
    """Where the current epoch stands: its shuffle order and running sums (on the device)."""

    n: int
    batch_size: int
    num_batches: int
    order: Array
    order_host: np.ndarray
    rng_at_start: dict
    first: int  # the first batch to run (> 0 when resuming inside the epoch)
    sums: Array  # (2,) float64 on the device: summed loss, correct predictions
    seen: int
    check_every: int
    reader: Prefetcher | None = None  # disk-backed data: the epoch's batches, read ahead

    def bounds(self, b: int) -> tuple[int, int]:
        """Positions ``[lo, hi)`` of batch ``b`` in the epoch's order (the last batch ends at
        ``n``: it is short, or one longer where it takes a lone last image, see
        :func:`batch_count`)."""
        lo = b * self.batch_size
        return lo, self.n if b == self.num_batches - 1 else min(lo + self.batch_size, self.n)


def batch_count(n: int, batch_size: int, batch_statistics: bool) -> int:
    """Batches in an epoch of ``n`` images. A last batch of one image joins the batch before
    it where a layer takes statistics over the batch: BatchNorm cannot normalise one value
    per channel (PyTorch refuses such a batch; its DataLoader's ``drop_last`` drops it)."""
    if batch_statistics and n > batch_size and n % batch_size == 1:
        return n // batch_size
    return -(-n // batch_size)


class Trainer:
    """Fits a :class:`Sequential` classifier with softmax cross-entropy.

    Parameters
    ----------
    model : the network; its last layer's outputs are the class logits.
    optimizer : default ``SGD(lr=0.05, momentum=0.9)``.
    schedule : learning-rate multiplier per epoch (see :mod:`gpucnn.optim`); default constant.
        Each epoch runs at ``optimizer.base_lr * schedule(epoch) * lr_multiplier``, where
        ``lr_multiplier`` (1 at first) keeps the lasting changes of callbacks: :meth:`scale_lr`
        multiplies it, and an assignment to ``optimizer.lr`` (from a callback, or between two
        ``fit`` calls) is detected when the next epoch starts: its ratio to the rate the
        trainer had set multiplies ``lr_multiplier``, so the change lasts and the schedule
        goes on from it (halving the rate halves every later epoch's rate).
    clip_norm : shorthand that sets ``optimizer.clip_norm`` (the optimizer clips the global
        gradient L2 norm to it).
    callbacks : :class:`~gpucnn.callbacks.Callback` objects (see :mod:`gpucnn.callbacks`:
        EarlyStopping, ModelCheckpoint, CSVLogger, ReduceLROnPlateau); their state
        is saved in each checkpoint.
    checkpoint_path : where to write the resumable state after every epoch and on SIGINT/SIGTERM.
    checkpoint_meta : extra JSON data stored in each checkpoint (the CLI stores its arguments).
    seed : seeds the shuffle order.
    progress : draw a progress bar (None: only on a terminal or in a notebook).
    log : called with one line per epoch; None for silence.
    augment : an :class:`gpucnn.augment.Augment` applied to every training batch (never to
        validation data); None for none.
    label_smoothing : epsilon in [0, 1) of the training loss's label smoothing (validation and
        test losses are plain cross-entropy).
    communicator : an :class:`~gpucnn.distributed.MPICommunicator` for data-parallel
        training: ``batch_size`` is then the global batch, split over the ranks; gradients
        are averaged over ranks before the optimizer step (so clipping sees the averaged
        gradient); rank 0's weights are broadcast when ``fit`` starts; only rank 0 logs,
        draws progress and writes checkpoints.
    sync_batch_statistics : with a ``communicator``, normalise with the statistics of the
        whole global batch (True, the default: one all-reduce per BatchNorm layer in forward
        and one in backward, and P processes train as one does) or with each rank's own share
        (False: no extra communication; the running statistics are then averaged over ranks
        after every epoch).

    Example
    -------
    >>> history = Trainer(model, optimizer=SGD(lr=0.05, momentum=0.9)).fit(
    ...     x, y, validation_data=(xv, yv), epochs=3, batch_size=128)
    """

    def __init__(
        self,
        model: Sequential,
        optimizer: Optimizer | None = None,
        schedule: Schedule | None = None,
        clip_norm: float | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_path: str | Path | None = None,
        checkpoint_meta: dict[str, Any] | None = None,
        seed: int = 0,
        progress: bool | None = None,
        log=print,
        augment: Augment | None = None,
        communicator: MPICommunicator | None = None,
        label_smoothing: float = 0.0,
        sync_batch_statistics: bool = True,
    ):
        owner = "Trainer"
        check_instance("model", model, Sequential, owner=owner)
        if not model.is_model:  # a container has no backend or input shape to train on
            raise ArgumentError(
                f"{owner}: expected model to be a Sequential built with input_shape; received "
                "a container Sequential (input_shape=None)"
            )
        if optimizer is not None:
            check_instance(
                "optimizer", optimizer, Optimizer, owner=owner,
                describe="an Optimizer such as SGD(lr=0.05, momentum=0.9), or None",
            )  # fmt: skip
        if schedule is not None:  # a Schedule, or any function of the epoch
            check_callable(
                "schedule", schedule, owner=owner,
                describe="a Schedule such as CosineLR(epochs), a function epoch -> factor, or None",
            )  # fmt: skip
        if clip_norm is not None:
            clip_norm = check_float("clip_norm", clip_norm, 0, low_open=True, owner=owner)
        callbacks = check_sequence_of("callbacks", callbacks, Callback, owner=owner)
        if checkpoint_path is not None:
            check_instance(
                "checkpoint_path", checkpoint_path, (str, os.PathLike), owner=owner,
                describe="a str or os.PathLike, or None",
            )  # fmt: skip
        if checkpoint_meta is not None:
            check_instance("checkpoint_meta", checkpoint_meta, dict, owner=owner)
        seed = check_int("seed", seed, 0, owner=owner)
        if progress is not None:
            progress = check_bool("progress", progress, owner=owner)
        if log is not None:
            check_callable("log", log, owner=owner, describe="a function of one str, or None")
        if augment is not None:
            check_instance("augment", augment, Augment, owner=owner)
        self.model = model
        self.label_smoothing = check_label_smoothing(label_smoothing)
        xp = self.model.xp
        # the epoch's running sums, filled in place by every step (a graph records where)
        self._sums = xp.zeros((2,), dtype=xp.float64)
        self.optimizer = optimizer or SGD(lr=0.05, momentum=0.9)
        if clip_norm is not None:
            self.optimizer.clip_norm = float(clip_norm)
        self.schedule = schedule or ConstantLR()
        self.callbacks = list(callbacks)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.shuffle_rng = np.random.default_rng(seed)
        self.communicator = communicator
        self.sync_batch_statistics = check_bool(
            "sync_batch_statistics", sync_batch_statistics, owner=owner
        )
        quiet = communicator is not None and not communicator.is_root
        self.progress = False if quiet else progress
        self.log = None if quiet else log
        self.augment = augment
        self.epoch = 0  # completed epochs
        self.history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
        self.stop_training = False
        self.lr_multiplier = 1.0  # callbacks' lasting changes to the rate (see scale_lr)
        # disk-backed data (``--data FOLDER --stream``): batches read ahead by worker threads
        # while the step runs; 0 reads each batch when it is needed. Same batches either way.
        self.prefetch_batches = 4
        self.prefetch_workers = min(4, os.cpu_count() or 1)
        self._batch_callbacks: list[Callback] = []
        self._position: dict[str, Any] | None = None  # inside an interrupted epoch
        self._signal: int | None = None
        self._agreed_signal: int | None = None

    # ------------------------------------------------------------------ public API
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        epochs: int = 1,
        batch_size: int = 128,
    ) -> dict[str, list[float]]:
        """Train ``epochs`` more epochs (as Keras does): a second call continues from where the
        first ended, with the optimizer state, schedule position and history kept. A trainer
        restored from a checkpoint taken inside an epoch first finishes that epoch, which
        counts as one of the ``epochs``.

        Parameters
        ----------
        x : float array of shape ``(N, *model.input_shape)``, host NumPy; or disk-backed images
            (an :class:`gpucnn.data.files.ImageSource` or ``numpy.memmap``), read one batch
            at a time (each batch is checked for NaN/inf as it is read).
        y : int array of shape (N,) with values in [0, K).
        validation_data : ``(x_val, y_val)``, evaluated after each epoch, never trained on.

        Returns
        -------
        history : per-epoch lists under ``loss``, ``accuracy``, ``val_loss``,
            ``val_accuracy``, ``lr``, ``time_s``, ``images_per_second``.
        """
        owner = "Trainer.fit"
        batch_size = check_int("batch_size", batch_size, 1, owner=owner)
        epochs = check_int("epochs", epochs, 1, owner=owner)
        x = check_array("x", x, owner=owner, describe="an array of images")
        y = check_array("y", y, owner=owner, describe="an array of labels")
        if len(x.shape) == 0 or x.shape[0] == 0:
            raise ArgumentError(
                f"{owner}: expected at least one training sample; received x of shape {x.shape}"
            )
        if validation_data is not None:
            x_val, y_val = check_pair(
                "validation_data", validation_data, owner=owner,
                describe="a pair (x_val, y_val) or None",
            )  # fmt: skip
            x_val = check_array("x_val", x_val, owner=owner, describe="an array of images")
            y_val = check_array("y_val", y_val, owner=owner, describe="an array of labels")
            if len(x_val.shape) == 0 or x_val.shape[0] == 0:
                raise ArgumentError(
                    f"{owner}: expected at least one validation sample (or validation_data=None); "
                    f"received x_val of shape {x_val.shape}"
                )
            validation_data = (x_val, y_val)
        comm = self.communicator
        if comm is not None and batch_size < comm.size:
            raise ValueError(
                f"expected a global batch_size >= the number of processes ({comm.size}); "
                f"received {batch_size}"
            )
        if comm is not None and self.model.precision.loss_scaling:
            # each rank would skip its own overflowed steps: the ranks' weights would part
            raise ValueError(
                "distributed training expects precision 'mixed_bfloat16' or full precision; "
                "received 'mixed_float16', whose loss scaling is per process"
            )
        if comm is not None and is_disk_backed(x):
            raise ValueError(
                "distributed training expects in-memory data; received disk-backed data"
            )
        validate_dataset(self.model, x, y, "training data")
        if validation_data is not None:
            validate_dataset(self.model, *validation_data, "validation data")
        retain_freed_memory()  # each step frees what the next allocates again
        xp = self.model.xp
        # disk-backed data stays on the host and is read batch by batch
        x_dev = x if is_disk_backed(x) else to_device(x, xp, self.model.dtype)
        y_dev = to_device(np.asarray(y, dtype=np.int64), xp)
        self.stop_training = False
        # only callbacks that override on_batch_end are called per batch
        self._batch_callbacks = [
            c for c in self.callbacks if type(c).on_batch_end is not Callback.on_batch_end
        ]
        for callback in self.callbacks:
            callback.on_train_begin(self)
        if comm is not None:  # every rank starts from rank 0's model state
            comm.broadcast_parameters([*self.model.parameters(), *self.model.buffers()])
        target = self.epoch + epochs
        # a diverging run is reported once by _check_finite, not by NumPy's overflow warnings
        with (
            self._signals_caught(),
            self._batch_statistics_synchronised(),
            np.errstate(over="ignore", invalid="ignore", divide="ignore"),
        ):
            while self.epoch < target and not self.stop_training:
                self._set_epoch_lr()
                for callback in self.callbacks:
                    callback.on_epoch_begin(self, self.epoch + 1)
                logs = self._run_epoch(x_dev, y_dev, batch_size)
                if comm is not None and not self._synchronised_layers():
                    # each rank updated its buffers from its own share
                    comm.average_buffers(self.model.buffers())
                if validation_data is not None:
                    logs["val_loss"], logs["val_accuracy"] = evaluate(
                        self.model, *validation_data, communicator=comm
                    )
                self.epoch += 1
                for key in HISTORY_KEYS:
                    self.history[key].append(logs.get(key, float("nan")))
                for callback in self.callbacks:
                    callback.on_epoch_end(self, self.epoch, logs)
                self._save()
                if self.log:
                    self.log(self._epoch_line(target, logs))
        self.finish()
        return self.history

    @contextlib.contextmanager
    def _batch_statistics_synchronised(self):
        """In a distributed run with ``sync_batch_statistics``, give every layer that takes
        statistics over the batch the communicator's sum over ranks, for the time of ``fit``."""
        comm = self.communicator
        layers = []
        if comm is not None and self.sync_batch_statistics:
            layers = [m for m in self.model.modules() if m.batch_statistics]
        for layer in layers:
            layer.sum_over_processes = comm.sum_arrays
        try:
            yield
        finally:
            for layer in layers:
                layer.sum_over_processes = None

    def finish(self) -> None:
        """End training as :meth:`fit` does after its last epoch: each callback's
        ``on_train_end`` (EarlyStopping restores its best weights). For a run restored from
        a checkpoint of its last epoch, which needs no more epochs."""
        for callback in self.callbacks:
            callback.on_train_end(self)

    def scale_lr(self, factor: float) -> None:
        """Multiply the learning rate by ``factor`` now and for the rest of training.

        The factor goes into ``lr_multiplier``, which every epoch's rate carries on top of the
        schedule (``base_lr * schedule(epoch) * lr_multiplier``); it is saved in checkpoints.
        """
        factor = check_float("factor", factor, 0, low_open=True, owner="Trainer.scale_lr")
        self.lr_multiplier *= factor
        self.optimizer.lr *= factor
        self._lr_set = self.optimizer.lr

    def _set_epoch_lr(self) -> None:
        """Set the epoch's learning rate, ``base_lr * schedule(epoch) * lr_multiplier``,
        after folding into the multiplier any assignment to ``optimizer.lr`` made since the
        trainer last set it (by a callback or the user), so such a change lasts."""
        assigned = self.optimizer.lr
        if self._lr_set is not None and self._lr_set > 0 and assigned != self._lr_set:
            self.lr_multiplier *= assigned / self._lr_set
        self.optimizer.lr = self.optimizer.base_lr * self.schedule(self.epoch) * self.lr_multiplier
        self._lr_set = self.optimizer.lr

    @property
    def optimizer(self) -> Optimizer:
        """The optimizer; assigning another one rebuilds the training step around it."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: Optimizer) -> None:
        self._optimizer = optimizer
        # the rate the trainer last set: a different optimizer.lr at the next epoch was assigned
        self._lr_set = optimizer.lr
        # the one training step; a CUDA-graph step on CuPy (unless GPUCNN_CUDA_GRAPHS=0)
        self._step = training_step(self.model, optimizer, self._sums, self.label_smoothing)
        # distributed steps run eagerly: the all-reduce sits between backward and update
        self._eager_step = self._step.step if isinstance(self._step, GraphedStep) else self._step

    @property
    def loss_scaler(self):
        """The float16 :class:`~gpucnn.precision.LossScaler` of the training step (its
        ``scale`` and ``skipped`` count), or None: the model computes in another precision,
        or no step has run yet."""
        return self._eager_step.scaler

    @property
    def clip_norm(self) -> float | None:
        """The optimizer's gradient clipping bound (the optimizer clips)."""
        return self.optimizer.clip_norm

    @clip_norm.setter
    def clip_norm(self, value: float | None) -> None:
        self.optimizer.clip_norm = None if value is None else float(value)

    def state_dict(self) -> dict[str, Any]:
        """The trainer's JSON-serialisable state (epoch, history, shuffle RNG, position);
        :meth:`load_state_dict` restores all of it. The schedule and clipping are settings
        (the caller builds them), not state."""
        state = {
            "epoch": self.epoch,
            "history": self.history,
            "shuffle_rng": self.shuffle_rng.bit_generator.state,
            "position": self._position,
            "lr_multiplier": self.lr_multiplier,
            "lr_set": self._lr_set,
            "callbacks": [
                {k: v for k, v in c.state_dict().items() if k != "arrays"} for c in self.callbacks
            ],
        }
        if self.augment is not None:
            state["augment_rng"] = self.augment.state_dict()
        if self.loss_scaler is not None:
            state["loss_scaler"] = self.loss_scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (keys it does not write are ignored)."""
        self.epoch = int(state["epoch"])
        self.history = {k: list(state["history"].get(k, [])) for k in HISTORY_KEYS}
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]
        self._position = state["position"]
        # checkpoints from before the multiplier: none, and the restored optimizer's rate
        self.lr_multiplier = float(state.get("lr_multiplier", 1.0))
        self._lr_set = state.get("lr_set", self.optimizer.lr)
        if self.augment is not None and state.get("augment_rng") is not None:
            self.augment.load_state_dict(state["augment_rng"])
        if state.get("loss_scaler") is not None and self.model.precision.loss_scaling:
            self._eager_step.scaler = LossScaler.from_state(state["loss_scaler"])
        saved = state.get("callbacks") or []
        if saved and len(saved) != len(self.callbacks):
            raise ValueError(
                f"expected state for {len(self.callbacks)} callbacks; received {len(saved)}"
            )
        for callback, callback_state in zip(self.callbacks, saved, strict=False):
            if callback_state:
                callback.load_state_dict(callback_state)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint: model weights, optimizer state and trainer state."""
        trainer = checkpoint.meta.get("trainer")
        if trainer is None:
            raise CheckpointError(
                "this checkpoint holds final weights only, no training state to resume"
            )
        restore_model(checkpoint, self.model)
        if checkpoint.meta.get("optimizer") is not None:
            restore_optimizer(checkpoint, self.optimizer)
        try:
            self.load_state_dict(trainer)
            for i, callback in enumerate(self.callbacks):
                prefix = f"callback{i}/"
                arrays = {
                    k[len(prefix) :]: v for k, v in checkpoint.state.items() if k.startswith(prefix)
                }
                if arrays:
                    callback.load_state_dict(
                        {**callback.state_dict(), **trainer["callbacks"][i], "arrays": arrays}
                    )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint training state is malformed ({exc!r})") from None

    # ------------------------------------------------------------------ one epoch
    def _run_epoch(self, x_dev, y_dev, batch_size: int) -> dict[str, float]:
        """Train one epoch (or the rest of an interrupted one) and return its logs."""
        xp = self.model.xp
        epoch = self._start_epoch(x_dev.shape[0], batch_size)
        bar = self._progress_bar(epoch)
        synchronize(xp)
        start = time.perf_counter()
        if is_disk_backed(x_dev) and self.communicator is None and self.prefetch_batches > 0:
            epoch.reader = Prefetcher(
                x_dev,
                (
                    epoch.order_host[slice(*epoch.bounds(b))]
                    for b in range(epoch.first, epoch.num_batches)
                ),
                workers=self.prefetch_workers,
                depth=self.prefetch_batches,
            )
        try:
            for b in range(epoch.first, epoch.num_batches):
                if self.communicator is not None:  # eager: the all-reduce sits before the update
                    index = epoch.order[slice(*epoch.bounds(b))]
                    loss = self._train_batch_distributed(epoch, b, x_dev, y_dev, index)
                else:
                    xb, yb = self._gather(epoch, b, x_dev, y_dev)
                    loss = self._train_batch(epoch, b, xb, yb)
                if self._batch_callbacks:
                    lo, hi = epoch.bounds(b)
                    size = hi - lo
                    batch_logs = BatchLogs(loss, size)
                    for callback in self._batch_callbacks:
                        callback.on_batch_end(self, b, batch_logs)
                if bar is not None:
                    self._draw_progress(bar, epoch, b, loss, start)
                if self._stop_signal() is not None:
                    if bar is not None:
                        bar.close()
                    self._interrupt(epoch, b)
        finally:
            if epoch.reader is not None:
                epoch.reader.close()
        synchronize(xp)
        elapsed = time.perf_counter() - start
        if bar is not None:
            bar.close()
        return self._epoch_logs(epoch, elapsed)

    def _start_epoch(self, n: int, batch_size: int) -> _Epoch:
        """The shuffle order, learning rate and running sums, resumed from a saved position."""
        xp = self.model.xp
        position = self._position or {}
        if position:
            if position["batch_size"] != batch_size:
                raise ValueError(
                    f"resuming inside an epoch needs the same batch size: expected "
                    f"{position['batch_size']}; received {batch_size}"
                )
            self.shuffle_rng.bit_generator.state = position["rng_at_epoch_start"]
        rng_at_start = self.shuffle_rng.bit_generator.state
        self._position = None
        order = self.shuffle_rng.permutation(n)
        return _Epoch(
            n=n,
            batch_size=batch_size,
            num_batches=batch_count(
                n, batch_size, any(m.batch_statistics for m in self.model.modules())
            ),
            order=to_device(order, xp),
            order_host=order,
            rng_at_start=rng_at_start,
            first=int(position.get("batch", 0)),
            sums=self._reset_sums(position.get("loss_sum", 0.0), position.get("correct", 0)),
            seen=int(position.get("seen", 0)),
            check_every=GPU_CHECK_EVERY if self.model.backend.is_gpu else 1,
        )

    def _reset_sums(self, loss_sum: float, correct: int) -> Array:
        """The running sums set in place (a recorded graph holds their address)."""
        self._sums[0] = float(loss_sum)
        self._sums[1] = float(correct)
        return self._sums

    def _gather(self, epoch: _Epoch, b: int, x_dev, y_dev) -> tuple[Array, Array]:
        """Batch ``b`` of the epoch's order on the device, augmented when asked."""
        xp = self.model.xp
        lo, hi = epoch.bounds(b)
        index = epoch.order[lo:hi]
        if is_disk_backed(x_dev):  # one batch from disk to the device
            rows = epoch.order_host[lo:hi]
            if epoch.reader is not None:  # read ahead, in this order, by worker threads
                host = next(epoch.reader)
            else:
                host = np.asarray(x_dev[rows], dtype=np.float32)
            if not np.all(np.isfinite(host)):
                bad = rows[~np.isfinite(host).reshape(len(rows), -1).all(axis=1)]
                raise ValueError(
                    f"training data: expected finite values; received NaN or inf in rows {sorted(bad.tolist())[:5]}"
                )
            xb = to_device(host, xp, self.model.dtype)
        else:
            xb = xp.take(x_dev, index, axis=0)
        if self.augment is not None:
            xb = self.augment(xb)
        return xb, xp.take(y_dev, index, axis=0)

    def _train_batch(self, epoch: _Epoch, b: int, xb, yb) -> Array:
        """Forward, backward, finiteness check when due, optimizer step; returns the loss."""
        if isinstance(self._step, GraphedStep):  # the update is part of the replayed graph
            loss, _ = self._step(xb, yb)
            self._check_if_due(epoch, b, loss)
        else:  # the check comes before the update, which it may prevent
            loss, _ = self._step(xb, yb, lambda loss, _: self._check_if_due(epoch, b, loss))
        epoch.seen += xb.shape[0]
        return loss

    def _check_if_due(self, epoch: _Epoch, b: int, loss) -> None:
        """Check the loss and gradients of batch ``b`` for NaN/inf when it is due: every batch
        on the CPU; on a GPU (a host read, a synchronisation) every GPU_CHECK_EVERY batches and
        the last."""
        if (b + 1) % epoch.check_every == 0 or b == epoch.num_batches - 1:
            grad_sq = grad_square_norm(self.model.parameters())
            self._check_finite(loss, grad_sq, b, epoch.num_batches, epoch.check_every)

    def _train_batch_distributed(self, epoch: _Epoch, b: int, x_dev, y_dev, index) -> float:
        """This rank's share of global batch ``index``, then one all-reduce that averages
        the gradients and sums the loss, correct count and signal flag over ranks."""
        model, xp, comm = self.model, self.model.xp, self.communicator
        total = index.shape[0]
        share = comm.shard(total)
        index = index[share]
        count = index.shape[0]
        xb, yb = xp.take(x_dev, index, axis=0), xp.take(y_dev, index, axis=0)
        if self.augment is not None:  # every rank draws for the whole batch (even when idle)
            xb = self.augment(xb, share=(total, share))
        if count:
            loss, logits = self._eager_step.forward_backward(xb, yb)
            loss_sum, correct = loss * count, count_correct(logits, yb)
        elif self._synchronised_layers():
            # a last global batch smaller than the number of ranks leaves this one idle, but
            # its layers must still take part in the statistics' all-reduces: an empty share
            # contributes zeros to them, and zero gradients
            self._eager_step.forward_backward(xb, yb)
            for p in model.parameters():
                p.grad = xp.zeros_like(p.data)
            loss_sum, correct = 0.0, 0
        else:  # a last global batch smaller than the number of ranks leaves this one idle
            for p in model.parameters():
                p.grad = xp.zeros_like(p.data)
            loss_sum, correct = 0.0, 0
        flag = float(self._signal or 0)
        loss_sum, correct, flag = comm.allreduce_gradients(
            model.parameters(), count / total, [loss_sum, correct, flag]
        )
        # every rank now holds the same numbers, so all take the same decisions
        self._agreed_signal = (self._signal or signal.SIGTERM) if flag else None
        loss = loss_sum / total
        self._check_if_due(epoch, b, loss)
        self._eager_step.update()
        epoch.sums[0] = epoch.sums[0] + loss_sum
        epoch.sums[1] = epoch.sums[1] + round(correct)
        epoch.seen += total
        return loss

    def _synchronised_layers(self) -> bool:
        """True while layers take their batch statistics over every rank."""
        return any(
            m.sum_over_processes is not None for m in self.model.modules() if m.batch_statistics
        )

    def _stop_signal(self) -> int | None:
        """The signal to stop for: in a distributed run the one all ranks agreed on."""
        return self._signal if self.communicator is None else self._agreed_signal

    def _progress_bar(self, epoch: _Epoch):
        if self.progress is False:
            return None
        desc = f"epoch {self.epoch + 1}"
        bar = progress_bar(
            epoch.num_batches, desc, self.progress, unit="batch", initial=epoch.first
        )
        return None if bar.disable else bar

    def _draw_progress(self, bar, epoch: _Epoch, b: int, loss, start: float) -> None:
        # the postfix reads the loss: only every 10th batch, on a GPU's behalf
        if b % 10 == 0 or b == epoch.num_batches - 1:
            trained = epoch.seen - epoch.first * epoch.batch_size
            rate = trained / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"loss {float(loss):.4f} {rate:.0f} img/s", refresh=False)
        bar.update(1)

    def _interrupt(self, epoch: _Epoch, b: int) -> None:
        """Save the position after batch ``b`` and raise :class:`TrainingInterrupted`."""
        self._position = {
            "batch": b + 1,
            "batch_size": epoch.batch_size,
            "rng_at_epoch_start": epoch.rng_at_start,
            "loss_sum": float(epoch.sums[0]),
            "correct": int(epoch.sums[1]),
            "seen": epoch.seen,
        }
        raise TrainingInterrupted(self._stop_signal(), self._save())

    def _epoch_logs(self, epoch: _Epoch, elapsed: float) -> dict[str, float]:
        seen = max(epoch.seen, 1)
        return {
            "loss": float(epoch.sums[0]) / seen,
            "accuracy": int(epoch.sums[1]) / seen,
            "lr": self.optimizer.lr,
            "time_s": elapsed,
            "images_per_second": (epoch.n - epoch.first * epoch.batch_size) / max(elapsed, 1e-9),
            "peak_rss_mib": peak_rss_mib(),  # host memory high-water mark: flat when nothing leaks
        }

    def _check_finite(self, loss, grad_sq, batch: int, num_batches: int, every: int) -> None:
        loss_value, grad_value = float(loss), float(grad_sq)
        if math.isfinite(loss_value) and math.isfinite(grad_value):
            return
        what = "loss" if not math.isfinite(loss_value) else "gradient norm"
        value = loss_value if what == "loss" else math.sqrt(grad_value)  # inf or nan
        where = (
            f"batch {batch + 1}/{num_batches}"
            if every == 1
            else f"batches {max(batch + 2 - every, 1)}-{batch + 1} of {num_batches}"
        )
        kept = (
            f"; the last good checkpoint is {self.checkpoint_path}"
            if self.checkpoint_path and self.checkpoint_path.exists()
            else ""
        )
        raise TrainingError(
            f"training diverged at epoch {self.epoch + 1}, {where}: the {what} is {value}; "
            f"try a smaller learning rate (now {self.optimizer.lr:g}) or gradient clipping{kept}"
        )

    # ------------------------------------------------------------------ bookkeeping
    def _save(self) -> Path | None:
        if self.checkpoint_path is None:
            return None
        if self.communicator is not None and not self.communicator.is_root:
            return self.checkpoint_path  # rank 0 writes it
        arrays = {
            f"callback{i}/{k}": v
            for i, c in enumerate(self.callbacks)
            for k, v in (c.state_dict().get("arrays") or {}).items()
        }
        return save_checkpoint(
            self.checkpoint_path,
            self.model,
            self.optimizer,
            state_arrays=arrays,
            trainer=self.state_dict(),
            **self.checkpoint_meta,
        )

    def _epoch_line(self, epochs: int, logs: dict[str, float]) -> str:
        line = f"epoch {self.epoch}/{epochs}: loss {logs['loss']:.4f} acc {logs['accuracy']:.4f}"
        if "val_loss" in logs:
            line += f" | val_loss {logs['val_loss']:.4f} val_acc {logs['val_accuracy']:.4f}"
        return (
            line
            + f" | lr {logs['lr']:.4g} | {logs['time_s']:.1f}s {logs['images_per_second']:.0f} img/s"
        )

    @contextlib.contextmanager
    def _signals_caught(self):
        """While training, SIGINT/SIGTERM only raise a flag; the batch loop saves and stops."""

        def handle(signum, frame):
            self._signal = signum

        previous = {}
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handle)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._signal = self._agreed_signal = None


# Callback and EarlyStopping lived here before gpucnn.callbacks: re-exported for old imports
__all__ = [
    "HISTORY_KEYS",
    "Callback",
    "EarlyStopping",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "evaluate",
    "validate_dataset",
]
