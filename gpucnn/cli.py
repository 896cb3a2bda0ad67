"""The ``gpucnn`` command: train | evaluate | predict | info | bench | export | report.

Exit codes: 0 success; 2 a user error (bad flag, missing or corrupt file, bad architecture
or checkpoint), printed as one line on stderr; 3 training diverged; 130/143 interrupted by
SIGINT/SIGTERM after saving a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, runfolder
from .architectures import BUILTIN
from .augment import Augment
from .backend import BACKEND_CHOICES, BackendError, blas_info, device_info, select_backend
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_model, save_checkpoint
from .data import DATASETS, Dataset, DatasetError, IdxError, load_dataset, train_val_split
from .data.download import DownloadError
from .data.files import load_data
from .data.images import ImageError, fit_channels, load_images
from .distributed import DistributedError, MPICommunicator, mpi_world_size
from .model import Sequential
from .recipes import SCHEDULE_NAMES, build_model, build_optimizer, build_schedule, run_config
from .trainer import EarlyStopping, Trainer, TrainingError, TrainingInterrupted, evaluate

USER_ERRORS = (
    ValueError,
    OSError,
    DatasetError,
    DownloadError,
    CheckpointError,
    BackendError,
    IdxError,
    ImageError,
    DistributedError,
)
_COMMUNICATOR: MPICommunicator | None = None  # set by a distributed `train`


class UsageError(Exception):
    """A command-line mistake (printed as one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gpucnn", description="Train and run small CNNs on NumPy (CPU) or CuPy (GPU)."
    )
    parser.add_argument("--version", action="version", version=f"gpucnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
        default=0.2,
        help="with --data: seeded, stratified test hold-out when the data has no test split",
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
        default=0,
        metavar="P",
        help="augment: shift each training image by up to P pixels (= random crop with P "
        "pixels of zero padding); default 0 (off)",
    )
    train.add_argument(
        "--augment-flip",
        action="store_true",
        help="augment: random horizontal flips (for photos; wrong for digits and text)",
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
    train.add_argument(
        "--epochs", type=int, help="total epochs (with --resume: including those already done)"
    )
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="learning rate")
    train.add_argument("--optimizer", choices=("sgd", "adam"), help="default: sgd")
    train.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    train.add_argument("--nesterov", action="store_true", default=None)
    train.add_argument(
        "--weight-decay", type=float, help="applied to weights, not biases (default 0)"
    )
    train.add_argument("--schedule", choices=SCHEDULE_NAMES, help="default: cosine")
    train.add_argument("--clip-norm", type=float, help="clip the global gradient norm")
    train.add_argument(
        "--val-fraction", type=float, help="held out from the training split (default 0.1)"
    )
    train.add_argument(
        "--patience", type=int, help="early stopping on val_accuracy after N flat epochs"
    )
    train.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    train.add_argument("--dtype", choices=("float32", "float64"), help="default: float32")
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
        help="continue the run saved in DIR/checkpoint.npz; only --epochs (a larger total), "
        "--data-dir, --no-download, --backend, --progress and --report may be given with it",
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
        "--report",
        action="store_true",
        help="also draw the pictures of 'gpucnn report' (needs [plot])",
    )

    ev = sub.add_parser(
        "evaluate", help="accuracy, per-class precision/recall/F1 and confusion matrix"
    )
    ev.add_argument("model_path", metavar="MODEL.npz")
    ev.add_argument(
        "--dataset", choices=DATASETS, help="default: the dataset the model was trained on"
    )
    ev.add_argument("--data-dir")
    ev.add_argument("--no-download", action="store_true")
    ev.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    ev.add_argument("--json", metavar="FILE", help="also write the results as JSON")

    pr = sub.add_parser(
        "predict",
        help="classify image files (any format Pillow reads), .npy or IDX stacks",
        description="Classify images. Each image is converted to the model's input: palette "
        "images to RGB, 16-bit images scaled by 65535, transparent pixels composited on white, "
        "colour to grey with luma (0.299 R + 0.587 G + 0.114 B) or grey to RGB by repetition, "
        "then resized to the model's H x W with a bilinear filter (aspect ratio not kept). "
        "Every file is processed; a bad file prints one error line and the exit code is 2.",
    )
    pr.add_argument("model_path", metavar="MODEL.npz")
    pr.add_argument("files", nargs="+", metavar="FILE")
    pr.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    pr.add_argument("--top", type=int, default=3, help="probabilities to show per image")
    pr.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="invert pixel values (1 - x): auto inverts, with a warning, an image whose "
        "background (median border pixel) is light when the model was trained on light-on-"
        "dark images (MNIST digits), or dark when trained on dark-on-light ones",
    )
    pr.add_argument("--json", action="store_true", help="print the results as JSON")

    info = sub.add_parser("info", help="version, backend and why, device, BLAS threads")
    info.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")

    bench = sub.add_parser("bench", help="training/inference throughput on synthetic data")
    bench.add_argument(
        "--model", default="reference", help=f"built-in name {sorted(BUILTIN)} or JSON file"
    )
    bench.add_argument("--batch-size", type=int, nargs="+", default=[128])
    bench.add_argument("--infer-batch-size", type=int, default=1000)
    bench.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    bench.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    bench.add_argument("--no-profile", action="store_true", help="skip the per-layer breakdown")
    bench.add_argument("--json", metavar="FILE", help="write the results as JSON")

    export = sub.add_parser("export", help="write a model as ONNX (opset 17) for ONNX Runtime")
    export.add_argument("model_path", metavar="MODEL.npz")
    export.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="the .onnx file (default: MODEL.onnx beside MODEL.npz)",
    )
    export.add_argument(
        "--probabilities", action="store_true", help="add a softmax output 'probabilities'"
    )
    export.add_argument(
        "--check",
        action="store_true",
        help="run the file in ONNX Runtime on random inputs and print the largest difference",
    )

    rep = sub.add_parser("report", help="pictures of a run: curves, confusion, filters, mistakes")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'gpucnn train'")
    rep.add_argument("--data-dir")
    rep.add_argument("--no-download", action="store_true")
    rep.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    return parser


