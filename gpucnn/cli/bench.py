"""``gpucnn bench``: training and inference throughput on synthetic data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..architectures import BUILTIN
from ..backend import BACKEND_CHOICES
from ..precision import MIXED
from .outputs import check_output, write_output


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its flags to the subcommands ``sub``."""
    bench = sub.add_parser("bench", help="training/inference throughput on synthetic data")
    bench.add_argument(
        "--model", default="reference", help=f"built-in name {sorted(BUILTIN)} or JSON file"
    )
    bench.add_argument("--batch-size", type=int, nargs="+", default=[128])
    bench.add_argument("--infer-batch-size", type=int, default=1000)
    bench.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    bench.add_argument(
        "--precision",
        choices=MIXED,
        help="mixed precision (CuPy only; see gpucnn train --help); default: float32",
    )
    bench.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    bench.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    bench.add_argument("--no-profile", action="store_true", help="skip the per-layer breakdown")
    bench.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bench.add_argument(
        "--overwrite",
        action="store_true",
        help="let --json replace a model, checkpoint or run file (refused otherwise)",
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    if args.json:  # refused before minutes of measuring
        check_output(args.json, "--json", [args.model], args.overwrite)
    report = run_bench(args)
    if args.json:
        write_output(Path(args.json), json.dumps(report, indent=2))
    return 0
