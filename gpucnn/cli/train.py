"""``gpucnn train``: train a model on a named dataset or the user's own data into a run folder."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, runfolder
from ..architectures import BUILTIN
from ..augment import Augment
from ..backend import BACKEND_CHOICES, BackendError, select_backend
from ..callbacks import Callback, CSVLogger, ModelCheckpoint, TensorBoard
from ..checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from ..data import DATASETS, Dataset, train_val_split
from ..distributed import MPICommunicator, mpi_world_size
from ..model import Sequential, model_file
from ..precision import MIXED, check_backend
from ..precision import policy as precision_policy
from ..recipes import (
    OPTIMIZER_NAMES,
    RECIPES,
    SCHEDULE_NAMES,
    build_model,
    build_optimizer,
    build_schedule,
    recipe,
    run_config,
)
from ..trainer import EarlyStopping, Trainer, evaluate
from ..transfer import init_from
from .common import STATE, UsageError, add_plugin_flag, border_median, load_run_data
from .evaluate import classification_report
from .outputs import same_file
from .report import write_run_report


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and its flags to the subcommands ``sub``."""
    train = sub.add_parser(
        "train",
        help="train a model (default: the offline digits dataset)",
        description="Train a model on a named dataset or on your own images (--data).",
    )
    train.add_argument("--dataset", choices=DATASETS, default=None, help="default: digits")
    train.add_argument(
        "--data",
        metavar="PATH",
        help="your own data: a folder with one sub-folder of images per class (any format "
        "Pillow reads; folder names are the class names), a .npz with x, y (optional x_test, "
        "y_test, class_names), or a folder with x.npy and y.npy",
    )
    train.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="resize every image to H x W (bilinear, aspect ratio not kept); default: the "
        "most common size in the folder, or the arrays' size",
    )
    train.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="1: grey (luma 0.299 R + 0.587 G + 0.114 B), 3: RGB (grey repeated); default: "
        "3 if any image has colour, else 1",
    )
    train.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="with --data: seeded, stratified test hold-out when the data has no test split "
        "(default 0.2)",
    )
    train.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --data: read batches from disk instead of loading everything (default: "
        "only when the images would take over a quarter of the memory)",
    )
    train.add_argument(
        "--augment-shift",
        type=int,
        default=None,
        metavar="P",
        help="augment: shift each training image by up to P pixels (= random crop with P "
        "pixels of zero padding); default: the recipe's (0, but 2 for --model resnet on mnist "
        "and fashion-mnist)",
    )
    train.add_argument(
        "--augment-flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="augment: random horizontal flips (for photos and clothes; wrong for digits and "
        "text); default: the recipe's (off, but on for --dataset fashion-mnist --model resnet)",
    )
    train.add_argument(
        "--data-dir",
        help="folder with the dataset's IDX files (default $GPUCNN_DATA or ~/.cache/gpucnn)",
    )
    train.add_argument(
        "--no-download", action="store_true", help="never download missing dataset files"
    )
    train.add_argument(
        "--model", help=f"built-in name {sorted(BUILTIN)} or a JSON architecture file"
    )
    add_plugin_flag(train)
    train.add_argument(
        "--init",
        metavar="MODEL.npz|RUN",
        help="start a new run from a saved model's architecture and weights (a model.npz, a "
        "checkpoint or a run folder), with this run's own data, --lr, --epochs and optimizer; "
        "when the data has another number of classes, the last Dense layer is replaced by a "
        "fresh one. Not with --model or --resume",
    )
    train.add_argument(
        "--epochs",
        type=int,
        help="total epochs (with --resume: including those already done); "
        + _recipe_default("epochs"),
    )
    train.add_argument("--batch-size", type=int, help=_recipe_default("batch_size"))
    train.add_argument("--lr", type=float, help="learning rate; " + _recipe_default("lr"))
    train.add_argument(
        "--optimizer",
        choices=OPTIMIZER_NAMES,
        help="default: sgd; adam and adamw decay weights apart from the gradient (adamw: 0.01 "
        "unless --weight-decay)",
    )
    train.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    train.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Nesterov momentum for SGD (default: the recipe's; off, but on for --model resnet "
        "on mnist and fashion-mnist)",
    )
    train.add_argument(
        "--weight-decay",
        type=float,
        help="applied to weights, not biases (default 0; 5e-4 in the resnet recipes)",
    )
    train.add_argument("--schedule", choices=SCHEDULE_NAMES, help="default: cosine")
    train.add_argument(
        "--warmup-epochs",
        type=int,
        help="raise the learning rate linearly over the first N epochs (default 0; 1 in the "
        "resnet recipes)",
    )
    train.add_argument(
        "--label-smoothing",
        type=float,
        help="epsilon in [0, 1) of the training loss's label smoothing (default 0; 0.1 in the "
        "resnet recipes)",
    )
    train.add_argument("--clip-norm", type=float, help="clip the global gradient norm")
    train.add_argument(
        "--val-fraction", type=float, help="held out from the training split (default 0.1)"
    )
    train.add_argument(
        "--patience", type=int, help="early stopping on val_accuracy after N flat epochs"
    )
    train.add_argument(
        "--checkpoint-best",
        action="store_true",
        default=None,
        help="also keep the model of the epoch with the best val_accuracy in OUT/best.npz (a "
        "model file, as model.npz); needs validation data",
    )
    train.add_argument(
        "--csv-log",
        action="store_true",
        default=None,
        help="write one line per epoch (epoch, loss, accuracy, val_loss, val_accuracy, lr, "
        "...) to OUT/history.csv",
    )
    train.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="write each epoch's values as TensorBoard scalars to DIR (needs the tensorboard "
        "extra: pip install 'gpucnn[tensorboard]')",
    )
    train.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    train.add_argument("--dtype", choices=("float32", "float64"), help="default: float32")
    train.add_argument(
        "--precision",
        choices=MIXED,
        help="mixed precision on a GPU: float32 parameters, convolutions and dense layers in "
        "bfloat16 or float16 (float16 with loss scaling); default: compute in --dtype",
    )
    train.add_argument("--seed", type=int, help="default: 0")
    train.add_argument("--out", help="output folder (default: a new folder under runs/)")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in --out (refused otherwise)",
    )
    train.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run saved in DIR/checkpoint.npz; --epochs (a larger total), "
        "--data-dir, --no-download, --backend, --progress and --report may be given with it, "
        "other flags only with the run's own values",
    )
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    train.add_argument(
        "--distributed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="data-parallel over MPI ranks (default: on when mpirun/mpiexec started more than "
        "one process); --batch-size is the global batch",
    )
    train.add_argument(
        "--sync-batch-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="in a distributed run, BatchNorm uses the statistics of the whole global batch "
        "(default; N processes train as one) or, with --no-sync-batch-norm, each rank's own "
        "share (no extra messages; running statistics averaged after every epoch)",
    )
    train.add_argument(
        "--report",
        action="store_true",
        help="also draw the pictures of 'gpucnn report' (needs [plot])",
    )


def _recipe_default(key: str) -> str:
    """``default: from the dataset's recipe (digits: 10, mnist: 3, ...)`` for --help."""
    if len({recipe[key] for recipe in RECIPES.values()}) == 1:
        return f"default: {next(iter(RECIPES.values()))[key]} (every dataset's recipe)"
    values = ", ".join(
        f"{'--data' if name == 'custom' else name}: {recipe[key]}"
        for name, recipe in RECIPES.items()
    )
    return f"default: from the dataset's recipe ({values})"


PREPROCESSING_SAMPLE = 512  # training images whose borders tell the background polarity

# Flags that describe a run: given with --resume they are compared with the run's recorded
# values (its own command line plus --resume is the natural way to continue it), and refused
# when they differ. --out is compared with the resumed folder; --overwrite is always refused.
RUN_FLAGS = (
    "dataset", "data", "image_size", "channels", "test_fraction", "stream", "augment_shift",
    "augment_flip", "model", "batch_size", "lr", "optimizer", "momentum", "nesterov",
    "weight_decay", "schedule", "warmup_epochs", "label_smoothing", "clip_norm", "val_fraction",
    "patience", "checkpoint_best", "csv_log", "tensorboard", "dtype", "precision", "seed", "out",
    "overwrite", "sync_batch_norm",
)  # fmt: skip
TRAIN_DEFAULTS = {
    "optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": None,
    "warmup_epochs": 0, "label_smoothing": 0.0, "val_fraction": 0.1, "dtype": "float32", "seed": 0,
    "sync_batch_norm": True, "precision": None,
}  # fmt: skip
# what a run recorded before these settings existed (or without --data) amounts to
RECORDED_DEFAULTS = {
    "augment_shift": 0, "augment_flip": False, "test_fraction": 0.2, "warmup_epochs": 0,
    "label_smoothing": 0.0, "checkpoint_best": False, "csv_log": False,
    "sync_batch_norm": False,  # distributed BatchNorm ran on each rank's share before
    "precision": None,
}  # fmt: skip
# scikit-learn's random_state takes 0..2**32-1, and the validation split is seeded with seed + 1
MAX_SEED = 2**32 - 2


def cmd_train(args: argparse.Namespace) -> int:
    _check_train_flags(args)
    comm = _communicator(args)
    run, out, checkpoint = _resolve_run(args)
    root = comm is None or comm.is_root
    if comm is not None:
        if run["batch_size"] < comm.size:
            raise UsageError(
                f"--batch-size is the global batch, split over {comm.size} processes: expected "
                f">= {comm.size}; received {run['batch_size']}"
            )
        out = Path(comm.broadcast(str(out)))  # rank 0's folder name (its clock) for all
        if args.backend != "numpy":
            comm.select_gpu()
    if args.report:  # refused before training, not after it
        from ..report import require_matplotlib

        require_matplotlib()
    with contextlib.ExitStack() as stack:
        failure = None
        if root:  # rank 0 alone checks, locks and writes the run folder
            try:
                _claim_run_folder(args, out, checkpoint, stack)
            except Exception as exc:
                if comm is None:
                    raise
                failure = exc
        if comm is not None and comm.broadcast(failure is not None):
            message = (
                " ".join(str(failure).split()) if failure is not None else "run folder refused"
            )
            raise UsageError(message)  # on every rank: printed by rank 0 only
        return _train(args, run, out, checkpoint, comm)


def _claim_run_folder(
    args: argparse.Namespace, out: Path, checkpoint: Checkpoint | None, stack: contextlib.ExitStack
) -> None:
    """Refuse to overwrite an earlier run, create the folder and hold its lock (via ``stack``)."""
    if checkpoint is None:
        _refuse_inputs_in_out(args, out)
        earlier = runfolder.earlier_results(out)
        if earlier and not args.overwrite:
            raise UsageError(
                f"--out {out} holds an earlier run ({', '.join(earlier)}); pass --overwrite to "
                f"replace it, --resume {out} to continue it, or choose another --out"
            )
    created = runfolder.prepare(out, "--resume" if checkpoint is not None else "--out")
    stack.callback(runfolder.remove_if_empty, created)  # runs after the lock is released
    stack.enter_context(runfolder.locked(out, report=lambda line: print(line, flush=True)))
    runfolder.remove_stale_temporaries(out)


def _refuse_inputs_in_out(args: argparse.Namespace, out: Path) -> None:
    """Refuse an --out folder that is the --data folder, or whose result files would replace
    the --data or --model file (even with --overwrite: they are this run's inputs)."""
    inputs = [
        ("--data", args.data),
        ("--model", args.model if args.model not in BUILTIN else None),
        ("--init", args.init),
    ]
    for flag, source in inputs:
        if source is None:
            continue
        if same_file(out, source):
            raise UsageError(
                f"--out {out} is the {flag} path {source}: the run's files would be mixed "
                "with its input; choose another --out"
            )
        for name in runfolder.RESULT_FILES:
            if same_file(out / name, source):
                raise UsageError(
                    f"--out {out} would replace the {flag} file {source} with the run's {name}; "
                    "choose another --out"
                )


def _train(
    args: argparse.Namespace,
    run: dict[str, Any],
    out: Path,
    checkpoint: Checkpoint | None,
    comm: MPICommunicator | None = None,
) -> int:
    root = comm is None or comm.is_root
    data = load_run_data(run, download=not args.no_download, warn=root)
    _check_split(run["val_fraction"], len(data.x_train))
    (x_fit, y_fit), (x_val, y_val) = train_val_split(
        data.x_train, data.y_train, run["val_fraction"], run["seed"] + 1
    )
    # the split's arrays hold the training images now; a sample is all that is read later
    # (the preprocessing record), and dropping the rest spares a copy of the set (188 MB
    # for MNIST) for the whole run
    sample = np.array(data.x_train[:PREPROCESSING_SAMPLE], dtype=np.float32)
    data = dataclasses.replace(data, x_train=sample, y_train=data.y_train[: len(sample)])
    if checkpoint is None and run.get("init"):
        model, replaced = init_from(
            run["init"], data.input_shape, data.num_classes, args.backend, run["seed"], run["dtype"]
        )
        if replaced is not None and root:
            print(f"gpucnn: --init: {replaced}", flush=True)
    elif checkpoint is None:
        model = build_model(run, data.input_shape, data.num_classes, backend=args.backend)
    else:  # the checkpoint holds the architecture: no file outside the run folder is read
        model = _model_from_checkpoint(checkpoint, run, data, args.backend, out)
    if run.get("precision"):
        try:
            model.set_precision(run["precision"])
        except ValueError as exc:  # resumed where the run's precision cannot run
            raise UsageError(
                f"{exc}; the run was trained with --precision {run['precision']}: resume it "
                "where CuPy finds a GPU"
            ) from None
    trainer = _build_trainer(
        run,
        model,
        out,
        progress=args.progress,
        validation=len(x_val) > 0,
        model_meta={"run": run, "preprocessing": preprocessing(data)},
    )
    trainer.communicator = comm
    if not root:
        trainer.progress, trainer.log = False, None
    if checkpoint is not None:
        try:
            trainer.restore(checkpoint)
        except CheckpointError as exc:
            raise CheckpointError(f"{out / 'checkpoint.npz'}: {exc}") from None
    remaining = run["epochs"] - trainer.epoch
    # remaining == 0 without model.npz: stopped after its last epoch's checkpoint but before
    # the model was saved; finish it
    if remaining < 0 or (remaining == 0 and (out / "model.npz").exists()):
        raise UsageError(
            f"the run in {out} has already trained {trainer.epoch} of {run['epochs']} epochs; "
            f"pass --epochs N with N > {trainer.epoch} to train more"
        )
    processes = f", {comm.size} processes" if comm is not None else ""
    if model.precision.mixed:
        processes = f", precision {model.precision.name}{processes}"
    skipped = f", {len(data.skipped)} unreadable file(s) skipped" if data.skipped else ""
    if root:
        print(
            f"gpucnn {__version__}: {data.name} ({len(x_fit)} train / {len(x_val)} val / {len(data.x_test)} test{skipped}), "
            f"model {run['model']} ({model.num_params:,} params), backend {model.backend.name} ({model.backend.reason}){processes}, out {out}",
            flush=True,
        )
    start = time.perf_counter()
    if remaining > 0:
        trainer.fit(
            x_fit,
            y_fit,
            validation_data=(x_val, y_val) if len(x_val) else None,
            epochs=remaining,
            batch_size=run["batch_size"],
        )
    else:  # what the end of fit does: e.g. EarlyStopping puts its best weights back
        trainer.finish()
    elapsed = time.perf_counter() - start
    test_loss, test_accuracy = evaluate(model, data.x_test, data.y_test, communicator=comm)
    if not root:
        return 0
    save_checkpoint(out / "model.npz", model, run=run, preprocessing=preprocessing(data))
    metrics = _train_metrics(run, trainer, len(x_fit), test_loss, test_accuracy, elapsed)
    metrics["world_size"] = 1 if comm is None else comm.size
    if comm is not None:
        metrics["distributed"] = comm.stats()
    metrics["precision"] = model.precision.name
    scaler = trainer.loss_scaler
    if scaler is not None:  # float16: how often the loss scale overflowed
        metrics["loss_scale"], metrics["overflow_steps_skipped"] = scaler.scale, scaler.skipped
    metrics["skipped_files"] = len(data.skipped)
    metrics["skipped"] = data.skipped
    # what `gpucnn report` draws without the test images: the confusion matrix, named classes
    tested = classification_report(data, model.predict(data.x_test))
    metrics.update(classes=tested["classes"], confusion_matrix=tested["confusion_matrix"])
    runfolder.atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    print(
        f"test accuracy {test_accuracy:.4f} (loss {test_loss:.4f}); saved {out / 'model.npz'} and {out / 'metrics.json'}"
    )
    if args.report:
        write_run_report(out, model, metrics, data)
    return 0


def preprocessing(data: Dataset) -> dict[str, Any]:
    """How raw images became the model's inputs, saved with the model for predict/evaluate.

    Pixels are scaled to [0, 1] by the bit depth's maximum; ``mean``/``std`` then apply
    (identity here); ``background`` is the training images' polarity ("dark" for light
    strokes on a dark background, as MNIST), from the median border pixel of a sample.
    """
    channels, height, width = data.input_shape
    sample = np.asarray(data.x_train[:PREPROCESSING_SAMPLE], dtype=np.float32)
    return {
        "scale": "pixel / maximum of its bit depth (255 or 65535) to [0, 1]",
        "mean": 0.0,
        "std": 1.0,
        "channels": channels,
        "image_size": [height, width],
        "resize": "bilinear, aspect ratio not kept",
        "background": "light" if border_median(sample) > 0.5 else "dark",
        "classes": list(data.classes),
    }


def _check_precision(precision: str | None, dtype: str | None, backend: str) -> None:
    """Refuse a mixed precision before any data is read: on float64, or where the backend
    is NumPy (named, or what ``auto`` finds here)."""
    if precision is None:
        return
    if dtype == "float64":
        raise UsageError(
            f"--precision {precision} keeps float32 parameters; received --dtype float64"
        )
    try:
        check_backend(precision_policy(precision), select_backend(backend))
    except (ValueError, BackendError) as exc:
        raise UsageError(str(exc)) from None


def _check_train_flags(args: argparse.Namespace) -> None:
    from ..functional._cpu_threads import cpu_threads

    cpu_threads()  # a bad GPUCNN_CPU_THREADS is refused before any data is read
    if args.init and (args.model or args.resume):
        raise UsageError(
            f"--init starts a new run from a saved model; received it with "
            f"{'--model (the architecture comes from the --init file)' if args.model else '--resume (which continues a run from its own checkpoint)'}"
        )
    if args.data and (args.dataset or args.data_dir):
        raise UsageError("--data cannot be combined with --dataset or --data-dir")
    _check_precision(args.precision, args.dtype, args.backend)
    # with --resume they are compared with the run's own values instead (see _resume_conflicts)
    if (
        not args.resume
        and not args.data
        and (args.image_size or args.channels or args.stream is not None)
    ):
        raise UsageError("--image-size, --channels and --stream apply to --data only")
    if args.image_size and min(args.image_size) < 1:
        raise UsageError(f"--image-size must be >= 1 pixel; received {args.image_size}")
    if args.augment_shift is not None and args.augment_shift < 0:
        raise UsageError(f"--augment-shift must be >= 0; received {args.augment_shift}")
    if args.test_fraction is not None and not 0 < args.test_fraction < 1:
        raise UsageError(f"--test-fraction must be in (0, 1); received {args.test_fraction}")
    for flag in ("epochs", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1; received {value}")
    for flag in ("lr", "clip_norm"):
        value = getattr(args, flag)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise UsageError(
                f"--{flag.replace('_', '-')} must be a positive number; received {value}"
            )
    for flag in ("momentum", "weight_decay"):
        value = getattr(args, flag)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0; received {value}")
    if args.val_fraction is not None and not 0 <= args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1); received {args.val_fraction}")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise UsageError(
            f"--seed must be an integer from 0 to {MAX_SEED} (2**32 - 2); received {args.seed}"
        )
    if args.warmup_epochs is not None and args.warmup_epochs < 0:
        raise UsageError(f"--warmup-epochs must be >= 0; received {args.warmup_epochs}")
    if args.label_smoothing is not None and not 0 <= args.label_smoothing < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1); received {args.label_smoothing}")
    if args.patience is not None and args.patience < 1:
        raise UsageError(f"--patience must be >= 1; received {args.patience}")
    if not args.resume and args.patience is not None and args.val_fraction == 0:
        raise UsageError("--patience needs validation data; received --val-fraction 0")
    if not args.resume and args.checkpoint_best and args.val_fraction == 0:
        raise UsageError(
            "--checkpoint-best keeps the best val_accuracy and needs validation data; received "
            "--val-fraction 0"
        )
    if args.tensorboard is not None:
        from ..callbacks import require_tensorboardx

        try:
            require_tensorboardx()
        except ImportError as exc:
            raise UsageError(f"--tensorboard: {exc}") from None


