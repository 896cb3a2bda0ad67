"""``gpucnn report``: pictures of a run (curves, confusion, filters, mistakes)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..backend import BACKEND_CHOICES
from ..checkpoint import load_model
from ..data import DATASETS, Dataset, load_dataset
from ..model import Sequential
from .common import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` and its flags to the subcommands ``sub``."""
    rep = sub.add_parser("report", help="pictures of a run: curves, confusion, filters, mistakes")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'gpucnn train'")
    rep.add_argument("--data-dir")
    rep.add_argument("--no-download", action="store_true")
    rep.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")


def write_run_report(
    out: Path, model: Sequential | None, metrics: dict[str, Any], data: Dataset | None
) -> None:
    from ..report import write_report

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
    from ..report import read_metrics, require_matplotlib

    require_matplotlib()
    folder = Path(args.run_dir)
    if not (folder / "metrics.json").exists():  # a pipe there is named as one by read_metrics
        raise UsageError(f"{folder}: expected a run folder with metrics.json; found none")
    metrics = read_metrics(folder / "metrics.json")  # ReportError: one line naming the file
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
    write_run_report(folder, model, metrics, data)
    return 0
