"""LearningRateScheduler, the training callbacks on the command line (--checkpoint-best,
--csv-log, --tensorboard) and layer plugins from installed packages (entry points)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from gpucnn import SGD, Sequential
from gpucnn.callbacks import (
    HISTORY_KEYS,
    Callback,
    LearningRateScheduler,
    ReduceLROnPlateau,
    TensorBoard,
)
from gpucnn.checkpoint import load_checkpoint
from gpucnn.cli import main
from gpucnn.layers import Conv2D, Dense, Flatten, ReLU
from gpucnn.trainer import Trainer
from gpucnn.validation import ArgumentError


def tiny_model(classes: int = 3, seed: int = 0) -> Sequential:
    return Sequential(
        [Conv2D(4, 3, padding=1), ReLU(), Flatten(), Dense(classes)],
        input_shape=(1, 8, 8),
        backend="numpy",
        seed=seed,
    )


def toy_data(n: int = 64, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 1, 8, 8) whose class sets the brightness of one row."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.random((n, 1, 8, 8), dtype=np.float32) * 0.1
    x[np.arange(n), 0, y * 2, :] += 1.0
    return x, y


class BatchLR(Callback):
    """Records the optimizer's rate at every batch: the rate the updates really used."""

    def __init__(self) -> None:
        self.rates: dict[int, set[float]] = {}
        self.epoch = 0

    def on_epoch_begin(self, trainer, epoch):
        self.epoch = epoch

    def on_batch_end(self, trainer, batch, logs):
        self.rates.setdefault(self.epoch, set()).add(trainer.optimizer.lr)

    def per_epoch(self) -> list[float]:
        assert all(len(r) == 1 for r in self.rates.values()), self.rates
        return [next(iter(self.rates[e])) for e in sorted(self.rates)]


def fit(callbacks, epochs=4, lr=0.1, validation=False, **options):
    recorder = BatchLR()
    trainer = Trainer(
        tiny_model(), SGD(lr=lr), callbacks=[*callbacks, recorder], progress=False, log=None,
        **options,
    )  # fmt: skip
    x, y = toy_data(32)
    data = {"validation_data": (x[24:], y[24:])} if validation else {}
    history = trainer.fit(x[:24], y[:24], epochs=epochs, batch_size=8, **data)
    return trainer, history, recorder.per_epoch()


def test_scheduler_of_the_epoch_sets_the_rate_used_and_shown():
    scheduler = LearningRateScheduler(lambda epoch: 0.1 * 0.5**epoch)
    _, history, used = fit([scheduler])
    expected = [0.1, 0.05, 0.025, 0.0125]
    assert used == pytest.approx(expected)
    assert history["lr"] == pytest.approx(expected)


def test_scheduler_of_epoch_and_rate_gets_the_previous_rate():
    seen = []

    def schedule(epoch, lr):
        seen.append((epoch, lr))
        return lr if epoch < 2 else lr * 0.5

    _, history, used = fit([LearningRateScheduler(schedule)], lr=0.2)
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert [r for _, r in seen] == pytest.approx([0.2, 0.2, 0.2, 0.1])
    assert used == pytest.approx([0.2, 0.2, 0.1, 0.05]) and history["lr"] == pytest.approx(used)


def test_scheduler_continues_from_a_plateau_reduction():
    plateau = ReduceLROnPlateau("loss", factor=0.5, patience=1, min_delta=1e6)
    scheduler = LearningRateScheduler(lambda epoch, lr: lr)  # keeps whatever the rate is
    _, history, used = fit([scheduler, plateau], epochs=4, lr=0.1)
    # min_delta=1e6: no epoch after the first improves, so each later epoch's end halves the rate
    assert used == pytest.approx([0.1, 0.1, 0.05, 0.025]) and history["lr"] == pytest.approx(used)


