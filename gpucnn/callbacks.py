"""Callbacks: code that runs at the start and end of training, of each epoch and of each batch.

A :class:`Callback` overrides the hooks it needs; :class:`~gpucnn.trainer.Trainer` calls them in
this order::

    on_train_begin(trainer)
    for each epoch:      on_epoch_begin(trainer, epoch)
        for each batch:  on_batch_end(trainer, batch, logs)
                         on_epoch_end(trainer, epoch, logs)   # then the checkpoint is written
    on_train_end(trainer)

``epoch`` is the 1-based number of the epoch (the count of epochs done once it ends); ``batch``
the 0-based index of the batch in its epoch. Setting ``trainer.stop_training = True`` stops
after the current epoch.

**Batch hooks cost nothing unless asked for.** The trainer calls ``on_batch_end`` only for
callbacks that override it, and ``logs["loss"]`` is read from the device when a callback reads
it: on a GPU each read is a synchronisation, so read it every k batches, not every batch.

**The learning rate.** Each epoch runs at ``optimizer.base_lr * schedule(epoch) *
trainer.lr_multiplier``. To change it from a callback, call ``trainer.scale_lr(factor)`` (as
:class:`ReduceLROnPlateau` does) or assign ``trainer.optimizer.lr``: the trainer notices an
assignment when the next epoch starts and multiplies ``lr_multiplier`` by its ratio to the rate
the trainer had set, so the change lasts and the schedule goes on from it: halving the rate
halves every later epoch's rate (as with PyTorch's chainable schedulers). An assignment in
``on_epoch_begin`` applies to that epoch as given.

**State.** What ``state_dict()`` returns (JSON data; arrays under ``"arrays"``) is saved in every
checkpoint and given back to ``load_state_dict`` on resume, in the order of the callbacks.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .validation import ArgumentError, check_bool, check_choice, check_float, check_int

if TYPE_CHECKING:
    from .trainer import Trainer

HISTORY_KEYS = (
    "loss", "accuracy", "val_loss", "val_accuracy", "lr", "time_s", "images_per_second", "peak_rss_mib",
)  # fmt: skip


class Callback:
    """Hook into training: override any of the ``on_*`` methods (each does nothing here)."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Called when :meth:`~gpucnn.trainer.Trainer.fit` starts (``trainer.epoch`` epochs
        are already done: more than 0 for a second ``fit`` or a resumed run)."""

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        """Called before epoch ``epoch`` (1-based), after its learning rate is set."""

    def on_batch_end(self, trainer: Trainer, batch: int, logs: Mapping[str, float]) -> None:
        """Called after the optimizer step of batch ``batch`` (0-based within the epoch).

        ``logs["loss"]`` is the batch's mean training loss and ``logs["size"]`` its number of
        images; the loss is read from the device only when accessed (a GPU synchronisation).
        """

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        """Called after epoch ``epoch`` (1-based) and its validation; ``logs`` holds the
        :data:`HISTORY_KEYS` the epoch produced."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Called when training ends (after the last epoch or an early stop)."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (JSON data, NumPy arrays under ``"arrays"``); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""


class BatchLogs(Mapping):
    """The logs of one batch: ``"loss"`` (read from the device on first access) and ``"size"``.

    The loss is a copy made on the device when the batch ends, so it stays the batch's value
    after later steps; reading it is what costs a synchronisation on a GPU.
    """

    def __init__(self, loss: Any, size: int):
        # a device copy (asynchronous): a CUDA-graph step reuses its loss array every batch
        self._loss = loss.copy() if hasattr(loss, "copy") else loss
        self._value: float | None = None
        self._size = size

    def __getitem__(self, key: str) -> float:
        if key == "loss":
            if self._value is None:
                self._value = float(self._loss)
            return self._value
        if key == "size":
            return self._size
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(("loss", "size"))

    def __len__(self) -> int:
        return 2


def _improvement_sign(monitor: str) -> float:
    """+1 for metrics that grow when better (accuracies), -1 for the others (losses)."""
    return 1.0 if "accuracy" in monitor else -1.0


def _monitored(owner: str, monitor: str, logs: Mapping[str, float]) -> float:
    value = logs.get(monitor)
    if value is None or math.isnan(value):
        raise ValueError(
            f"{owner}: expected a value of {monitor!r} in the epoch's logs; received "
            f"{'none' if value is None else 'nan'} (val_* keys need validation_data in fit)"
        )
    return float(value)


