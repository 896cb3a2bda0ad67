"""The ``gpucnn`` command: train | evaluate | predict | info | bench | export | report.

One module per subcommand adds its flags (``add_parser``) and runs it (``cmd_<name>``);
``common`` holds what they share. Exit codes: 0 success; 2 a user error (bad flag, missing
or corrupt file, bad architecture or checkpoint), printed as one line on stderr; 3 training
diverged; 130/143 interrupted by SIGINT/SIGTERM after saving a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import numpy as np

from .. import __version__
from ..trainer import TrainingError, TrainingInterrupted
from . import bench, evaluate, export, info, predict, report, train
from .common import STATE, USER_ERRORS, Parser, UsageError, error, import_plugins
from .evaluate import classification_report
from .predict import load_dataset_classes
from .train import preprocessing

SUBCOMMANDS = (train, evaluate, predict, info, bench, export, report)  # in --help order
COMMANDS = {
    "train": train.cmd_train,
    "evaluate": evaluate.cmd_evaluate,
    "predict": predict.cmd_predict,
    "info": info.cmd_info,
    "bench": bench.cmd_bench,
    "export": export.cmd_export,
    "report": report.cmd_report,
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; its errors raise :class:`UsageError` (one line)."""
    parser = Parser(
        prog="gpucnn", description="Train and run small CNNs on NumPy (CPU) or CuPy (GPU)."
    )
    parser.add_argument("--version", action="version", version=f"gpucnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    STATE.communicator = None
    args = None
    try:
        args = build_parser().parse_args(argv)
        import_plugins(getattr(args, "plugin", None) or [])  # before any architecture is read
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            code = COMMANDS[args.command](args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (`gpucnn evaluate ... | head -1`)
        _silence_stdout()
        return 128 + 13  # as a tool killed by SIGPIPE
    except UsageError as exc:
        error(f"gpucnn: error: {exc}")
        return 2
    except TrainingInterrupted as exc:
        resume = (
            f"; resume with: gpucnn train --resume {exc.checkpoint.parent}"
            if exc.checkpoint
            else ""
        )
        error(f"gpucnn: {exc}{resume}")
        if STATE.communicator is not None and STATE.communicator.size > 1:
            # mpirun is ending the job: MPI_Finalize at exit would wait for it until SIGKILL
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + exc.signum)
        return 128 + exc.signum
    except TrainingError as exc:
        error(f"gpucnn: error: {exc}")
        return 3
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split())
        if "expected a layer type in" in message and not getattr(args, "plugin", None):
            message += (
                " (a layer of your own: --plugin FILE.py imports the module that registers it, or "
                "install a package that declares it under the gpucnn.layers entry points)"
            )
        if STATE.communicator is not None and STATE.communicator.size > 1:
            # perhaps this rank alone failed, and the others would wait for it forever
            print(f"gpucnn: error on rank {STATE.communicator.rank}: {message}", file=sys.stderr)
            sys.stderr.flush()
            STATE.communicator.abort(2)
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
        if STATE.communicator is not None and STATE.communicator.size > 1:
            traceback.print_exc()  # a bug on one rank: end the job rather than leave it waiting
            sys.stderr.flush()
            STATE.communicator.abort(1)
        raise


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


__all__ = [
    "COMMANDS",
    "USER_ERRORS",
    "UsageError",
    "build_parser",
    "classification_report",
    "load_dataset_classes",
    "main",
    "preprocessing",
]
