"""``gpucnn predict``: classify image files, .npy or IDX stacks with a saved model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from ..backend import BACKEND_CHOICES
from ..checkpoint import Checkpoint, load_model
from ..data import DATASETS
from ..data.images import ImageError, fit_channels, load_images
from ..model import Sequential, model_file
from .common import USER_ERRORS, UsageError, add_plugin_flag, border_median


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``predict`` and its flags to the subcommands ``sub``."""
    pr = sub.add_parser(
        "predict",
        help="classify image files (any format Pillow reads), .npy or IDX stacks",
        description="Classify images. Each image is converted to the model's input: palette "
        "images to RGB, 16-bit images scaled by 65535, transparent pixels composited on white, "
        "colour to grey with luma (0.299 R + 0.587 G + 0.114 B) or grey to RGB by repetition, "
        "then resized to the model's H x W with a bilinear filter (aspect ratio not kept). "
        "Every file is processed; a bad file prints one error line and the exit code is 2.",
    )
    pr.add_argument("model_path", metavar="MODEL.npz|RUN", help="a model file or a run folder")
    add_plugin_flag(pr)
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


def cmd_predict(args: argparse.Namespace) -> int:
    model, checkpoint = load_model(model_file(args.model_path), backend=args.backend)
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
    from ..data.mnist import FASHION_MNIST, MNIST

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
        light = np.array([border_median(image[None]) > 0.5 for image in images])
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
