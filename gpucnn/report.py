"""Pictures of a training run: curves, confusion matrix, first-layer filters, mistakes.

:func:`write_report` turns a run folder (``metrics.json`` and ``model.npz``, as ``gpucnn
train`` writes them) plus the run's test set into ``RUN_DIR/report/``:

``curves.png``
    loss and accuracy per epoch (training and validation) and the learning rate.
``confusion.png``
    the test confusion matrix with counts, per-class accuracy beside it.
``filters.png``
    the first convolution's F filters as a grid of KH x KW images.
``mistakes.png``
    misclassified test images, most confident first, with true and predicted label and the
    predicted probability.
``index.html``
    one self-contained page (pictures embedded as ``data:`` URIs) with the run's settings,
    final figures and the four pictures.
``report.json``
    the numbers behind the pictures (confusion matrix, per-class accuracy, mistakes).

What does not apply is left out and said: no test set means no confusion matrix (unless
``metrics.json`` holds one) and no mistakes; a model without convolutions has no filters.

matplotlib is an optional extra (``pip install "gpucnn[plot]"``). It is imported here only,
inside the drawing functions, and only its object-oriented API is used (``Figure`` with the
Agg canvas), so drawing never needs a display and never changes pyplot's global state.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import html
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from .backend import to_numpy
from .layers import Conv2D
from .model import Sequential
from .safe_read import read_json

PLOT_EXTRA = 'pip install "gpucnn[plot]"'
DPI = 100
# (width, height) in pixels of each picture; fixed, whatever the number of epochs or classes.
SIZES = {
    "curves.png": (1500, 450),
    "confusion.png": (1400, 640),
    "filters.png": (800, 800),
    "mistakes.png": (1200, 960),
}
MAX_MISTAKES = 32  # a 4 x 8 grid
MAX_FILTERS = 64  # an 8 x 8 grid


class ReportError(ValueError):
    """A report cannot be written (matplotlib missing, run folder incomplete)."""


@dataclass
class Report:
    """What :func:`write_report` wrote.

    Attributes
    ----------
    folder : the report folder.
    files : file name -> path, in the order written (``index.html`` and ``report.json`` last).
    notes : one sentence per picture left out, saying why.
    seconds : wall time of the whole report (predictions, drawing, writing).
    predict_seconds : the part of it spent predicting the test set.
    """

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    predict_seconds: float = 0.0


def _writable_folder(folder: Path) -> bool:
    """Whether ``folder`` exists or can be made, and can be written (as matplotlib checks)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return folder.is_dir() and os.access(folder, os.W_OK)