# ---------------------------------------------------------------------- train
# Flags that describe a run: given with --resume they would change it, so they are refused.
PREPROCESSING_SAMPLE = 512  # training images whose borders tell the background polarity

RUN_FLAGS = (
    "dataset", "model", "batch_size", "lr", "optimizer", "momentum", "nesterov", "weight_decay",
    "schedule", "clip_norm", "val_fraction", "patience", "dtype", "seed", "out", "overwrite",
)  # fmt: skip
TRAIN_DEFAULTS = {
    "optimizer": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
    "val_fraction": 0.1, "dtype": "float32", "seed": 0,
}  # fmt: skip


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
        from .report import require_matplotlib

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
        earlier = runfolder.earlier_results(out)
        if earlier and not args.overwrite:
            raise UsageError(
                f"--out {out} holds an earlier run ({', '.join(earlier)}); pass --overwrite to "
                f"replace it, --resume {out} to continue it, or choose another --out"
            )
    runfolder.prepare(out, "--resume" if checkpoint is not None else "--out")
    stack.enter_context(runfolder.locked(out, report=lambda line: print(line, flush=True)))
    runfolder.remove_stale_temporaries(out)


def _train(
    args: argparse.Namespace,
    run: dict[str, Any],
    out: Path,
    checkpoint: Checkpoint | None,
    comm: MPICommunicator | None = None,
) -> int:
    root = comm is None or comm.is_root
    data = _load_run_data(run, download=not args.no_download, warn=root)
    _check_split(run["val_fraction"], len(data.x_train))
    (x_fit, y_fit), (x_val, y_val) = train_val_split(
        data.x_train, data.y_train, run["val_fraction"], run["seed"] + 1
    )
    # the split's arrays hold the training images now; a sample is all that is read later
    # (the preprocessing record), and dropping the rest spares a copy of the set (188 MB
    # for MNIST) for the whole run
    sample = np.array(data.x_train[:PREPROCESSING_SAMPLE], dtype=np.float32)
    data = dataclasses.replace(data, x_train=sample, y_train=data.y_train[: len(sample)])
    if checkpoint is None:
        model = build_model(run, data.input_shape, data.num_classes, backend=args.backend)
    else:  # the checkpoint holds the architecture: no file outside the run folder is read
        model = _model_from_checkpoint(checkpoint, run, data, args.backend, out)
    trainer = _build_trainer(run, model, out, progress=args.progress, validation=len(x_val) > 0)
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
        _write_report(out, model, metrics, data)
    return 0


