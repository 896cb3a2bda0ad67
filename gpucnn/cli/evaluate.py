"""``gpucnn evaluate``: accuracy, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import BACKEND_CHOICES
from ..checkpoint import load_model
from ..data import DATASETS, Dataset, load_dataset
from ..model import model_file
from .common import UsageError, add_plugin_flag, load_run_data
from .outputs import check_output, write_output


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` and its flags to the subcommands ``sub``."""
    ev = sub.add_parser(
        "evaluate",
        help="accuracy, per-class precision/recall/F1 and confusion matrix",
        description="Evaluate a saved model on the test split of its dataset (the one it was "
        "trained on, or --dataset): print the accuracy, each class's precision, recall, F1 and "
        "support, and the confusion matrix (rows: true, columns: predicted). Your own data "
        "(--data runs) is evaluated on its seeded test hold-out.",
    )
    ev.add_argument("model_path", metavar="MODEL.npz|RUN", help="a model file or a run folder")
    add_plugin_flag(ev)
    ev.add_argument(
        "--dataset", choices=DATASETS, help="default: the dataset the model was trained on"
    )
    ev.add_argument("--data-dir")
    ev.add_argument("--no-download", action="store_true")
    ev.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    ev.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ev.add_argument(
        "--overwrite",
        action="store_true",
        help="let --json replace a model, checkpoint or run file (refused otherwise)",
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    args.model_path = model_file(args.model_path)  # a run folder means its model.npz
    if args.json:  # refused before the model and the data are read
        check_output(args.json, "--json", [args.model_path], args.overwrite)
    model, checkpoint = load_model(args.model_path, backend=args.backend)
    run = checkpoint.meta.get("run") or {}
    if args.json and run.get("data") and not args.dataset:
        check_output(args.json, "--json", [run["data"]], args.overwrite)
    if run.get("data") and not args.dataset:  # the user's own data: its seeded test split
        data = load_run_data(run, download=False, warn=False)
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
        write_output(Path(args.json), json.dumps(report, indent=2))
    return 0


def classification_report(data: Dataset, predictions: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix of test predictions.

    The figures are scikit-learn's (``confusion_matrix``, ``precision_recall_fscore_support``
    with ``zero_division=0``; a test checks they agree), computed here: importing scikit-learn
    would add 1.5-2 s to every training command.
    """
    K = data.num_classes
    truth, predicted = np.asarray(data.y_test, dtype=np.int64), np.asarray(predictions, np.int64)
    for name, values in (("labels", truth), ("predictions", predicted)):
        if values.size and (values.min() < 0 or values.max() >= K):
            raise ValueError(
                f"classification_report: expected {name} in [0, {K}); received values from "
                f"{values.min()} to {values.max()}"
            )
    confusion = np.bincount(truth * K + predicted, minlength=K * K).reshape(K, K)
    hits = np.diag(confusion).astype(np.float64)
    support, claimed = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(hits, claimed, out=np.zeros(K), where=claimed > 0)
    recall = np.divide(hits, support, out=np.zeros(K), where=support > 0)
    # F1 = 2 TP / (2 TP + FP + FN), and FP + FN + 2 TP = predicted + true counts of the class
    f1 = np.divide(2 * hits, support + claimed, out=np.zeros(K), where=support + claimed > 0)
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