def test_scheduler_survives_a_checkpoint_resume(tmp_path):
    def make() -> Trainer:
        return Trainer(
            tiny_model(), SGD(lr=0.1), callbacks=[LearningRateScheduler(lambda e, lr: lr * 0.5)],
            checkpoint_path=tmp_path / "c.npz", progress=False, log=None,
        )  # fmt: skip

    x, y = toy_data(16)
    straight = make().fit(x, y, epochs=4, batch_size=8)["lr"]
    make().fit(x, y, epochs=2, batch_size=8)
    from gpucnn.checkpoint import load_checkpoint

    resumed = make()
    resumed.restore(load_checkpoint(tmp_path / "c.npz"))
    assert resumed.fit(x, y, epochs=2, batch_size=8)["lr"] == pytest.approx(straight)


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, None, "0.1", True])
def test_scheduler_refuses_a_rate_that_is_not_positive_and_finite(value):
    with pytest.raises(ValueError, match=r"expected the schedule to return a positive finite "
                       r"learning rate for epoch 0 \(0-based\); received"):  # fmt: skip
        fit([LearningRateScheduler(lambda epoch: value)], epochs=1)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (0.1, "expected schedule to be a function epoch -> lr or"),
        (lambda a, b, c: 0.1, r"expected schedule to take \(epoch\) or \(epoch, lr\); received"),
        (lambda: 0.1, r"expected schedule to take \(epoch\) or \(epoch, lr\)"),
    ],
)
def test_scheduler_refuses_what_is_no_schedule(schedule, message):
    with pytest.raises(ArgumentError, match=message):
        LearningRateScheduler(schedule)


def test_reduce_lr_on_plateau_changes_the_rate_the_optimizer_uses_and_history_shows():
    plateau = ReduceLROnPlateau("val_accuracy", factor=0.5, patience=1, min_delta=1e6)
    trainer, history, used = fit([plateau], epochs=4, lr=0.1, validation=True)
    # the first epoch sets the best value; each later one fails to beat it by min_delta
    assert used == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert history["lr"] == pytest.approx(used)
    assert plateau.reductions == 3 and trainer.optimizer.lr == pytest.approx(0.0125)
    assert np.isfinite(history["val_accuracy"]).all()