def _quiet_matplotlib_folders() -> None:
    """Point ``MPLCONFIGDIR`` at a temporary folder, before matplotlib is imported, when its
    default config or cache folder cannot be written (HOME read-only or missing): matplotlib
    would otherwise log "mkdir -p failed" and "is not a writable directory" lines on stderr
    before making such a folder itself. Only Linux/BSD defaults are known here."""
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return
    if not sys.platform.startswith(("linux", "freebsd")):
        return
    try:
        home = Path.home()
    except RuntimeError:  # no home folder at all
        defaults = None
    else:
        config = os.environ.get("XDG_CONFIG_HOME") or home / ".config"
        cache = os.environ.get("XDG_CACHE_HOME") or home / ".cache"
        defaults = [Path(config) / "matplotlib", Path(cache) / "matplotlib"]
    if defaults is not None and all(_writable_folder(f.resolve()) for f in defaults):
        return
    folder = tempfile.mkdtemp(prefix="gpucnn-matplotlib-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = folder


def read_metrics(path: str | Path) -> dict[str, Any]:
    """Read and check a run's ``metrics.json`` (bounded, UTF-8, the shape ``gpucnn train``
    writes; see :func:`check_metrics`).

    Raises
    ------
    ReportError naming ``path`` for a file that is not a regular file, too large, not UTF-8,
    not JSON, or not a metrics object.
    """
    metrics = read_json(path, "metrics file", error=ReportError)
    check_metrics(metrics, str(path))
    return metrics


def check_metrics(metrics: Any, source: str = "metrics") -> None:
    """Refuse ``metrics`` unless it has the shape of a ``metrics.json``: an object whose
    ``history`` maps names to per-epoch numbers (or nulls), whose ``run`` is an object with
    a text ``data_dir`` and an integer ``seed``, whose confusion matrix is a square table
    of counts. Absent entries are fine (the report leaves out what needs them).

    Raises
    ------
    ReportError naming ``source`` and the entry, expected vs received.
    """

    def refuse(entry: str, expected: str, value: Any) -> None:
        received = type(value).__name__ if not isinstance(value, (int, float, str)) else repr(value)
        raise ReportError(f"{source}: expected {entry} to be {expected}; received {received[:80]}")

    def number(v: Any) -> bool:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

    if not isinstance(metrics, dict):
        refuse("the file", "a JSON object", metrics)
    history = metrics.get("history")
    if history is not None:
        if not isinstance(history, dict):
            refuse("'history'", "an object of per-epoch lists", history)
        for key, values in history.items():
            if not isinstance(values, list) or not all(number(v) for v in values):
                bad = (
                    values
                    if not isinstance(values, list)
                    else next(v for v in values if not number(v))
                )
                refuse(f"history[{key!r}]", "a list of numbers", bad)
    run = metrics.get("run")
    if run is not None:
        if not isinstance(run, dict):
            refuse("'run'", "an object", run)
        if run.get("data_dir") is not None and not isinstance(run["data_dir"], str):
            refuse("run['data_dir']", "a folder name", run["data_dir"])
        seed = run.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            refuse("run['seed']", "a non-negative integer", seed)
    for key in ("dataset", "model", "backend"):
        if metrics.get(key) is not None and not isinstance(metrics[key], str):
            refuse(f"{key!r}", "a name", metrics[key])
    classes = metrics.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        refuse("'classes'", "a list of names", classes)
    confusion = metrics.get("confusion_matrix")
    if confusion is not None and not (
        isinstance(confusion, list)
        and all(
            isinstance(row, list)
            and len(row) == len(confusion)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row)
            for row in confusion
        )
    ):
        refuse("'confusion_matrix'", "a square table of counts", confusion)


def require_matplotlib() -> None:
    """Raise :class:`ReportError` naming the ``plot`` extra when matplotlib does not import."""
    _quiet_matplotlib_folders()
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as exc:
        raise ReportError(
            f"the report needs matplotlib, which is not installed ({exc}); {PLOT_EXTRA}"
        ) from None


# ---------------------------------------------------------------------- numbers
def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class, the diagonal over the row sums: (K, K) -> (K,) (0 for empty rows)."""
    confusion = np.asarray(confusion)
    return confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)


def first_conv_filters(model: Sequential) -> tuple[str, np.ndarray] | None:
    """Name and weight, shape (F, C, KH, KW), of the model's first Conv2D; None without one."""
    for layer in model.modules():
        if isinstance(layer, Conv2D):
            return layer.path, to_numpy(layer.weight.data).copy()
    return None


def _finite(values: Sequence[Any] | None) -> list[float]:
    """Per-epoch values as floats, NaN where missing (JSON null or NaN)."""
    return [float("nan") if v is None else float(v) for v in (values or [])]


def _has_values(values: list[float]) -> bool:
    return any(math.isfinite(v) for v in values)


