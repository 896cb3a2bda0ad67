"""Accuracy on scikit-learn's digits: bare ``gpucnn train`` over seeds, and cross-validation.

Runs, one after another, on the machine's CPU:

* ``gpucnn train --seed S --backend numpy`` for each seed (the digits recipe: ``small_bn``),
  reporting each run's test accuracy and wall time (the command's own process, imports
  included);
* ``cross_val_score(CNNClassifier(random_state=S), X / 16, y, cv=5)`` (the estimator's
  defaults on the flat 64-column rows, scikit-learn's unshuffled folds) for each seed, with
  ``SVC()`` beside it as the classical anchor.

    python benchmarks/digits_targets.py --seeds 0 1 2 3 4 --json digits.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.svm import SVC

from gpucnn.sklearn import CNNClassifier


def train_runs(seeds: list[int]) -> list[dict[str, float]]:
    runs = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "gpucnn", "train", "--seed", str(seed)]
            command += ["--backend", "numpy", "--no-progress", "--out", out, "--overwrite"]
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            wall = time.perf_counter() - start
            accuracy = json.loads((Path(out) / "metrics.json").read_text())["test_accuracy"]
        runs.append({"seed": seed, "test_accuracy": accuracy, "wall_s": round(wall, 2)})
        print(f"gpucnn train --seed {seed}: test accuracy {accuracy:.4f}, {wall:.1f} s", flush=True)
    return runs


def cross_validation(seeds: list[int]) -> dict[str, dict]:
    X, y = load_digits(return_X_y=True)
    X = X / 16
    estimators = {"SVC()": SVC()}
    for seed in seeds:
        estimators[f"CNNClassifier(random_state={seed})"] = CNNClassifier(
            backend="numpy", random_state=seed
        )
    results = {}
    for name, estimator in estimators.items():
        start = time.perf_counter()
        scores = cross_val_score(estimator, X, y, cv=5)
        wall = time.perf_counter() - start
        results[name] = {
            "folds": [round(float(s), 4) for s in scores],
            "mean": round(float(scores.mean()), 4),
            "wall_s": round(wall, 1),
        }
        print(
            f"{name}: {np.round(scores, 4).tolist()} mean {scores.mean():.4f}, {wall:.1f} s",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--no-cv", action="store_true", help="skip the cross-validation")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    report: dict = {"train": train_runs(args.seeds)}
    accuracies = [run["test_accuracy"] for run in report["train"]]
    if accuracies:
        report["train_median"] = statistics.median(accuracies)
        print(f"median {report['train_median']:.4f}, lowest {min(accuracies):.4f}")
    if not args.no_cv:
        report["cross_val_score"] = cross_validation(args.seeds)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
