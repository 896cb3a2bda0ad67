"""gpucnn report: every file written, pictures of the right size that are not blank, the
confusion matrix equal to `gpucnn evaluate`'s, a self-contained page, and what is left out."""

import json
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from gpucnn.cli import main
from gpucnn.report import SIZES, per_class_accuracy, write_report

PICTURES = ("curves.png", "confusion.png", "filters.png", "mistakes.png")


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A short digits run trained with --report."""
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("run")
    assert run("train", "--epochs", 2, "--out", out, "--backend", "numpy", "--report") == 0
    return out


def open_png(path):
    image = pytest.importorskip("PIL.Image")
    with image.open(path) as picture:
        return picture.size, np.asarray(picture.convert("RGB"))


def assert_picture(path, name):
    size, pixels = open_png(path)
    assert size == SIZES[name]
    # not blank: many distinct colours and real contrast
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    assert pixels.std() > 10


class Page(HTMLParser):
    """Collects tags, every attribute that can point elsewhere, and the text."""

    def __init__(self):
        super().__init__()
        self.tags, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for key, value in attrs if key in ("src", "href", "srcset", "data")]

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path):
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_train_report_writes_every_file(run_dir):
    folder = run_dir / "report"
    assert {p.name for p in folder.iterdir()} == {*PICTURES, "index.html", "report.json"}
    for name in PICTURES:
        assert_picture(folder / name, name)


def test_index_html_parses_and_references_nothing_outside(run_dir):
    path = run_dir / "report" / "index.html"
    page = parse_page(path)
    assert page.tags.count("img") == 4
    assert page.links and all(link.startswith("data:image/png;base64,") for link in page.links)
    source = path.read_text(encoding="utf-8")
    assert "http" not in source and "url(" not in source and "<script" not in source
    text = " ".join(page.text)
    assert "test accuracy" in text and "Settings" in text and "Left out" not in text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"{metrics['test_accuracy']:.4f}" in text


def reject(constant):
    raise AssertionError(f"report.json holds {constant}: not strict JSON")


def test_confusion_matrix_equals_gpucnn_evaluate(run_dir, tmp_path):
    assert run("evaluate", run_dir / "model.npz", "--json", tmp_path / "e.json") == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    drawn = json.loads((run_dir / "report" / "report.json").read_text(), parse_constant=reject)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert drawn["confusion_matrix"] == evaluated["confusion_matrix"]
    assert metrics["confusion_matrix"] == evaluated["confusion_matrix"]
    assert np.allclose(drawn["per_class_accuracy"], evaluated["per_class_accuracy"])
    assert drawn["classes"] == metrics["classes"] == [str(d) for d in range(10)]
    matrix = np.array(drawn["confusion_matrix"])
    assert drawn["mistakes"]["count"] == matrix.sum() - np.trace(matrix)
    shown = drawn["mistakes"]["shown"]
    assert all(m["true"] != m["predicted"] for m in shown)
    probabilities = [m["probability"] for m in shown]
    assert probabilities == sorted(probabilities, reverse=True)  # most confident first


def test_metrics_hold_what_the_curves_need(run_dir):
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert len(history[key]) == 2 and all(np.isfinite(history[key]))


def test_report_command_rewrites_the_report(run_dir, capsys):
    (run_dir / "report" / "curves.png").unlink()
    assert run("report", run_dir, "--backend", "numpy") == 0
    out = capsys.readouterr().out
    assert all(name in out for name in (*PICTURES, "index.html")) and "left out" not in out
    assert_picture(run_dir / "report" / "curves.png", "curves.png")


def test_a_model_without_convolutions_and_validation_leaves_out_filters(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    arch = tmp_path / "dense.json"
    arch.write_text(json.dumps([{"type": "Flatten"}, {"type": "Dense", "units": 10}]))
    out = tmp_path / "run"
    args = ("--model", arch, "--epochs", 1, "--val-fraction", 0, "--backend", "numpy")
    assert run("train", *args, "--out", out) == 0
    assert not (out / "report").exists()  # off by default
    assert run("report", out, "--backend", "numpy") == 0
    printed = capsys.readouterr().out
    assert "filters.png: the model has no convolution" in printed
    assert "no validation set" in printed
    drawn = json.loads((out / "report" / "report.json").read_text(), parse_constant=reject)
    assert drawn["history"]["val_loss"] == [None]
    names = {p.name for p in (out / "report").iterdir()}
    assert names == {"curves.png", "confusion.png", "mistakes.png", "index.html", "report.json"}
    text = " ".join(parse_page(out / "report" / "index.html").text)
    assert "no convolution" in text


def test_a_run_without_a_test_set_leaves_out_confusion_and_mistakes(run_dir, tmp_path):
    from gpucnn.checkpoint import load_model

    model, _ = load_model(run_dir / "model.npz", backend="numpy")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    bare = {"history": metrics["history"]}
    report = write_report(tmp_path, model, bare)
    assert set(report.files) == {"curves.png", "filters.png", "index.html", "report.json"}
    assert report.notes == [
        "confusion.png: the run has no test set.",
        "mistakes.png: the run has no test set.",
    ]
    assert "the run has no test set" in (tmp_path / "report" / "index.html").read_text()
    # a confusion matrix recorded in metrics.json is still drawn without the images
    bare["confusion_matrix"] = metrics["confusion_matrix"]
    report = write_report(tmp_path, None, bare)
    assert set(report.files) == {"curves.png", "confusion.png", "index.html", "report.json"}
    assert not (tmp_path / "report" / "filters.png").exists()  # stale pictures are removed
    assert report.notes == [
        "filters.png: no model.npz to read.",
        "mistakes.png: the run has no test set.",
    ]


def test_class_names_label_the_confusion_matrix(run_dir, tmp_path):
    from gpucnn.data import FASHION_MNIST

    metrics = json.loads((run_dir / "metrics.json").read_text())
    names = list(FASHION_MNIST.classes)
    recorded = {"history": metrics["history"], "confusion_matrix": metrics["confusion_matrix"]}
    write_report(tmp_path, None, {**recorded, "classes": names})
    assert_picture(tmp_path / "report" / "confusion.png", "confusion.png")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["classes"] == names
    assert "Ankle boot" in (tmp_path / "report" / "index.html").read_text()


def test_inputs_that_are_not_images_have_no_mistakes_picture(tmp_path):
    pytest.importorskip("matplotlib")
    from gpucnn import Sequential
    from gpucnn.layers import Dense

    model = Sequential([Dense(3)], input_shape=(5,), backend="numpy", seed=0)
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    y = np.arange(40) % 3
    history = {"loss": [1.0, 0.5], "accuracy": [0.3, 0.6], "lr": [0.1, 0.1]}
    report = write_report(tmp_path, model, {"history": history}, (x, y), ["a", "b", "c"])
    assert set(report.files) == {"curves.png", "confusion.png", "index.html", "report.json"}
    assert "mistakes.png: the inputs are not (C, H, W) images." in report.notes
    assert "filters.png: the model has no convolution." in report.notes


def test_missing_matplotlib_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    (tmp_path / "metrics.json").write_text("{}")
    assert run("report", tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "gpucnn[plot]"' in err
    out = tmp_path / "never"
    assert run("train", "--epochs", 1, "--out", out, "--report") == 2
    assert 'pip install "gpucnn[plot]"' in capsys.readouterr().err
    assert not out.exists()  # refused before training


def test_report_user_errors_exit_2(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert run("report", tmp_path / "missing") == 2
    assert "expected a run folder with metrics.json" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text("{not json")
    assert run("report", tmp_path) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_per_class_accuracy_is_recall():
    from sklearn.metrics import recall_score

    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    matrix = np.zeros((7, 7), np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[t, p] += 1
    expected = recall_score(y_true, y_pred, labels=range(7), average=None)
    assert np.allclose(per_class_accuracy(matrix), expected)
    assert per_class_accuracy(np.zeros((3, 3), np.int64)).tolist() == [0, 0, 0]  # no images


def test_matplotlib_is_imported_only_when_drawing():
    code = (
        "import sys, gpucnn, gpucnn.cli, gpucnn.report; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