def _epoch_after(line: str, separator: str, epoch: int) -> bool:
    """Whether a CSV line is the row of an epoch later than ``epoch``."""
    first = line.split(separator, 1)[0]
    return first.isdigit() and int(first) > epoch


def _is_root(trainer: Trainer) -> bool:
    """Whether this process writes files (rank 0 of a distributed run, or the only one)."""
    return trainer.communicator is None or trainer.communicator.is_root


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; restore the best weights.

    Parameters
    ----------
    monitor : a history key, e.g. ``"val_accuracy"`` (maximised) or ``"val_loss"`` (minimised).
    patience : epochs without improvement before stopping.
    min_delta : the smallest change that counts as improvement.
    restore_best : load the best epoch's weights when training ends.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 3,
        min_delta: float = 0.0,
        restore_best: bool = True,
    ):
        owner = "EarlyStopping"
        self.monitor = check_choice("monitor", monitor, HISTORY_KEYS, owner=owner)
        self.patience = check_int("patience", patience, 0, owner=owner)
        self.min_delta = check_float("min_delta", min_delta, 0, owner=owner)
        self.restore_best = check_bool("restore_best", restore_best, owner=owner)
        self.sign = _improvement_sign(monitor)
        self.best = -math.inf
        self.best_epoch = None
        self.best_weights = None
        self.wait = 0

    def on_epoch_end(self, trainer, epoch, logs):
        value = logs.get(self.monitor)
        if value is None or math.isnan(value):
            return
        if self.sign * value > self.best + self.min_delta:
            self.best, self.best_epoch, self.wait = self.sign * value, epoch, 0
            if self.restore_best:
                self.best_weights = trainer.model.state_dict()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.stop_training = True

    def on_train_end(self, trainer):
        if self.restore_best and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        """Best value, its epoch, epochs waited and (under ``"arrays"``) the best weights."""
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "arrays": dict(self.best_weights or {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]
        self.wait = int(state["wait"])
        self.best_weights = dict(state.get("arrays") or {}) or None


class ModelCheckpoint(Callback):
    """Save the model after an epoch: the best one so far, or every one.

    The file is a model file (architecture, parameters and buffers, no optimizer state), as
    ``model.save`` writes it: ``gpucnn.load_model`` and the command line read it. Its meta
    holds ``epoch`` and the monitored value. In a distributed run only rank 0 writes.

    Parameters
    ----------
    path : the file; it may name log values in ``str.format`` fields, as in Keras:
        ``"best.npz"``, ``"model-{epoch:03d}-{val_loss:.4f}.npz"`` (keys: ``epoch`` and
        :data:`HISTORY_KEYS`).
    monitor : the history key that decides what "best" is: accuracies are maximised, the
        other keys minimised.
    save_best_only : True: save only when ``monitor`` improved on every earlier epoch (by more
        than ``min_delta``); False: save after every epoch.
    min_delta : the smallest change that counts as improvement.
    meta : further JSON meta written into every file (the command line puts its run settings
        and preprocessing there, so ``gpucnn evaluate OUT/best.npz`` reads it as a model.npz).

    Raises
    ------
    ArgumentError (a ValueError) for a bad argument or a ``path`` field that is no log key;
    ValueError at the end of an epoch whose logs lack ``monitor`` (e.g. ``val_loss`` without
    validation data) when ``save_best_only``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        monitor: str = "val_loss",
        save_best_only: bool = True,
        min_delta: float = 0.0,
        meta: Mapping[str, Any] | None = None,
    ):
        owner = "ModelCheckpoint"
        if not isinstance(path, str | os.PathLike):
            raise ArgumentError(
                f"{owner}: expected path to be a str or os.PathLike; received {path!r} "
                f"({type(path).__name__})"
            )
        self.path = os.fspath(path)
        self.monitor = check_choice("monitor", monitor, HISTORY_KEYS, owner=owner)
        self.save_best_only = check_bool("save_best_only", save_best_only, owner=owner)
        self.min_delta = check_float("min_delta", min_delta, 0, owner=owner)
        if meta is not None and not isinstance(meta, Mapping):
            raise ArgumentError(
                f"{owner}: expected meta to be a mapping or None; received {type(meta).__name__}"
            )
        self.meta = dict(meta or {})
        try:  # a misspelt field is refused now, not after the first epoch's work
            self.path.format(epoch=1, **dict.fromkeys(HISTORY_KEYS, 0.0))
        except (KeyError, IndexError, ValueError) as exc:
            raise ArgumentError(
                f"{owner}: expected path fields among epoch, {', '.join(HISTORY_KEYS)}; "
                f"received {self.path!r} ({type(exc).__name__}: {exc})"
            ) from None
        self.sign = _improvement_sign(monitor)
        self.best = -math.inf
        self.best_epoch: int | None = None
        self.last_saved: str | None = None

    def on_epoch_end(self, trainer, epoch, logs):
        if self.save_best_only:
            value = _monitored("ModelCheckpoint", self.monitor, logs)
            if not self.sign * value > self.best + self.min_delta:
                return
            self.best, self.best_epoch = self.sign * value, epoch
        value = logs.get(self.monitor)
        path = Path(self.path.format(epoch=epoch, **logs))
        if _is_root(trainer):
            from .checkpoint import save_checkpoint  # checkpoint -> model -> ... -> here

            save_checkpoint(
                path, trainer.model, **self.meta, epoch=epoch, monitor={self.monitor: value}
            )
        self.last_saved = str(path)

    def state_dict(self) -> dict[str, Any]:
        """The best monitored value (negated for losses), its epoch and the last file saved."""
        return {"best": self.best, "best_epoch": self.best_epoch, "last_saved": self.last_saved}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best"]), state["best_epoch"]
        self.last_saved = state.get("last_saved")


class CSVLogger(Callback):
    """Write one line per epoch to a CSV file: ``epoch`` and every :data:`HISTORY_KEYS` value
    (empty when the epoch had none, e.g. ``val_loss`` without validation data).

    A new training (``trainer.epoch == 0``) replaces the file unless ``append``; a second
    ``fit`` or a resumed run appends, after dropping lines of epochs later than the trainer's
    (written after the checkpoint an interrupted run resumes from). Each line is written and
    closed at once, so the file is complete whenever training stops. Rank 0 alone writes.

    Parameters
    ----------
    path : the CSV file (its folder is created).
    separator : the field separator.
    append : keep an existing file's lines when a new training starts.
    """

    COLUMNS = ("epoch", *HISTORY_KEYS)

    def __init__(self, path: str | os.PathLike, separator: str = ",", append: bool = False):
        owner = "CSVLogger"
        if not isinstance(path, str | os.PathLike):
            raise ArgumentError(
                f"{owner}: expected path to be a str or os.PathLike; received {path!r} "
                f"({type(path).__name__})"
            )
        if not isinstance(separator, str) or len(separator) != 1 or separator in "0123456789.-\n":
            raise ArgumentError(
                f"{owner}: expected separator to be one character that no number holds; "
                f"received {separator!r}"
            )
        self.path = Path(path)
        self.separator = separator
        self.append = check_bool("append", append, owner=owner)

    def on_train_begin(self, trainer):
        if not _is_root(trainer):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = self.separator.join(self.COLUMNS) + "\n"
        if not self.path.is_file() or (trainer.epoch == 0 and not self.append):
            self.path.write_text(header)
            return
        if trainer.epoch == 0:  # a new training with append=True: keep every line
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not _epoch_after(line, self.separator, trainer.epoch)]
        if kept != lines:
            self.path.write_text("".join(kept))

    def on_epoch_end(self, trainer, epoch, logs):
        if not _is_root(trainer):
            return
        values = [str(epoch)] + [
            "" if logs.get(key) is None or math.isnan(logs[key]) else repr(float(logs[key]))
            for key in HISTORY_KEYS
        ]
        with open(self.path, "a") as f:
            f.write(self.separator.join(values) + "\n")


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stops improving.

    The reduction scales ``trainer.lr_multiplier`` (``trainer.scale_lr``), which applies on
    top of the schedule, so it lasts and a schedule keeps its shape below it.

    Parameters
    ----------
    monitor : the history key to watch: accuracies are maximised, the other keys minimised.
    factor : the multiplier, in (0, 1).
    patience : epochs without improvement before a reduction.
    min_lr : the learning rate a reduction never goes below.
    min_delta : the smallest change that counts as improvement.
    cooldown : epochs after a reduction during which no epoch counts as a wait.

    Raises
    ------
    ArgumentError (a ValueError) for a bad argument; ValueError at the end of an epoch whose
    logs lack ``monitor`` (``val_loss`` without validation data).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        min_lr: float = 0.0,
        min_delta: float = 1e-4,
        cooldown: int = 0,
    ):
        owner = "ReduceLROnPlateau"
        self.monitor = check_choice("monitor", monitor, HISTORY_KEYS, owner=owner)
        self.factor = check_float(
            "factor", factor, 0, 1, low_open=True, high_open=True, owner=owner
        )
        self.patience = check_int("patience", patience, 0, owner=owner)
        self.min_lr = check_float("min_lr", min_lr, 0, owner=owner)
        self.min_delta = check_float("min_delta", min_delta, 0, owner=owner)
        self.cooldown = check_int("cooldown", cooldown, 0, owner=owner)
        self.sign = _improvement_sign(monitor)
        self.best = -math.inf
        self.wait = 0
        self.cooldown_left = 0
        self.reductions = 0

    def on_epoch_end(self, trainer, epoch, logs):
        value = self.sign * _monitored("ReduceLROnPlateau", self.monitor, logs)
        cooling = self.cooldown_left > 0
        if cooling:
            self.cooldown_left -= 1
            self.wait = 0
        if value > self.best + self.min_delta:
            self.best, self.wait = value, 0
            return
        if cooling:
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        old = trainer.optimizer.lr
        new = max(old * self.factor, self.min_lr)
        if new < old:
            trainer.scale_lr(new / old)
            self.reductions += 1
            if trainer.log:
                trainer.log(
                    f"ReduceLROnPlateau: {self.monitor} has not improved for {self.wait} "
                    f"epochs: learning rate {old:.4g} -> {new:.4g}"
                )
        self.cooldown_left, self.wait = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        """Best value (negated for losses), epochs waited, cooldown left, reductions made."""
        return {
            "best": self.best,
            "wait": self.wait,
            "cooldown_left": self.cooldown_left,
            "reductions": self.reductions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = float(state["best"]), int(state["wait"])
        self.cooldown_left = int(state["cooldown_left"])
        self.reductions = int(state.get("reductions", 0))


TENSORBOARD_EXTRA = "install it with: pip install 'gpucnn[tensorboard]'"


def require_tensorboardx() -> type:
    """tensorboardX's ``SummaryWriter``; ImportError (one line naming the extra) without it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            f"TensorBoard: expected the tensorboardX package; it does not import ({exc}); "
            f"{TENSORBOARD_EXTRA}"
        ) from None
    return SummaryWriter


