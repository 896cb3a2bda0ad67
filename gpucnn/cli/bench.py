"""``gpucnn bench``: training and inference throughput on synthetic data."""

from __future__ import annotations

import argparse

from ..architectures import BUILTIN
from ..backend import BACKEND_CHOICES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its flags to the subcommands ``sub``."""
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


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    return run_bench(args)