# ---------------------------------------------------------------------- drawing
def _figure(name: str):
    _quiet_matplotlib_folders()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = SIZES[name]
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    with _naming(path):
        figure.savefig(path, dpi=DPI, format="png")  # no bbox_inches: the size stays SIZES[name]
    return path


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` (a full disk: "[Errno 28] No space left on
    device" names no file) into a :class:`ReportError` that names it."""
    try:
        yield
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None


def draw_curves(history: dict[str, Sequence[float]], path: Path) -> Path:
    """Loss, accuracy (training and validation) and learning rate per epoch -> ``path``."""
    figure = _figure("curves.png")
    axes = figure.subplots(1, 3)
    epochs = np.arange(1, len(_finite(history.get("loss"))) + 1)
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for prefix, label in (("", "training"), ("val_", "validation")):
            values = _finite(history.get(prefix + key))
            if _has_values(values):
                ax.plot(epochs[: len(values)], values, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    lr = _finite(history.get("lr"))
    axes[2].plot(epochs[: len(lr)], lr, marker="o", color="tab:green")
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    return _save(figure, path)


def draw_confusion(confusion: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """The (K, K) test confusion matrix with counts, and per-class accuracy beside it."""
    figure = _figure("confusion.png")
    grid = figure.add_gridspec(1, 2, width_ratios=(1.25, 1))
    ax = figure.add_subplot(grid[0])
    k = len(classes)
    image = ax.imshow(confusion, cmap="Blues")
    threshold = confusion.max() / 2 if confusion.size else 0
    size = 9 if k <= 10 else 6
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=size,
                color="white" if confusion[i, j] > threshold else "black",
            )  # fmt: skip
    ax.set_xticks(range(k), classes, rotation=45 if max(map(len, classes)) > 2 else 0, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(confusion.sum())
    accuracy = np.trace(confusion) / max(total, 1)
    ax.set_title(f"test confusion matrix ({total:,} images, accuracy {accuracy:.4f})")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bars = figure.add_subplot(grid[1])
    recall = per_class_accuracy(confusion)
    positions = np.arange(k)
    bars.barh(positions, recall, color="tab:blue")
    for y, value in zip(positions, recall, strict=True):
        inside = value > 0.2  # a short bar has its number after it, in black
        bars.text(value - 0.01 if inside else value + 0.01, y, f"{value:.3f}", va="center",
                  ha="right" if inside else "left", color="white" if inside else "black",
                  fontsize=size)  # fmt: skip
    bars.set_yticks(positions, classes)
    bars.invert_yaxis()  # class 0 on top, as in the matrix
    bars.set_xlim(0, 1)
    bars.set_xlabel("accuracy")
    bars.set_title("per-class accuracy")
    bars.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def _filter_images(weight: np.ndarray) -> tuple[np.ndarray, bool]:
    """Filters (F, C, KH, KW) as images scaled to [0, 1] each: (F', KH, KW[, 3]), RGB flag.

    Three input channels are shown as colour; otherwise every (filter, channel) pair is one
    grey image. Each image is min-max scaled on its own, so weak filters stay visible.
    """
    F, C, KH, KW = weight.shape
    if C == 3:
        images, rgb = np.transpose(weight, (0, 2, 3, 1)), True
    else:
        images, rgb = weight.reshape(F * C, KH, KW), False
    images = images[:MAX_FILTERS].astype(np.float64)
    axes = tuple(range(1, images.ndim))
    low = images.min(axis=axes, keepdims=True)
    span = images.max(axis=axes, keepdims=True) - low
    return (images - low) / np.where(span > 0, span, 1.0), rgb


def draw_filters(name: str, weight: np.ndarray, path: Path) -> Path:
    """The first convolution's filters, weight (F, C, KH, KW), as a grid of images."""
    figure = _figure("filters.png")
    images, rgb = _filter_images(weight)
    F, C, KH, KW = weight.shape
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap=None if rgb else "gray", vmin=0, vmax=1,
                      interpolation="nearest")  # fmt: skip
            if C not in (1, 3):
                ax.set_title(f"{i // C}:{i % C}", fontsize=7)
    shown = "" if F * (1 if rgb else C) <= MAX_FILTERS else f", first {MAX_FILTERS} shown"
    channels = "" if C in (1, 3) else f" x {C} channels (filter:channel)"
    figure.suptitle(f"{name}: {F} filters {KH}x{KW}{channels}{shown}")
    figure.tight_layout()
    return _save(figure, path)


def _as_picture(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """One (C, H, W) test image as something imshow draws: grey (H, W) or RGB (H, W, 3)."""
    if image.shape[0] == 3:
        low, high = image.min(), image.max()
        return (np.transpose(image, (1, 2, 0)) - low) / ((high - low) or 1.0), None
    return image[0], "gray"


def draw_mistakes(
    images: np.ndarray,
    true: np.ndarray,
    predicted: np.ndarray,
    probability: np.ndarray,
    classes: Sequence[str],
    total: int,
    path: Path,
) -> Path:
    """Misclassified images (M, C, H, W), each titled true -> predicted (probability)."""
    figure = _figure("mistakes.png")
    rows, columns = 4, 8
    fontsize = 9 if max(map(len, classes)) <= 5 else 7  # "T-shirt/top -> Ankle boot" must fit
    axes = figure.subplots(rows, columns).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < len(images):
            picture, cmap = _as_picture(images[i])
            ax.imshow(picture, cmap=cmap, interpolation="nearest")
            ax.set_title(
                f"{classes[true[i]]} -> {classes[predicted[i]]}\n{probability[i]:.2f}",
                fontsize=fontsize,
            )
    which = "most confident first" if total == len(images) else f"the {len(images)} most confident"
    figure.suptitle(
        f"{total:,} misclassified test images, {which} (true -> predicted, predicted probability)"
    )
    figure.tight_layout()
    return _save(figure, path)


# ---------------------------------------------------------------------- the page
def _embedded(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(rows: Sequence[tuple[Any, Any]], header: tuple[str, str] | None = None) -> str:
    head = (
        f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>"
        if header
        else ""
    )
    body = "".join(
        f"<tr><td>{html.escape(str(a))}</td><td>{html.escape(str(b))}</td></tr>" for a, b in rows
    )
    return f"<table>{head}{body}</table>"


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _final_figures(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    history = metrics.get("history") or {}
    val = _finite(history.get("val_accuracy"))
    rows = [
        ("test accuracy", _number(metrics.get("test_accuracy"))),
        ("test loss", _number(metrics.get("test_loss"))),
        ("final training loss", _number((_finite(history.get("loss")) or [None])[-1])),
        ("final training accuracy", _number((_finite(history.get("accuracy")) or [None])[-1])),
        ("final validation accuracy", _number(val[-1] if val else None)),
        ("best validation accuracy", _number(max(val) if _has_values(val) else None)),
        ("epochs", _number(metrics.get("epochs"))),
        ("training time (s)", _number(metrics.get("elapsed_s"), 1)),
        ("training images/s", _number(metrics.get("train_images_per_second"), 0)),
        ("backend", _number(metrics.get("backend"))),
    ]
    return [(name, value) for name, value in rows if value != "-"]


PAGE_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1500px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #8a4b00; }
"""


def write_html(
    path: Path,
    title: str,
    metrics: dict[str, Any],
    pictures: dict[str, Path],
    notes: Sequence[str],
    per_class: Sequence[tuple[str, str]] | None,
) -> Path:
    """One self-contained page: settings, final figures, per-class accuracy, the pictures."""
    captions = {
        "curves.png": "Training curves",
        "confusion.png": "Test confusion matrix",
        "filters.png": "First-layer filters",
        "mistakes.png": "Misclassified test images",
    }
    run = metrics.get("run") or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Final figures</h2>",
        _table(_final_figures(metrics)),
    ]
    if run:
        parts += [
            "<h2>Settings</h2>",
            _table([(k, "-" if v is None else v) for k, v in run.items()]),
        ]
    if per_class:
        parts += ["<h2>Per-class test accuracy</h2>", _table(per_class, ("class", "accuracy"))]
    if notes:
        parts += ["<h2>Left out</h2><ul>"]
        parts += [f'<li class="note">{html.escape(note)}</li>' for note in notes]
        parts += ["</ul>"]
    for name, picture in pictures.items():
        parts += [f"<h2>{captions[name]}</h2>", f"<p>{_embedded(picture, captions[name])}</p>"]
    parts += ["</body></html>", ""]
    with _naming(path):
        path.write_text("\n".join(parts), encoding="utf-8")
    return path


# ---------------------------------------------------------------------- the report
def write_report(
    run_dir: str | Path,
    model: Sequential | None,
    metrics: dict[str, Any],
    test_data: tuple[np.ndarray, np.ndarray] | None = None,
    classes: Sequence[str] | None = None,
) -> Report:
    """Draw the pictures of a run into ``run_dir/report/`` and write ``index.html``.

    Parameters
    ----------
    run_dir : the run folder; the report goes to its ``report/`` subfolder.
    model : the trained network (for the filters and the mistakes); None leaves both out.
    metrics : the run's ``metrics.json`` content; its ``history`` gives the curves and its
        ``confusion_matrix`` the confusion picture when there is no test set.
    test_data : ``(x_test, y_test)``, images of shape (N, *model.input_shape) and int labels
        of shape (N,); None (or N = 0) leaves out what needs the test images.
    classes : K class names; default ``"0"``, ``"1"``, ...

    Returns
    -------
    report : the files written and a note for each picture left out.

    Raises
    ------
    ReportError : matplotlib is missing (the message names the ``plot`` extra), or ``metrics``
        does not have the shape of a ``metrics.json`` (see :func:`check_metrics`).
    """
    require_matplotlib()
    check_metrics(metrics)
    start = time.perf_counter()
    folder = Path(run_dir) / "report"
    with _naming(folder):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in SIZES:  # a picture that no longer applies must not survive an older report
            (folder / stale).unlink(missing_ok=True)
    report = Report(folder)
    pictures: dict[str, Path] = {}
    data: dict[str, Any] = {}

    history = metrics.get("history") or {}
    if _finite(history.get("loss")):
        pictures["curves.png"] = draw_curves(history, folder / "curves.png")
        # NaN (no validation data) as null: report.json stays strict JSON
        data["history"] = {
            key: [v if math.isfinite(v) else None for v in _finite(values)]
            for key, values in history.items()
        }
        if not _has_values(_finite(history.get("val_loss"))):
            report.notes.append("validation curves: the run has no validation set.")
    else:
        report.notes.append("curves.png: metrics.json holds no per-epoch history.")

    num_classes = model.output_shape[0] if model is not None else None
    confusion = None
    has_test = test_data is not None and len(test_data[0]) > 0 and model is not None
    if has_test:
        x_test, y_test = test_data
        predict_start = time.perf_counter()
        probabilities = model.predict_proba(x_test)  # in the batches of gpucnn evaluate
        report.predict_seconds = time.perf_counter() - predict_start
        predicted = np.argmax(probabilities, axis=1)
        confusion = confusion_matrix(y_test, predicted, labels=range(num_classes))
    elif metrics.get("confusion_matrix") is not None:
        confusion = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    names = list(classes or metrics.get("classes") or [])
    if confusion is not None:
        names = names if len(names) == len(confusion) else [str(i) for i in range(len(confusion))]
        pictures["confusion.png"] = draw_confusion(confusion, names, folder / "confusion.png")
        data["confusion_matrix"] = confusion.tolist()
        data["per_class_accuracy"] = per_class_accuracy(confusion).tolist()
        data["classes"] = names
    else:
        report.notes.append("confusion.png: the run has no test set.")

    filters = first_conv_filters(model) if model is not None else None
    if filters is not None:
        pictures["filters.png"] = draw_filters(*filters, folder / "filters.png")
        data["filters"] = {"layer": filters[0], "shape": list(filters[1].shape)}
    else:
        report.notes.append(
            "filters.png: no model.npz to read."
            if model is None
            else "filters.png: the model has no convolution."
        )

    if has_test:
        wrong = np.flatnonzero(predicted != y_test)
        confidence = probabilities[wrong, predicted[wrong]]
        shown = wrong[np.argsort(-confidence, kind="stable")][:MAX_MISTAKES]
        data["mistakes"] = {
            "count": int(len(wrong)),
            "shown": [
                {
                    "index": int(i),
                    "true": int(y_test[i]),
                    "predicted": int(predicted[i]),
                    "probability": float(probabilities[i, predicted[i]]),
                }
                for i in shown
            ],
        }
        if np.ndim(x_test) != 4:
            report.notes.append("mistakes.png: the inputs are not (C, H, W) images.")
        elif len(wrong):
            pictures["mistakes.png"] = draw_mistakes(
                np.asarray(x_test)[shown],
                y_test[shown],
                predicted[shown],
                probabilities[shown, predicted[shown]],
                names,
                len(wrong),
                folder / "mistakes.png",
            )
        else:
            report.notes.append("mistakes.png: every test image is classified correctly.")
    else:
        report.notes.append(
            "mistakes.png: no model.npz to read."
            if model is None and test_data is not None
            else "mistakes.png: the run has no test set."
        )

    report.files.update(pictures)
    title = "gpucnn run " + " / ".join(
        str(metrics[k]) for k in ("dataset", "model") if metrics.get(k) is not None
    )
    per_class = (
        [(n, f"{a:.4f}") for n, a in zip(names, data["per_class_accuracy"], strict=True)]
        if confusion is not None
        else None
    )
    report.files["index.html"] = write_html(
        folder / "index.html", title, metrics, pictures, report.notes, per_class
    )
    data["notes"] = report.notes
    data["pictures"] = {name: list(SIZES[name]) for name in pictures}
    report.files["report.json"] = folder / "report.json"
    with _naming(report.files["report.json"]):
        report.files["report.json"].write_text(json.dumps(data, indent=2))
    report.seconds = time.perf_counter() - start
    return report