def _load_run_data(run: dict[str, Any], download: bool, warn: bool) -> Dataset:
    """The run's dataset: a named one, or the user's own data at ``run["data"]``."""
    if not run.get("data"):
        return load_dataset(run["dataset"], run.get("data_dir"), download, run["seed"])

    def on_skip(path: str, reason: str) -> None:
        if warn:
            print(f"gpucnn: warning: skipped {path}: {reason}", file=sys.stderr, flush=True)

    return load_data(
        run["data"],
        image_size=run.get("image_size"),
        channels=run.get("channels"),
        test_fraction=run.get("test_fraction", 0.2),
        seed=run["seed"],
        stream=run.get("stream"),
        on_skip=on_skip,
    )


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
        "background": "light" if _border_median(sample) > 0.5 else "dark",
        "classes": list(data.classes),
    }


def _border_median(images: np.ndarray) -> float:
    """The median of the outermost ring of pixels of (N, C, H, W) images (their background)."""
    ring = np.concatenate(
        [
            images[..., 0, :].ravel(),
            images[..., -1, :].ravel(),
            images[..., :, 0].ravel(),
            images[..., :, -1].ravel(),
        ]
    )
    return float(np.median(ring)) if ring.size else 0.0


def _check_train_flags(args: argparse.Namespace) -> None:
    from .functional._cpu_threads import cpu_threads

    cpu_threads()  # a bad GPUCNN_CPU_THREADS is refused before any data is read
    if args.data and (args.dataset or args.data_dir):
        raise UsageError("--data cannot be combined with --dataset or --data-dir")
    if not args.data and (args.image_size or args.channels or args.stream is not None):
        raise UsageError("--image-size, --channels and --stream apply to --data only")
    if args.image_size and min(args.image_size) < 1:
        raise UsageError(f"--image-size must be >= 1 pixel; received {args.image_size}")
    if args.augment_shift < 0:
        raise UsageError(f"--augment-shift must be >= 0; received {args.augment_shift}")
    if not 0 < args.test_fraction < 1:
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
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer; received {args.seed}")
    if args.patience is not None and args.patience < 1:
        raise UsageError(f"--patience must be >= 1; received {args.patience}")
    if args.resume:
        given = [f for f in RUN_FLAGS if getattr(args, f) not in (None, False)]
        if given:
            names = ", ".join("--" + f.replace("_", "-") for f in given)
            raise UsageError(
                f"--resume continues a run with its own settings; {names} would change it: "
                "drop them, or start a new run with --out (only --epochs, --data-dir, "
                "--no-download, --backend, --progress and --report go with --resume)"
            )
    elif args.patience is not None and args.val_fraction == 0:
        raise UsageError("--patience needs validation data; received --val-fraction 0")


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
    global _COMMUNICATOR
    _COMMUNICATOR = MPICommunicator()
    return _COMMUNICATOR


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
        if args.epochs is not None:
            run["epochs"] = args.epochs
        if args.data_dir is not None:
            run["data_dir"] = str(Path(args.data_dir).resolve())
        return run, out, checkpoint
    settings = {k: getattr(args, k) for k in TRAIN_DEFAULTS}
    settings = {k: TRAIN_DEFAULTS[k] if v is None else v for k, v in settings.items()}
    model = args.model
    if model is not None and model not in BUILTIN:
        model = str(Path(model).resolve())
    own = (
        {
            "data": str(Path(args.data).resolve()),
            "image_size": args.image_size,
            "channels": args.channels,
            "test_fraction": args.test_fraction,
            "stream": args.stream,
        }
        if args.data
        else {}
    )
    run = run_config(
        "custom" if args.data else args.dataset or "digits",
        **own,
        augment_shift=args.augment_shift,
        augment_flip=args.augment_flip,
        data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else None,
        model=model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        clip_norm=args.clip_norm,
        patience=args.patience,
        **settings,
    )
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(args.data).stem if args.data else run["dataset"]
    default_out = Path("runs") / f"{name}-{Path(run['model']).stem}-{stamp}"
    return run, Path(args.out) if args.out else default_out, None


def _build_trainer(
    run: dict[str, Any], model: Sequential, out: Path, progress: bool | None, validation: bool
) -> Trainer:
    callbacks = (
        [EarlyStopping("val_accuracy", patience=run["patience"])]
        if run["patience"] and validation
        else []
    )
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


