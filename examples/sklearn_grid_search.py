"""Tune a gpucnn CNN with scikit-learn: a Pipeline, GridSearchCV over lr and epochs, then
cross_val_score of the best settings.

Run:  python examples/sklearn_grid_search.py [--jobs N]
Uses scikit-learn's 8x8 digits (offline) on whichever backend is available.
"""

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from gpucnn.sklearn import CNNClassifier


def scale_pixels(X):
    """Pixel values 0..16 -> [0, 1]."""
    return X / 16.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel fits (joblib n_jobs)")
    args = parser.parse_args()

    X, y = load_digits(return_X_y=True)  # X: (1797, 64) pixel rows, y: (1797,) digits
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.2, stratify=y, random_state=0
    )
    pipe = Pipeline(
        [
            ("scale", FunctionTransformer(scale_pixels)),
            ("cnn", CNNClassifier(image_shape=(1, 8, 8), random_state=0)),  # rows -> (1, 8, 8)
        ]
    )
    grid = {"cnn__lr": [0.01, 0.05, 0.1], "cnn__epochs": [5, 10]}
    search = GridSearchCV(pipe, grid, cv=3, n_jobs=args.jobs)
    start = time.perf_counter()
    search.fit(X_train, y_train)
    elapsed = time.perf_counter() - start
    settings = len(search.cv_results_["params"])
    print(
        f"grid search: {settings * search.n_splits_ + 1} fits ({search.n_splits_} folds x "
        f"{settings} settings + refit) in {elapsed:.1f} s with n_jobs={args.jobs}"
    )
    for params, score in zip(
        search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
    ):
        print(
            f"  lr {params['cnn__lr']:<5} epochs {params['cnn__epochs']:<3} cv accuracy {score:.4f}"
        )
    print(f"best {search.best_params_}: test accuracy {search.score(X_test, y_test):.4f}")

    best = search.best_estimator_
    start = time.perf_counter()
    scores = cross_val_score(best, X, y, cv=5, n_jobs=args.jobs)
    print(
        f"cross_val_score, 5 folds on all digits: {np.round(scores, 4).tolist()} "
        f"mean {scores.mean():.4f} ({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()