class TensorBoard(Callback):
    """Write each epoch's :data:`HISTORY_KEYS` values as TensorBoard scalars.

    Needs ``tensorboardX`` (the ``tensorboard`` extra: ``pip install 'gpucnn[tensorboard]'``),
    imported when the callback is made. Scalars are named ``epoch/<key>`` (``epoch/loss``,
    ``epoch/val_accuracy``, ``epoch/lr``...) with the 1-based epoch as the step; values an
    epoch lacks (``val_*`` without validation data) are left out. A resumed run writes a new
    event file in the same folder, continuing at its next epoch. Rank 0 alone writes. View
    with ``tensorboard --logdir LOG_DIR``.

    Parameters
    ----------
    log_dir : the folder of the event files (created).

    Raises
    ------
    ImportError (one line naming the extra) when tensorboardX is not installed; ArgumentError
    (a ValueError) for a ``log_dir`` that is not a path.
    """

    def __init__(self, log_dir: str | os.PathLike):
        if not isinstance(log_dir, str | os.PathLike):
            raise ArgumentError(
                f"TensorBoard: expected log_dir to be a str or os.PathLike; received "
                f"{log_dir!r} ({type(log_dir).__name__})"
            )
        self.log_dir = Path(log_dir)
        self._writer_class = require_tensorboardx()
        self._writer: Any = None

    def on_train_begin(self, trainer):
        if _is_root(trainer) and self._writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = self._writer_class(logdir=str(self.log_dir))

    def on_epoch_end(self, trainer, epoch, logs):
        if self._writer is None:
            return
        for key in HISTORY_KEYS:
            value = logs.get(key)
            if value is not None and not math.isnan(value):
                self._writer.add_scalar(f"epoch/{key}", float(value), epoch)
        self._writer.flush()  # complete whenever training stops

    def on_train_end(self, trainer):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LearningRateScheduler(Callback):
    """Set each epoch's learning rate from a function, as Keras' ``LearningRateScheduler``.

    ``schedule`` is called before each epoch with the epoch's **0-based** index (as in Keras
    and as :mod:`gpucnn.optim` schedules take it) and, when it takes two arguments, the
    current learning rate: ``schedule(epoch) -> lr`` or ``schedule(epoch, lr) -> lr``. The
    rate it returns is the one the optimizer uses for every batch of that epoch and the one
    ``history["lr"]`` shows.

    The current rate given to a two-argument schedule is the previous epoch's rate (with a
    constant trainer schedule), after any later change by another callback: a
    :class:`ReduceLROnPlateau` reduction reaches it, so ``lambda epoch, lr: lr * 0.9`` keeps
    decaying from the reduced rate. A one-argument schedule decides the rate alone and
    overrides such changes, as in Keras. The rate set here is an assignment to
    ``optimizer.lr`` in ``on_epoch_begin`` (see :mod:`gpucnn.callbacks`), so it also lasts
    into ``trainer.lr_multiplier`` and is saved in checkpoints; the callback keeps no state.

    Parameters
    ----------
    schedule : a function ``epoch -> lr`` or ``(epoch, lr) -> lr`` returning a positive,
        finite number.
    verbose : log the rate when it changes (through the trainer's ``log``).

    Raises
    ------
    ArgumentError (a ValueError) when ``schedule`` is not a function of one or two
    arguments; ValueError before an epoch whose rate is not a positive finite number.

    Examples
    --------
    >>> LearningRateScheduler(lambda epoch: 0.1 * 0.5**epoch)  # doctest: +ELLIPSIS
    <gpucnn.callbacks.LearningRateScheduler object at ...>
    >>> LearningRateScheduler(lambda epoch, lr: lr if epoch < 3 else lr * 0.9)  # doctest: +ELLIPSIS
    <gpucnn.callbacks.LearningRateScheduler object at ...>
    """

    def __init__(self, schedule: Callable[..., float], verbose: bool = False):
        owner = "LearningRateScheduler"
        if not callable(schedule):
            raise ArgumentError(
                f"{owner}: expected schedule to be a function epoch -> lr or (epoch, lr) -> lr; "
                f"received {schedule!r} ({type(schedule).__name__})"
            )
        self.schedule = schedule
        self.takes_lr = _takes_two_arguments(owner, schedule)
        self.verbose = check_bool("verbose", verbose, owner=owner)

    def on_epoch_begin(self, trainer, epoch):
        current = trainer.optimizer.lr
        index = epoch - 1  # callbacks count epochs from 1; schedules from 0
        value = self.schedule(index, current) if self.takes_lr else self.schedule(index)
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        lr = float(value) if number else math.nan
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(
                f"LearningRateScheduler: expected the schedule to return a positive finite "
                f"learning rate for epoch {index} (0-based); received {value!r}"
            )
        trainer.optimizer.lr = lr
        if self.verbose and trainer.log and lr != current:
            trainer.log(f"LearningRateScheduler: epoch {epoch}: learning rate {lr:.4g}")


def _takes_two_arguments(owner: str, schedule: Callable[..., float]) -> bool:
    """Whether ``schedule`` is called as ``schedule(epoch, lr)`` rather than ``schedule(epoch)``."""
    try:
        signature = inspect.signature(schedule)
    except (TypeError, ValueError):  # a builtin without a signature: Keras' one-argument form
        return False
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    if len(required) > 2 or (not positional and not varargs):
        raise ArgumentError(
            f"{owner}: expected schedule to take (epoch) or (epoch, lr); received a function "
            f"with the signature {signature}"
        )
    return len(positional) >= 2 or varargs


__all__ = [
    "HISTORY_KEYS",
    "BatchLogs",
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "TensorBoard",
    "require_tensorboardx",
]