def _check_split(fraction: float, total: int) -> None:
    """Refuse a validation fraction that leaves no training (or no validation) images."""
    val = int(round(total * fraction))  # as train_val_split holds out
    if val >= total:
        raise UsageError(
            f"--val-fraction {fraction} leaves no training images (of {total}); use a smaller fraction"
        )
    if fraction > 0 and val == 0:
        raise UsageError(
            f"--val-fraction {fraction} leaves no validation images (of {total}); use 0 for none "
            "or a larger fraction"
        )


def _model_from_checkpoint(
    checkpoint: Checkpoint, run: dict[str, Any], data: Dataset, backend: str, out: Path
) -> Sequential:
    try:
        model = Sequential.from_config(
            checkpoint.meta["architecture"],
            backend=backend,
            seed=run.get("seed", 0),
            dtype=run.get("dtype", "float32"),
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(
            f"{out / 'checkpoint.npz'}: cannot rebuild the saved architecture ({exc})"
        ) from None
    if model.input_shape != data.input_shape or model.output_shape != (data.num_classes,):
        raise CheckpointError(
            f"{out / 'checkpoint.npz'}: expected a model for {data.name} images "
            f"{data.input_shape} and {data.num_classes} classes; the checkpoint's takes "
            f"{model.input_shape} to {model.output_shape}"
        )
    return model


def _communicator(args: argparse.Namespace) -> MPICommunicator | None:
    """The MPI ranks of a distributed run, or None for a single process.

    ``--distributed`` forces MPI, ``--no-distributed`` forbids it; by default a run is
    distributed when an MPI launcher started more than one process (its environment says so).
    """
    wanted = args.distributed if args.distributed is not None else mpi_world_size() > 1
    if not wanted:
        return None
    STATE.communicator = MPICommunicator()
    return STATE.communicator


def _resolve_run(args: argparse.Namespace) -> tuple[dict[str, Any], Path, Checkpoint | None]:
    """The run settings, output folder and (with --resume) the checkpoint to continue.

    Stored paths are absolute, so a run folder keeps working from any working directory;
    ``--data-dir`` given with ``--resume`` replaces the stored one (the data moved).
    """
    if args.resume:
        out = Path(args.resume)
        if not (out / "checkpoint.npz").exists() and out.name == "checkpoint.npz":
            out = out.parent
        checkpoint = load_checkpoint(out / "checkpoint.npz")
        run = checkpoint.meta.get("run")
        required = ("dataset", "epochs", "batch_size", "val_fraction", "seed")
        if not isinstance(run, dict) or not all(k in run for k in required):
            raise CheckpointError(f"{out / 'checkpoint.npz'} holds no run configuration to resume")
        run = dict(run)
        _refuse_resume_conflicts(args, run, out)
        if args.epochs is not None:
            run["epochs"] = args.epochs
        if args.data_dir is not None:
            run["data_dir"] = str(Path(args.data_dir).resolve())
        return run, out, checkpoint
    model = args.model
    if model is not None and model not in BUILTIN:
        model = str(Path(model).resolve())
    init = str(model_file(args.init).resolve()) if args.init else None
    if init is not None:  # named after the saved run's model (its file when unknown)
        saved = (load_checkpoint(init).meta.get("run") or {}).get("model")
        model = Path(saved).stem if isinstance(saved, str) else Path(init).stem
    own = (
        {
            "data": str(Path(args.data).resolve()),
            "image_size": args.image_size,
            "channels": args.channels,
            "test_fraction": 0.2 if args.test_fraction is None else args.test_fraction,
            "stream": args.stream,
        }
        if args.data
        else {}
    )
    dataset = "custom" if args.data else args.dataset or "digits"
    # a flag not given takes the recipe's value for this model and dataset, else its default
    defaults = {**TRAIN_DEFAULTS, "augment_shift": 0, "augment_flip": False}
    settings = recipe(dataset, model, args.optimizer)
    if args.momentum == 0:  # Nesterov needs momentum: a recipe's Nesterov goes with it
        settings.pop("nesterov", None)
    defaults.update({k: v for k, v in settings.items() if k in defaults})
    settings = {k: getattr(args, k) for k in defaults}
    settings = {k: defaults[k] if v is None else v for k, v in settings.items()}
    run = run_config(
        dataset,
        **own,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        model=model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        clip_norm=args.clip_norm,
        patience=args.patience,
        checkpoint_best=bool(args.checkpoint_best),
        csv_log=bool(args.csv_log),
        tensorboard=str(Path(args.tensorboard).resolve()) if args.tensorboard else None,
        **({"init": init} if init else {}),
        **settings,
    )
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(args.data).stem if args.data else run["dataset"]
    default_out = Path("runs") / f"{name}-{Path(run['model']).stem}-{stamp}"
    return run, Path(args.out) if args.out else default_out, None


def _resume_conflicts(
    args: argparse.Namespace, run: dict[str, Any], out: Path
) -> list[tuple[str, Any, Any]]:
    """The run flags given with --resume whose value differs from the one the run recorded:
    ``(flag, given, recorded)``; paths are compared as files (symlinks, ``./``)."""
    conflicts = []
    for flag in RUN_FLAGS:
        given = getattr(args, flag)
        if given is None:
            continue
        if flag == "out":
            recorded, same = str(out), same_file(given, out)
        elif flag == "overwrite":
            recorded, same = None, not given  # replacing the run is never a way to resume it
        else:
            recorded = run.get(flag, RECORDED_DEFAULTS.get(flag))
            if flag == "data":
                same = recorded is not None and same_file(given, recorded)
            elif flag == "model" and given not in BUILTIN:
                same = recorded is not None and same_file(given, recorded)
            elif flag == "image_size":
                same = recorded is not None and list(given) == list(recorded)
            else:  # JSON keeps floats exactly: --lr 0.05 equals the recorded 0.05
                same = given == recorded
        if not same:
            conflicts.append((flag, given, recorded))
    return conflicts


def _refuse_resume_conflicts(args: argparse.Namespace, run: dict[str, Any], out: Path) -> None:
    conflicts = _resume_conflicts(args, run, out)
    if not conflicts:
        return
    names = ", ".join(_flag(f) for f, _, _ in conflicts)
    details = "; ".join(
        f"{_flag(f)} is never given with --resume"
        if f == "overwrite"
        else f"received {_shown(f, given)}, the run has {_shown(f, recorded)}"
        for f, given, recorded in conflicts
    )
    raise UsageError(
        f"--resume continues a run with its own settings; {names} would change it ({details}): "
        "drop them or give the run's values, or start a new run with --out (--epochs, "
        "--data-dir, --no-download, --backend, --progress and --report may differ)"
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# boolean run flags that have a --no- form
NEGATABLE = ("stream", "augment_flip", "nesterov", "sync_batch_norm")


def _shown(name: str, value: Any) -> str:
    """A flag with its value as a command line gives it (``--seed 7``, ``--no-stream``)."""
    if value is None or value is False and name not in NEGATABLE:
        return f"no {_flag(name)}"
    if isinstance(value, bool):
        return _flag(name) if value else f"--no-{name.replace('_', '-')}"
    if isinstance(value, list | tuple):
        return f"{_flag(name)} " + " ".join(str(v) for v in value)
    return f"{_flag(name)} {value}"


def _build_trainer(
    run: dict[str, Any],
    model: Sequential,
    out: Path,
    progress: bool | None,
    validation: bool,
    model_meta: dict[str, Any] | None = None,
) -> Trainer:
    """The run's Trainer. Its callbacks, in an order fixed by the run's settings (a resumed
    run gives each its saved state by position): EarlyStopping (--patience), ModelCheckpoint
    to OUT/best.npz (--checkpoint-best), CSVLogger to OUT/history.csv (--csv-log) and
    TensorBoard (--tensorboard DIR)."""
    callbacks: list[Callback] = (
        [EarlyStopping("val_accuracy", patience=run["patience"])]
        if run["patience"] and validation
        else []
    )
    if run.get("checkpoint_best") and validation:
        callbacks.append(ModelCheckpoint(out / "best.npz", "val_accuracy", meta=model_meta))
    if run.get("csv_log"):
        callbacks.append(CSVLogger(out / "history.csv"))
    if run.get("tensorboard"):
        try:
            callbacks.append(TensorBoard(run["tensorboard"]))
        except ImportError as exc:  # a run resumed where tensorboardX is missing
            raise UsageError(f"--tensorboard: {exc}") from None
    shift, flip = run.get("augment_shift", 0), run.get("augment_flip", False)
    augment = Augment(shift, flip, seed=run["seed"] + 2) if shift or flip else None
    return Trainer(
        model,
        build_optimizer(run),
        augment=augment,
        schedule=build_schedule(run),
        callbacks=callbacks,
        checkpoint_path=out / "checkpoint.npz",
        checkpoint_meta={"run": run},
        seed=run["seed"],
        label_smoothing=run.get("label_smoothing", 0.0),
        sync_batch_statistics=run.get("sync_batch_norm", RECORDED_DEFAULTS["sync_batch_norm"]),
        progress=progress,
        log=lambda line: print(line, flush=True),
    )


def _train_metrics(
    run: dict[str, Any],
    trainer: Trainer,
    num_train: int,
    test_loss: float,
    test_accuracy: float,
    elapsed: float,
) -> dict[str, Any]:
    history = trainer.history
    times = [t for t in history["time_s"] if t == t]
    trained = num_train * len(times)
    return {
        "dataset": run["dataset"],
        "data": run.get("data"),
        "model": run["model"],
        "backend": trainer.model.backend.name,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "train_images_per_second": trained / sum(times) if times and sum(times) else None,
        "epochs": trainer.epoch,
        "elapsed_s": elapsed,
        "history": history,
        "run": run,
    }
