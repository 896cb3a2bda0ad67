"""Seconds from the command's start to a trained model: ``gpucnn train`` run as a user runs it.

Each run is a fresh process, timed from its start to its exit: imports, data loading, kernel
compilation, CUDA-graph recording, training, the test evaluation and writing the run folder are
all inside. The first run starts with an empty CuPy kernel cache (``CUPY_CACHE_DIR`` in a new
temporary folder), so it compiles every kernel; the next runs share that cache, as a user's
second command does. Beside the wall time it reports the epochs' own training time (the sum of
``history.time_s``), the test accuracy and whether it reached ``--target``.

    python benchmarks/time_to_accuracy.py --backend cupy --data-dir ../shared/data/mnist
    python benchmarks/time_to_accuracy.py --runs 3 --json tta.json -- --epochs 2 --batch-size 256
    python benchmarks/time_to_accuracy.py --dataset digits --target 0.97 --backend numpy

Arguments after ``--`` go to ``gpucnn train`` as they are (the default trains ``reference``
for 3 epochs, the command's own defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(command: list[str], env: dict[str, str], out: Path) -> dict:
    """Run ``command`` (which writes ``out``) once; its wall time and what metrics.json says."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"gpucnn train failed (exit {done.returncode}): {' | '.join(tail)}")
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    return {
        "wall_s": wall,
        "training_s": sum(history["time_s"]),
        "epochs": metrics["epochs"],
        "test_accuracy": metrics["test_accuracy"],
        "train_images_per_second": metrics["train_images_per_second"],
        "backend": metrics["backend"],
    }


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; received {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", help="passed to gpucnn train (default: its download cache)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--target", type=float, default=0.99, help="test accuracy to reach")
    parser.add_argument("--runs", type=positive_int, default=2, help="runs; the first compiles")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("train_args", nargs="*", help="after --: more gpucnn train flags")
    args = parser.parse_args()
    if any(a == "--out" or a.startswith("--out=") for a in args.train_args):
        parser.error("each run writes its own folder: leave --out out of the gpucnn train flags")

    scratch = Path(tempfile.mkdtemp(prefix="gpucnn-tta-"))
    try:
        runs = time_runs(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "command": " ".join(
            ["gpucnn train", "--dataset", args.dataset, "--backend", args.backend]
            + (["--data-dir", args.data_dir] if args.data_dir else [])
            + args.train_args
        ),
        "target": args.target,
        "runs": runs,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def time_runs(args: argparse.Namespace, scratch: Path) -> list[dict]:
    """``args.runs`` runs of the command, with one kernel cache (empty at first) in ``scratch``."""
    env = dict(os.environ, CUPY_CACHE_DIR=str(scratch / "kernel-cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    runs = []
    for index in range(args.runs):
        out = scratch / f"run{index}"
        command = [
            sys.executable, "-m", "gpucnn", "train", "--dataset", args.dataset,
            "--backend", args.backend, "--out", str(out), *args.train_args,
        ]  # fmt: skip
        if args.data_dir:
            command += ["--data-dir", args.data_dir, "--no-download"]
        result = one_run(command, env, out)
        result["kernel_cache"] = "empty" if index == 0 else "warm"
        result["reached_target"] = result["test_accuracy"] >= args.target
        runs.append(result)
        print(
            f"run {index + 1} (kernel cache {result['kernel_cache']}): {result['wall_s']:.2f} s "
            f"from start to exit, {result['training_s']:.2f} s in {result['epochs']} epochs of "
            f"training, test accuracy {result['test_accuracy']:.4f} "
            f"({'reached' if result['reached_target'] else 'short of'} {args.target}), "
            f"backend {result['backend']}",
            flush=True,
        )
    return runs


if __name__ == "__main__":
    main()