# ---------------------------------------------------------------------- evaluate / predict
def cmd_evaluate(args: argparse.Namespace) -> int:
    model, checkpoint = load_model(args.model_path, backend=args.backend)
    run = checkpoint.meta.get("run") or {}
    if run.get("data") and not args.dataset:  # the user's own data: its seeded test split
        data = _load_run_data(run, download=False, warn=False)
    else:
        name = args.dataset or run.get("dataset") or "digits"
        seed = run.get("seed", 0) if name == run.get("dataset") else 0
        data = load_dataset(name, args.data_dir or run.get("data_dir"), not args.no_download, seed)
    if model.input_shape != data.input_shape or model.output_shape != (data.num_classes,):
        raise UsageError(
            f"{args.model_path}: the model takes {model.input_shape} to {model.output_shape}; "
            f"{data.name} has images {data.input_shape} and {data.num_classes} classes "
            "(choose the matching --dataset)"
        )
    report = classification_report(data, model.predict(data.x_test))
    _print_classification_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def classification_report(data: Dataset, predictions: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix of test predictions."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(data.num_classes))
    confusion = confusion_matrix(data.y_test, predictions, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        data.y_test, predictions, labels=labels, zero_division=0
    )
    return {
        "dataset": data.name,
        "accuracy": float(np.mean(predictions == data.y_test)),
        "per_class_accuracy": recall.tolist(),  # the share of each true class found
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "confusion_matrix": confusion.tolist(),
        "classes": data.classes,
    }


def _print_classification_report(report: dict[str, Any]) -> None:
    confusion = np.array(report["confusion_matrix"])
    print(
        f"{report['dataset']} test set: {confusion.sum()} images, accuracy {report['accuracy']:.4f}"
    )
    width = max(len(c) for c in report["classes"])
    print(f"{'class':<{width}}  precision  recall     f1  support")
    for i, name in enumerate(report["classes"]):
        print(
            f"{name:<{width}}  {report['precision'][i]:9.3f}  {report['recall'][i]:6.3f}  "
            f"{report['f1'][i]:5.3f}  {report['support'][i]:7d}"
        )
    print("confusion matrix (rows: true, columns: predicted):")
    cell = max(len(str(confusion.max())), 3)
    print(" " * 5 + " ".join(f"{i:>{cell}}" for i in range(len(confusion))))
    for i, row in enumerate(confusion):
        print(f"{i:>4} " + " ".join(f"{v:>{cell}}" for v in row))


def cmd_predict(args: argparse.Namespace) -> int:
    model, checkpoint = load_model(args.model_path, backend=args.backend)
    if len(model.input_shape) != 3:
        raise ImageError(
            f"expected a model that takes (C, H, W) images; received input shape {model.input_shape}"
        )
    if args.top < 1:
        raise UsageError(f"--top must be >= 1; received {args.top}")
    prep = _model_preprocessing(checkpoint, model)
    results, failed, pending = [], 0, []
    for path in args.files:
        try:
            images, inverted = _prepare_images(path, model.input_shape, prep, args.invert)
        except USER_ERRORS as exc:
            failed += 1
            failed += _predict_batch(model, pending, prep, args, results)  # keep the file order
            message = " ".join(str(exc).split())
            if not message.startswith(str(path)):
                message = f"{path}: {message}"
            print(f"gpucnn: error: {message}", file=sys.stderr, flush=True)
            results.append({"file": str(path), "error": message})
            continue
        pending.append((path, images, inverted))
        if sum(len(p[1]) for p in pending) >= model.inference_batch_size:
            failed += _predict_batch(model, pending, prep, args, results)
    failed += _predict_batch(model, pending, prep, args, results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 2 if failed else 0


def _predict_batch(model, pending: list, prep: dict[str, Any], args, results: list) -> int:
    """Classify the images of the ``pending`` files in one pass; print and record each.

    Returns the number of files whose output is not finite (each reported on one line).
    """
    if not pending:
        return 0
    probs = model.predict_proba(np.concatenate([images for _, images, _ in pending]))
    start, failed = 0, 0
    for path, images, inverted in pending:
        rows = probs[start : start + len(images)]
        start += len(images)
        bad = np.flatnonzero(~np.all(np.isfinite(rows), axis=1))
        if bad.size:
            failed += 1
            where = path if len(rows) == 1 else f"{path}[{int(bad[0])}]"
            message = (
                f"{where}: the model's output is not finite for this input (input values "
                f"{float(images.min()):.3g}..{float(images.max()):.3g} after preprocessing; "
                "expected images scaled to [0, 1])"
            )
            print(f"gpucnn: error: {message}", file=sys.stderr, flush=True)
            results.append({"file": str(path), "error": message})
            continue
        for i, row in enumerate(rows):
            top = np.argsort(row)[::-1][: args.top]
            result = {
                "file": str(path) if len(images) == 1 else f"{path}[{i}]",
                "label": int(top[0]),
                "class": _class_name(prep, int(top[0])),
                "probability": float(row[top[0]]),
                "top": [
                    {
                        "label": int(c),
                        "class": _class_name(prep, int(c)),
                        "probability": float(row[c]),
                    }
                    for c in top
                ],
                "inverted": bool(inverted[i]),
            }
            results.append(result)
            if not args.json:
                print(
                    f"{result['file']}: {result['class']} (label {result['label']}, {result['probability']:.3f}) | "
                    + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top"]),
                    flush=True,
                )
    pending.clear()
    return failed


def _model_preprocessing(checkpoint: Checkpoint, model: Sequential) -> dict[str, Any]:
    """The saved preprocessing; for models saved before it existed, what their data implies."""
    prep = dict(checkpoint.meta.get("preprocessing") or {})
    if not prep:
        run = checkpoint.meta.get("run") or {}
        known = run.get("dataset") in DATASETS
        classes = load_dataset_classes(run.get("dataset")) if known else None
        prep = {"mean": 0.0, "std": 1.0, "background": "dark" if known else None}
        if classes:
            prep["classes"] = classes
    return prep


def load_dataset_classes(name: str) -> list[str] | None:
    from .data.mnist import FASHION_MNIST, MNIST

    return {
        "digits": list(MNIST.classes),
        **{s.name: list(s.classes) for s in (MNIST, FASHION_MNIST)},
    }.get(name)


def _class_name(prep: dict[str, Any], label: int) -> str:
    classes = prep.get("classes") or []
    return str(classes[label]) if label < len(classes) else str(label)


def _prepare_images(
    path: str, input_shape: tuple[int, ...], prep: dict[str, Any], invert: str
) -> tuple[np.ndarray, np.ndarray]:
    """One file's images as the model's inputs, and which of them were inverted."""
    channels, height, width = input_shape
    images = load_images(path, channels, (height, width))  # image files come resized
    images = fit_channels(images, channels, str(path))
    if images.shape[2:] != (height, width):  # arrays are model inputs: never resized silently
        raise ImageError(
            f"{path}: expected {height}x{width} images for this model; received "
            f"{images.shape[2]}x{images.shape[3]} (image files are resized, .npy and IDX arrays are not)"
        )
    if not np.isfinite(images).all():
        raise ImageError(f"{path}: expected finite input values; received NaN or inf")
    if invert == "yes":
        flags = np.ones(len(images), bool)
    elif (
        invert == "no"
        or prep.get("background") not in ("dark", "light")
        or not ((images >= 0.0) & (images <= 1.0)).all()  # 1 - x is an inversion in [0, 1] only
    ):
        flags = np.zeros(len(images), bool)
    else:
        light = np.array([_border_median(image[None]) > 0.5 for image in images])
        flags = light if prep["background"] == "dark" else ~light
        if flags.any():
            trained = "light-on-dark" if prep["background"] == "dark" else "dark-on-light"
            print(
                f"gpucnn: warning: {path}: looks {'dark-on-light' if prep['background'] == 'dark' else 'light-on-dark'}"
                f" but the model was trained on {trained} images: inverted"
                + (f" {int(flags.sum())} of {len(flags)}" if len(flags) > 1 else "")
                + " (--invert no keeps it as is)",
                file=sys.stderr,
                flush=True,
            )
    images = np.where(flags[:, None, None, None], 1.0 - images, images).astype(np.float32)
    mean, std = float(prep.get("mean", 0.0)), float(prep.get("std", 1.0)) or 1.0
    if mean != 0.0 or std != 1.0:
        images = (images - mean) / std
    return images, flags


# ---------------------------------------------------------------------- info / bench
def cmd_info(args: argparse.Namespace) -> int:
    backend = select_backend(args.backend)
    details = {
        "gpucnn": __version__,
        "python": platform.python_version(),
        **device_info(backend),
        **blas_info(),
        "cpu_threads": _cpu_threads_line(),
    }
    for key, value in details.items():
        print(f"{key:>16}: {value}")
    return 0


def _cpu_threads_line() -> str:
    """The threads each NumPy op splits its images over, or why the setting is refused (a
    diagnostic command reports it rather than failing)."""
    from .functional._cpu_threads import cpu_threads

    try:
        return str(cpu_threads())
    except ValueError as exc:
        return f"refused: {exc}"


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import OPSET, compare_with_onnxruntime, export_onnx, require_onnx

    require_onnx()  # before loading the model: a missing extra is the likelier mistake
    model, _ = load_model(args.model_path, backend="numpy")
    output = Path(args.output) if args.output else Path(args.model_path).with_suffix(".onnx")
    export_onnx(model, output, probabilities=args.probabilities)
    outputs = "logits, probabilities" if args.probabilities else "logits"
    print(
        f"wrote {output} ({output.stat().st_size:,} bytes, ONNX opset {OPSET}): input "
        f"{('N', *model.input_shape)} float32 -> {outputs} {('N', *model.output_shape)}".replace(
            "'", ""
        )
    )
    if args.check:
        largest = compare_with_onnxruntime(model, output)
        print(f"ONNX Runtime vs gpucnn at batch 1 and 7: largest difference {largest:.2e}")
    return 0


# ---------------------------------------------------------------------- report
def _write_report(
    out: Path, model: Sequential | None, metrics: dict[str, Any], data: Dataset | None
) -> None:
    from .report import write_report

    test = (data.x_test, data.y_test) if data is not None else None
    report = write_report(out, model, metrics, test, data.classes if data is not None else None)
    for path in report.files.values():
        print(f"  {path} ({path.stat().st_size / 1024:,.0f} KiB)")
    for note in report.notes:
        print(f"  left out {note}")
    print(
        f"report written to {report.folder / 'index.html'} in {report.seconds:.1f} s "
        f"({report.predict_seconds:.1f} s of it predicting the test set)"
    )


def cmd_report(args: argparse.Namespace) -> int:
    from .report import require_matplotlib

    require_matplotlib()
    folder = Path(args.run_dir)
    if not (folder / "metrics.json").is_file():
        raise UsageError(f"{folder}: expected a run folder with metrics.json; found none")
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{folder / 'metrics.json'} is not valid JSON ({exc})") from None
    model = None
    if (folder / "model.npz").is_file():
        model, _ = load_model(folder / "model.npz", backend=args.backend)
    run = metrics.get("run") or {}
    data = None
    if model is not None and metrics.get("dataset") in DATASETS:
        data = load_dataset(
            metrics["dataset"],
            args.data_dir or run.get("data_dir"),
            not args.no_download,
            run.get("seed", 0),
        )
    _write_report(folder, model, metrics, data)
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "info": cmd_info,
    "bench": cmd_bench,
    "export": cmd_export,
    "report": cmd_report,
}


def _error(line: str) -> None:
    """Print an error line on stderr; in a distributed run only rank 0 prints the errors
    that every rank meets together (same flags, all-reduced training decisions)."""
    if _COMMUNICATOR is None or _COMMUNICATOR.is_root:
        print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    global _COMMUNICATOR
    _COMMUNICATOR = None
    try:
        args = build_parser().parse_args(argv)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            code = COMMANDS[args.command](args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (`gpucnn evaluate ... | head -1`)
        _silence_stdout()
        return 128 + 13  # as a tool killed by SIGPIPE
    except UsageError as exc:
        _error(f"gpucnn: error: {exc}")
        return 2
    except TrainingInterrupted as exc:
        resume = (
            f"; resume with: gpucnn train --resume {exc.checkpoint.parent}"
            if exc.checkpoint
            else ""
        )
        _error(f"gpucnn: {exc}{resume}")
        if _COMMUNICATOR is not None and _COMMUNICATOR.size > 1:
            # mpirun is ending the job: MPI_Finalize at exit would wait for it until SIGKILL
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + exc.signum)
        return 128 + exc.signum
    except TrainingError as exc:
        _error(f"gpucnn: error: {exc}")
        return 3
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split())
        if _COMMUNICATOR is not None and _COMMUNICATOR.size > 1:
            # perhaps this rank alone failed, and the others would wait for it forever
            print(f"gpucnn: error on rank {_COMMUNICATOR.rank}: {message}", file=sys.stderr)
            sys.stderr.flush()
            _COMMUNICATOR.abort(2)
        print(f"gpucnn: error: {message}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        detail = " ".join(str(exc).split()) or "an allocation failed"
        print(
            f"gpucnn: error: out of memory: {detail}; use a smaller --batch-size or a smaller model",
            file=sys.stderr,
        )
        return 2
    except RecursionError:
        print("gpucnn: error: input nested too deeply to read", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpucnn: interrupted", file=sys.stderr)
        return 130
    except Exception:
        if _COMMUNICATOR is not None and _COMMUNICATOR.size > 1:
            traceback.print_exc()  # a bug on one rank: end the job rather than leave it waiting
            sys.stderr.flush()
            _COMMUNICATOR.abort(1)
        raise


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
