"""The gpucnn command: end-to-end training on digits, resume, signals, every exit code."""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from gpucnn.checkpoint import load_checkpoint
from gpucnn.cli import main


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short digits run shared by the tests below."""
    out = tmp_path_factory.mktemp("run")
    assert run("train", "--epochs", 3, "--out", out, "--backend", "numpy") == 0
    return out


def test_train_writes_model_checkpoint_and_metrics(trained):
    assert {p.name for p in trained.iterdir()} >= {"model.npz", "checkpoint.npz", "metrics.json"}
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and len(metrics["history"]["loss"]) == 3
    assert metrics["test_accuracy"] > 0.85 and metrics["train_images_per_second"] > 0


def test_evaluate_prints_accuracy_and_confusion(trained, capsys, tmp_path):
    assert run("evaluate", trained / "model.npz", "--json", tmp_path / "e.json") == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "confusion matrix" in out
    report = json.loads((tmp_path / "e.json").read_text())
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 359  # the seeded 20 % hold-out of 1,797
    assert abs(report["accuracy"] - np.trace(matrix) / matrix.sum()) < 1e-12
    recall = np.diag(matrix) / matrix.sum(axis=1)
    precision = np.diag(matrix) / np.maximum(matrix.sum(axis=0), 1)
    np.testing.assert_allclose(report["recall"], recall)
    np.testing.assert_allclose(report["precision"], precision)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    np.testing.assert_allclose(report["f1"], f1, atol=1e-12)
    assert "precision" in out and "f1" in out


def write_png(path, pixels):
    """A minimal grey 8-bit PNG writer with the 'up' filter on every other row."""
    height, width = pixels.shape
    rows = b""
    previous = np.zeros(width, np.uint8)
    for y, row in enumerate(pixels):
        if y % 2:
            rows += b"\x02" + ((row.astype(np.int16) - previous) % 256).astype(np.uint8).tobytes()
        else:
            rows += b"\x00" + row.tobytes()
        previous = row

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_predict_png_npy_and_idx(trained, capsys, tmp_path):
    from gpucnn.data import load_digits, write_idx

    x, y = load_digits()
    pixels = np.round(x[:4, 0] * 255).astype(np.uint8)
    write_png(tmp_path / "zero.png", pixels[0])
    np.save(tmp_path / "batch.npy", x[:4])
    write_idx(tmp_path / "imgs.idx", pixels)
    assert (
        run(
            "predict",
            trained / "model.npz",
            tmp_path / "zero.png",
            tmp_path / "batch.npy",
            tmp_path / "imgs.idx",
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 9
    labels = [int(line.split("label ")[1].split(",")[0]) for line in lines]
    assert labels[0] == labels[1] == labels[5]  # the same image through PNG, .npy and IDX


def test_info(capsys, monkeypatch):
    monkeypatch.delenv("GPUCNN_WINOGRAD", raising=False)
    assert run("info", "--backend", "numpy") == 0
    out = capsys.readouterr().out
    assert "backend: numpy" in out and "blas" in out and "winograd: on for NumPy" in out
    monkeypatch.setenv("GPUCNN_WINOGRAD", "0")
    assert run("info", "--backend", "numpy") == 0
    assert "winograd: off (GPUCNN_WINOGRAD=0)" in capsys.readouterr().out


def test_bench_writes_json(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert (
        run(
            "bench",
            "--model",
            "small",
            "--batch-size",
            8,
            "--infer-batch-size",
            16,
            "--repeats",
            1,
            "--steps",
            1,
            "--backend",
            "numpy",
            "--json",
            path,
        )
        == 0
    )
    report = json.loads(path.read_text())
    for key in (
        "train_images_per_second",
        "infer_images_per_second",
        "peak_rss_mib",
        "backend",
        "blas",
        "blas_threads",
    ):
        assert key in report
    assert (
        report["backend"] == "numpy" and len(report["layers"]) == 6
    )  # two Conv2D+ReLU+MaxPool runs fused


def test_resume_continues_to_the_same_weights(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run("train", "--epochs", 3, "--out", straight, "--backend", "numpy") == 0
    assert run("train", "--epochs", 1, "--out", split, "--backend", "numpy") == 0
    assert run("train", "--resume", split, "--epochs", 3, "--backend", "numpy") == 0
    a, b = load_checkpoint(straight / "model.npz"), load_checkpoint(split / "model.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    metrics = json.loads((split / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and len(metrics["history"]["loss"]) == 3


def test_resume_finishes_a_run_stopped_between_its_last_checkpoint_and_its_model(tmp_path):
    out = tmp_path / "run"
    # a large learning rate: the last epoch is not the best, so EarlyStopping's restore of
    # the best weights at the end of training shows in the saved model
    flags = ("--epochs", 4, "--lr", 0.3, "--patience", 10, "--backend", "numpy")
    assert run("train", *flags, "--out", out) == 0
    final = load_checkpoint(out / "model.npz")
    (out / "model.npz").unlink()  # as if stopped after the last checkpoint, before the save
    (out / "metrics.json").unlink()
    assert run("train", "--resume", out, "--epochs", 3, "--backend", "numpy") == 2  # fewer
    assert run("train", "--resume", out, "--backend", "numpy") == 0
    again = load_checkpoint(out / "model.npz")
    assert all(np.array_equal(final.params[k], again.params[k]) for k in final.params)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and len(metrics["history"]["loss"]) == 4
    assert run("train", "--resume", out, "--backend", "numpy") == 2  # finished: nothing to do


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["train", "--epochs", "0"], "--epochs must be >= 1"),
        (["train", "--model", "nonexistent"], "expected a model name in"),
        (["train", "--model", "{missing}.json"], "cannot read architecture file"),
        (["train", "--dataset", "mnist", "--data-dir", "{tmp}", "--no-download"], "--data-dir"),
        (["train", "--backend", "cupy"], "backend 'cupy' was requested but cannot run"),
        (["train", "--resume", "{tmp}"], "checkpoint.npz not found"),
        (["evaluate", "{tmp}/none.npz"], "not found"),
        (["evaluate", "{bad}"], "not a gpucnn checkpoint"),
        (["predict", "{bad}", "x.png"], "not a gpucnn checkpoint"),
        (["train", "--model", "{badjson}"], "is not valid JSON"),
        (["train", "--model", "{wrongarch}"], "expected 10 outputs"),
        ([], "the following arguments are required: command"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, tmp_path, capsys):
    if "cupy" in args:
        from gpucnn.backend import probe_cupy

        if probe_cupy()[0] is not None:
            pytest.skip("a GPU is present")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "arch.json").write_text(
        json.dumps([{"type": "Flatten"}, {"type": "Dense", "units": 3}])
    )
    subs = {
        "{tmp}": str(tmp_path),
        "{bad}": str(tmp_path / "bad.npz"),
        "{badjson}": str(tmp_path / "bad.json"),
        "{wrongarch}": str(tmp_path / "arch.json"),
        "{missing}": str(tmp_path / "missing"),
    }
    argv = [
        subs.get(a, a)
        .replace("{tmp}", str(tmp_path))
        .replace("{missing}", str(tmp_path / "missing"))
        for a in args
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpucnn: error: ") and "Traceback" not in err
    assert message in err


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_exits_3(tmp_path, capsys):
    assert run("train", "--epochs", 2, "--lr", 1e20, "--out", tmp_path, "--backend", "numpy") == 3
    assert "training diverged at epoch 1" in capsys.readouterr().err


def test_architecture_file(tmp_path):
    layers = [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
        {"type": "ReLU"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10},
    ]
    (tmp_path / "arch.json").write_text(json.dumps(layers))
    assert (
        run(
            "train",
            "--model",
            tmp_path / "arch.json",
            "--epochs",
            1,
            "--out",
            tmp_path / "o",
            "--backend",
            "numpy",
        )
        == 0
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_leaves_a_loadable_checkpoint_and_exits_cleanly(tmp_path, sig):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpucnn",
            "train",
            "--epochs",
            "500",
            "--out",
            str(out),
            "--backend",
            "numpy",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    deadline = time.monotonic() + 120
    while (
        not (out / "checkpoint.npz").exists()
        and time.monotonic() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert (
        "Traceback" not in err
        and f"interrupted by {signal.Signals(sig).name}" in err
        and "--resume" in err
    )
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert checkpoint.meta["run"]["epochs"] == 500
    assert (
        run(
            "train",
            "--resume",
            out,
            "--epochs",
            checkpoint.meta["trainer"]["epoch"] + 1,
            "--backend",
            "numpy",
        )
        == 0
    )


def test_adamw_warmup_and_label_smoothing_flags_are_recorded_and_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--optimizer", "adamw", "--lr", 0.002, "--warmup-epochs", 2,
             "--label-smoothing", 0.1, "--backend", "numpy", "--no-progress"]  # fmt: skip
    assert run("train", "--epochs", 3, "--out", out, *flags) == 0
    meta = load_checkpoint(out / "checkpoint.npz").meta
    config = meta["optimizer"]["config"]
    assert config["type"] == "adamw" and config["weight_decay"] == 0.01
    assert meta["run"]["label_smoothing"] == 0.1
    lrs = json.loads((out / "metrics.json").read_text())["history"]["lr"]
    cosine = [0.002 * 0.5 * (1 + np.cos(np.pi * e / 3)) for e in range(3)]
    np.testing.assert_allclose(lrs, [cosine[0] / 3, cosine[1] * 2 / 3, cosine[2]], rtol=1e-12)
    assert run("train", "--resume", out, "--epochs", 4, *flags) == 0  # the run's own values
    capsys.readouterr()
    assert run("train", "--resume", out, "--epochs", 5, "--label-smoothing", 0.2) == 2
    assert "--label-smoothing would change it" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--label-smoothing", 1.0, r"--label-smoothing must be in \[0, 1\); received 1.0"),
        ("--warmup-epochs", -1, "--warmup-epochs must be >= 0; received -1"),
    ],
)
def test_bad_new_training_flags_exit_2(flag, value, message, tmp_path, capsys):
    assert run("train", flag, value, "--out", tmp_path / "r", "--backend", "numpy") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err)


def test_the_classification_report_is_scikit_learns():
    """Confusion matrix, precision, recall, F1 and support as scikit-learn computes them
    (zero_division=0), with a class never predicted and a class absent from the test set."""
    from types import SimpleNamespace

    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from gpucnn.cli.evaluate import classification_report

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 200)  # class 4 never occurs
    predictions = np.where(rng.random(200) < 0.7, truth, rng.integers(0, 5, 200))
    predictions[predictions == 2] = 1  # class 2 never predicted
    data = SimpleNamespace(
        name="t", num_classes=5, y_test=truth, classes=[str(k) for k in range(5)]
    )
    report = classification_report(data, predictions)
    labels = list(range(5))
    expected = precision_recall_fscore_support(truth, predictions, labels=labels, zero_division=0)
    for key, values in zip(("precision", "recall", "f1", "support"), expected, strict=True):
        np.testing.assert_allclose(report[key], values, rtol=1e-12, err_msg=key)
    assert (
        report["confusion_matrix"] == confusion_matrix(truth, predictions, labels=labels).tolist()
    )
    assert report["accuracy"] == np.mean(truth == predictions)


def test_the_classification_report_refuses_labels_outside_the_classes():
    from types import SimpleNamespace

    from gpucnn.cli.evaluate import classification_report

    data = SimpleNamespace(
        name="t", num_classes=3, y_test=np.array([0, 1, 2, 2]), classes=list("abc")
    )
    with pytest.raises(
        ValueError, match=r"expected predictions in \[0, 3\); received values from 0 to 3"
    ):
        classification_report(data, np.array([0, 3, 2, 1]))