# ---------------------------------------------------------------------- command-line callbacks
def run(*args) -> int:
    return main([str(a) for a in args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


FAST = ("--backend", "numpy", "--schedule", "constant", "--lr", "0.2")


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    """A digits run of 3 epochs with --checkpoint-best and --csv-log, resumed for a 4th."""
    out = tmp_path_factory.mktemp("callbacks") / "run"
    flags = ("--checkpoint-best", "--csv-log")
    assert run("train", "--epochs", 3, "--out", out, *FAST, *flags) == 0
    assert run("train", "--resume", out, "--epochs", 4, *flags) == 0
    return out


def test_csv_log_has_one_row_per_epoch_across_a_resume(logged_run):
    lines = (logged_run / "history.csv").read_text().splitlines()
    assert lines[0].split(",") == ["epoch", *HISTORY_KEYS]
    rows = [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    history = json.loads((logged_run / "metrics.json").read_text())["history"]
    assert [float(r["val_accuracy"]) for r in rows] == pytest.approx(history["val_accuracy"])
    assert [float(r["lr"]) for r in rows] == pytest.approx(history["lr"])


def test_checkpoint_best_holds_the_best_epochs_weights(logged_run, tmp_path):
    history = json.loads((logged_run / "metrics.json").read_text())["history"]
    best = int(np.argmax(history["val_accuracy"])) + 1  # the first of equal values
    saved = load_checkpoint(logged_run / "best.npz")
    assert saved.meta["epoch"] == best
    assert saved.meta["monitor"]["val_accuracy"] == pytest.approx(max(history["val_accuracy"]))
    # the same run stopped after the best epoch (constant schedule: same steps) has its weights
    short = tmp_path / "short"
    assert run("train", "--epochs", best, "--out", short, *FAST) == 0
    model = load_checkpoint(short / "model.npz")
    assert saved.params.keys() == model.params.keys()
    for name in model.params:
        np.testing.assert_array_equal(saved.params[name], model.params[name])


def test_best_npz_is_a_model_file_the_cli_reads(logged_run, capsys):
    assert run("evaluate", logged_run / "best.npz", "--backend", "numpy") == 0
    assert "accuracy" in capsys.readouterr().out


def test_callback_flags_are_recorded_and_compared_on_resume(logged_run, capsys):
    recorded = load_checkpoint(logged_run / "checkpoint.npz").meta["run"]
    assert recorded["checkpoint_best"] is True and recorded["csv_log"] is True
    assert recorded["tensorboard"] is None
    pytest.importorskip("tensorboardX")
    args = ("--resume", logged_run, "--epochs", 5, "--tensorboard", logged_run / "tb")
    assert run("train", *args) == 2
    line = one_line_error(capsys)
    assert "--tensorboard would change it" in line and "the run has no --tensorboard" in line


def test_checkpoint_best_needs_validation_data(tmp_path, capsys):
    args = ("--out", tmp_path / "r", "--val-fraction", 0, "--checkpoint-best")
    assert run("train", *args, *FAST) == 2
    assert "--checkpoint-best keeps the best val_accuracy and needs validation data" in (
        one_line_error(capsys)
    )


def test_tensorboard_writes_event_files_and_resumes(tmp_path):
    pytest.importorskip("tensorboardX")
    out, logs = tmp_path / "run", tmp_path / "tb"
    assert run("train", "--epochs", 1, "--out", out, "--tensorboard", logs, *FAST) == 0
    assert run("train", "--resume", out, "--epochs", 2, "--tensorboard", logs) == 0
    events = sorted(logs.glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert load_checkpoint(out / "checkpoint.npz").meta["run"]["tensorboard"] == str(logs.resolve())


def test_tensorboard_callback_writes_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    trainer, history, _ = fit([TensorBoard(tmp_path)], epochs=2)
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_tensorboard_without_tensorboardx_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'gpucnn\[tensorboard\]'"):
        TensorBoard(tmp_path)
    assert run("train", "--out", tmp_path / "r", "--tensorboard", tmp_path / "tb", *FAST) == 2
    line = one_line_error(capsys)
    assert line.startswith("gpucnn: error: --tensorboard: TensorBoard: expected the tensorboardX")


# ---------------------------------------------------------------------- entry-point plugins
PLUGIN_MODULE = '''
from gpucnn.backend import namespace
from gpucnn.layers import Layer


class EpScale(Layer):
    """Multiplies by a constant; no onnx_nodes, so it cannot be exported."""

    def __init__(self, factor=2.0, name=None):
        super().__init__(name)
        self.factor = float(factor)

    def forward(self, x, training=False):
        self.check_input(x)
        return x * self.factor

    def backward(self, grad_out, need_input_grad=True):
        return grad_out * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
'''


def install_package(root: Path, name: str, entry_points: str, module: str | None) -> None:
    """A package installed as pip would leave it: its module and a dist-info folder."""
    if module is not None:
        (root / f"{name}.py").write_text(module)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[gpucnn.layers]\n{entry_points}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site folder on sys.path and a layer registry that has loaded no entry points."""
    from gpucnn.layers import LAYERS

    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(LAYERS, "classes", dict(LAYERS.classes))  # forget what tests register
    monkeypatch.setattr(LAYERS, "_entry_points_loaded", False)
    monkeypatch.setattr(LAYERS, "_entry_point_error", None)
    yield folder
    for name in ("gpucnn_ep_demo", "gpucnn_ep_broken"):
        sys.modules.pop(name, None)


def test_an_installed_packages_layer_is_used_from_a_json_architecture(site, tmp_path, capsys):
    install_package(site, "gpucnn_ep_demo", "EpScale = gpucnn_ep_demo:EpScale", PLUGIN_MODULE)
    arch = tmp_path / "arch.json"
    conv = {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"}
    layers = [conv, {"type": "EpScale", "factor": 0.5}, {"type": "Flatten"}, {"type": "Dense", "units": 10}]  # fmt: skip
    arch.write_text(json.dumps(layers))
    out = tmp_path / "run"
    assert run("train", "--model", arch, "--epochs", 1, "--out", out, *FAST) == 0
    saved = load_checkpoint(out / "model.npz").meta["architecture"]["layers"][1]
    assert saved["type"] == "EpScale" and saved["factor"] == 0.5
    assert run("evaluate", out, "--backend", "numpy") == 0  # read again, no --plugin
    capsys.readouterr()
    assert run("export", out, "-o", tmp_path / "m.onnx") == 2
    line = one_line_error(capsys)
    assert "cannot export layer" in line and "EpScale" in line


def test_entry_points_are_loaded_once_per_process(site):
    from gpucnn.layers import LAYERS, layer_from_config

    install_package(site, "gpucnn_ep_demo", "EpScale = gpucnn_ep_demo:EpScale", PLUGIN_MODULE)
    layer_from_config({"type": "Flatten"})
    module = sys.modules["gpucnn_ep_demo"]
    del LAYERS.classes["EpScale"]  # a second load would register it again
    with pytest.raises(ValueError, match="expected a layer type in"):
        layer_from_config({"type": "EpScale"})
    assert sys.modules["gpucnn_ep_demo"] is module


def test_a_broken_entry_point_is_one_clear_line(site, tmp_path, capsys):
    install_package(site, "gpucnn_ep_broken", "Broken = gpucnn_ep_broken_missing:Layer", None)
    assert run("train", "--epochs", 1, "--out", tmp_path / "run", *FAST) == 2
    line = one_line_error(capsys)
    assert line.startswith("gpucnn: error: layer plugin entry point 'Broken'")
    assert "package gpucnn_ep_broken 0.1" in line and "ModuleNotFoundError" in line
    assert "fix or uninstall that package" in line
