"""What a Keras or PyTorch user expects on the first day: load/save, fine-tuning from saved
weights (--init), the callbacks module, custom layers from the command line (--plugin), and the
small command-line conveniences."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn import SGD, Sequential
from gpucnn.callbacks import (
    BatchLogs,
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
)
from gpucnn.checkpoint import CheckpointError, load_checkpoint
from gpucnn.cli import main
from gpucnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, ReLU
from gpucnn.optim import StepLR
from gpucnn.trainer import Trainer
from gpucnn.transfer import init_from
from gpucnn.validation import ArgumentError

ROOT = Path(__file__).resolve().parents[1]


def run(*args) -> int:
    return main([str(a) for a in args])


def tiny_model(classes: int = 3, seed: int = 0) -> Sequential:
    """A model with parameters and buffers (BatchNorm's running statistics)."""
    return Sequential(
        [Conv2D(4, 3, padding=1), BatchNorm2D(), ReLU(), Flatten(), Dense(classes)],
        input_shape=(1, 8, 8),
        backend="numpy",
        seed=seed,
    )


def toy_data(n: int = 64, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 1, 8, 8) whose class sets the brightness of one row: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.random((n, 1, 8, 8), dtype=np.float32) * 0.1
    x[np.arange(n), 0, y * 2, :] += 1.0
    return x, y


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------------- 1. load_model / save
def test_save_then_load_model_gives_the_same_predictions_and_buffers(tmp_path):
    model = tiny_model()
    x, y = toy_data()
    Trainer(model, SGD(lr=0.05), progress=False, log=None).fit(x, y, epochs=1)
    path = model.save(tmp_path / "m.npz")
    loaded = gpucnn.load_model(path, backend="numpy")
    assert isinstance(loaded, Sequential)
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and any("running_mean" in k for k in state)
    for name in state:
        np.testing.assert_array_equal(state[name], again[name])
    np.testing.assert_array_equal(model.predict_proba(x), loaded.predict_proba(x))
    assert load_checkpoint(path).meta.get("optimizer") is None  # the model.npz format


def test_load_model_takes_a_run_folder_and_save_a_folder(tmp_path):
    model = tiny_model()
    assert model.save(tmp_path) == tmp_path / "model.npz"
    loaded = gpucnn.load_model(tmp_path, backend="numpy")
    assert loaded.get_config() == model.get_config()


def test_load_model_refuses_a_folder_without_a_model_and_names_the_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="expected a run folder with model.npz; found none$"):
        gpucnn.load_model(tmp_path)
    tiny_model().save(tmp_path / "checkpoint.npz")
    with pytest.raises(CheckpointError, match="has not finished"):
        gpucnn.load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        gpucnn.load_model(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="expected path to be a str or os.PathLike"):
        gpucnn.load_model(3)


def test_the_readme_load_and_save_example_runs(monkeypatch, tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    code = next(block for block in blocks if "gpucnn.load_model(" in block)
    monkeypatch.chdir(tmp_path)
    folder = Path("runs/digits-small-20250101-120000")
    folder.mkdir(parents=True)
    tiny_model().save(folder)  # a folder: folder/model.npz
    scope = {"images": toy_data(5)[0], "__name__": "readme"}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["labels"].shape == (5,) and Path("my-model.npz").is_file()


# ---------------------------------------------------------------------- 3. callbacks
def make_trainer(callbacks=(), model=None, lr=0.05, **options) -> Trainer:
    return Trainer(
        model or tiny_model(), SGD(lr=lr), callbacks=callbacks, progress=False, log=None, **options
    )


class Recorder(Callback):
    """Records every hook call in order; reads the batch loss every other batch."""

    def __init__(self):
        self.calls: list[tuple] = []

    def on_train_begin(self, trainer):
        self.calls.append(("train_begin", trainer.epoch))

    def on_epoch_begin(self, trainer, epoch):
        self.calls.append(("epoch_begin", epoch, trainer.optimizer.lr))

    def on_batch_end(self, trainer, batch, logs):
        loss = logs["loss"] if batch % 2 == 0 else None
        self.calls.append(("batch_end", batch, logs["size"], loss))

    def on_epoch_end(self, trainer, epoch, logs):
        self.calls.append(("epoch_end", epoch))

    def on_train_end(self, trainer):
        self.calls.append(("train_end",))


def test_callback_hooks_run_in_order_with_batch_logs():
    x, y = toy_data(40)
    recorder = Recorder()
    make_trainer([recorder]).fit(x, y, epochs=2, batch_size=16)
    kinds = [c[0] for c in recorder.calls]
    per_epoch = ["epoch_begin", "batch_end", "batch_end", "batch_end", "epoch_end"]
    assert kinds == ["train_begin", *per_epoch, *per_epoch, "train_end"]
    batches = [c for c in recorder.calls if c[0] == "batch_end"][:3]
    assert [(b, size) for _, b, size, _ in batches] == [(0, 16), (1, 16), (2, 8)]
    assert all(math.isfinite(c[3]) for c in batches if c[1] % 2 == 0)


def test_the_batch_loss_equals_a_forward_pass_before_the_step():
    """logs["loss"] is the batch's mean loss (checked against an independent forward pass)."""
    x, y = toy_data(16)
    model = tiny_model()
    before = tiny_model()
    before.load_state_dict(model.state_dict())
    seen = []

    class Loss(Callback):
        def on_batch_end(self, trainer, batch, logs):
            seen.append(logs["loss"])

    make_trainer([Loss()], model=model).fit(x, y, epochs=1, batch_size=16)
    # one batch = the whole set, in the shuffle order: the mean loss does not depend on order
    logits = before.forward(x, training=True)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert seen[0] == pytest.approx(float(-log_p[np.arange(16), y].mean()), rel=1e-5)


def test_batch_logs_read_the_device_loss_only_when_asked():
    class Counted:
        reads = 0

        def copy(self):
            return self

        def __float__(self):
            Counted.reads += 1
            return 0.5

    logs = BatchLogs(Counted(), 8)
    assert logs["size"] == 8 and Counted.reads == 0 and set(logs) == {"loss", "size"}
    assert logs["loss"] == 0.5 and logs["loss"] == 0.5 and Counted.reads == 1


def test_only_callbacks_that_override_on_batch_end_are_called_per_batch():
    trainer = make_trainer([EarlyStopping(), Recorder()])
    trainer.fit(*toy_data(16), epochs=1, batch_size=8)
    assert [type(c) for c in trainer._batch_callbacks] == [Recorder]


def test_an_lr_assignment_in_a_callback_lasts_across_epochs():
    """The bug: the trainer recomputed lr = base_lr * schedule(epoch) and lost the change."""

    class Halve(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 1:
                trainer.optimizer.lr *= 0.5

    trainer = make_trainer([Halve()], lr=0.1)
    history = trainer.fit(*toy_data(16), epochs=3, batch_size=8)
    assert history["lr"] == pytest.approx([0.1, 0.05, 0.05])
    assert trainer.lr_multiplier == pytest.approx(0.5)


def test_an_lr_assignment_scales_the_rest_of_the_schedule():
    trainer = make_trainer(lr=0.1, schedule=StepLR(step_size=1, gamma=0.5))
    x, y = toy_data(16)
    trainer.fit(x, y, epochs=1, batch_size=8)
    trainer.optimizer.lr = 0.2  # between fit calls: twice the 0.1 the trainer set for epoch 1
    history = trainer.fit(x, y, epochs=2, batch_size=8)
    assert history["lr"] == pytest.approx([0.1, 2 * 0.05, 2 * 0.025])  # the schedule goes on


def test_reduce_lr_on_plateau_scales_the_multiplier_with_a_floor():
    plateau = ReduceLROnPlateau("loss", factor=0.5, patience=1, min_lr=0.03, min_delta=0.0)
    trainer = make_trainer([plateau], lr=0.1)
    logs = {"loss": 1.0}
    trainer.optimizer.lr = 0.1
    trainer._lr_set = 0.1
    for epoch, expected in [(1, 0.1), (2, 0.05), (3, 0.03), (4, 0.03)]:
        plateau.on_epoch_end(trainer, epoch, logs)  # never improves after the first
        assert trainer.optimizer.lr == pytest.approx(expected)
    assert plateau.reductions == 2 and trainer.lr_multiplier == pytest.approx(0.3)
    trainer._set_epoch_lr()  # the next epoch keeps the reduced rate (constant schedule)
    assert trainer.optimizer.lr == pytest.approx(0.03)


def test_reduce_lr_on_plateau_cooldown_and_improvement_reset_the_wait():
    plateau = ReduceLROnPlateau("val_accuracy", factor=0.5, patience=2, cooldown=1)
    trainer = make_trainer(lr=0.1)
    for accuracy in [0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9]:
        plateau.on_epoch_end(trainer, 1, {"val_accuracy": accuracy})
    # reduced after epoch 3; epoch 4 cooled down; epochs 5 and 7 waited, 6 improved
    assert plateau.reductions == 1 and plateau.wait == 1
    assert trainer.optimizer.lr == pytest.approx(0.05)


def test_reduce_lr_on_plateau_needs_its_monitored_value():
    trainer = make_trainer([ReduceLROnPlateau()])
    with pytest.raises(ValueError, match="expected a value of 'val_loss' in the epoch's logs"):
        trainer.fit(*toy_data(16), epochs=1, batch_size=8)


def test_model_checkpoint_saves_the_best_epoch_only(tmp_path):
    x, y = toy_data(48)
    checkpoint = ModelCheckpoint(tmp_path / "best.npz", monitor="val_loss")
    trainer = make_trainer([checkpoint], lr=0.05)
    history = trainer.fit(x[:32], y[:32], validation_data=(x[32:], y[32:]), epochs=4, batch_size=8)
    best = int(np.argmin(history["val_loss"])) + 1
    meta = load_checkpoint(tmp_path / "best.npz").meta
    assert meta["epoch"] == best == checkpoint.best_epoch
    assert meta["monitor"]["val_loss"] == pytest.approx(min(history["val_loss"]))
    assert gpucnn.load_model(tmp_path / "best.npz", backend="numpy").get_config() == (
        trainer.model.get_config()
    )


def test_model_checkpoint_every_epoch_formats_the_path(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path / "m-{epoch:02d}-{loss:.2f}.npz", save_best_only=False)
    history = make_trainer([checkpoint]).fit(*toy_data(16), epochs=2, batch_size=8)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"m-{e + 1:02d}-{history['loss'][e]:.2f}.npz" for e in range(2)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"path": "m-{epok}.npz"},
            r"expected path fields among epoch, loss, .*received 'm-\{epok\}",
        ),
        ({"path": 3}, "expected path to be a str or os.PathLike; received 3"),
        ({"path": "m.npz", "monitor": "val_los"}, "expected monitor"),
        ({"path": "m.npz", "save_best_only": 1}, "save_best_only"),
    ],
)
def test_model_checkpoint_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        ModelCheckpoint(**kwargs)


def test_csv_logger_writes_a_header_and_one_row_per_epoch(tmp_path):
    path = tmp_path / "logs" / "history.csv"
    trainer = make_trainer([CSVLogger(path)])
    x, y = toy_data(16)
    trainer.fit(x, y, epochs=2, batch_size=8)
    trainer.fit(x, y, epochs=1, batch_size=8)  # a second fit appends
    import csv

    rows = list(csv.DictReader(path.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["loss"]) for r in rows] == trainer.history["loss"]
    assert rows[0]["val_loss"] == ""  # no validation data
    make_trainer([CSVLogger(path)]).fit(x, y, epochs=1, batch_size=8)  # a new training
    assert len(path.read_text().splitlines()) == 2


def test_csv_logger_drops_rows_after_the_resumed_epoch(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("epoch,loss\n1,0.5\n2,0.4\n3,0.3\n")
    trainer = make_trainer([CSVLogger(path)])
    trainer.epoch = 2  # as restored from the checkpoint of epoch 2
    trainer.callbacks[0].on_train_begin(trainer)
    assert path.read_text() == "epoch,loss\n1,0.5\n2,0.4\n"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ReduceLROnPlateau(factor=1.0), r"expected factor in \(0, 1\)"),
        (lambda: ReduceLROnPlateau(patience=-1), "expected patience"),
        (lambda: ReduceLROnPlateau(monitor="acc"), "expected monitor"),
        (lambda: CSVLogger("h.csv", separator="."), "expected separator"),
        (lambda: CSVLogger(None), "expected path"),
    ],
)
def test_callbacks_refuse_bad_arguments(make, message):
    with pytest.raises(ArgumentError, match=message):
        make()


def test_callback_state_and_the_lr_multiplier_resume_from_a_checkpoint(tmp_path):
    x, y = toy_data(48)
    data = dict(validation_data=(x[32:], y[32:]), batch_size=8)

    def trainer_with_callbacks(path):
        return make_trainer(
            [
                ReduceLROnPlateau("val_accuracy", factor=0.5, patience=1, min_delta=1.0),
                ModelCheckpoint(tmp_path / "best.npz", monitor="val_loss"),
            ],
            checkpoint_path=path,
        )

    whole = trainer_with_callbacks(tmp_path / "whole.npz")
    whole.fit(x[:32], y[:32], epochs=4, **data)
    first = trainer_with_callbacks(tmp_path / "ckpt.npz")
    first.fit(x[:32], y[:32], epochs=2, **data)
    resumed = trainer_with_callbacks(tmp_path / "ckpt.npz")
    resumed.restore(load_checkpoint(tmp_path / "ckpt.npz"))
    assert resumed.lr_multiplier == first.lr_multiplier < 1
    assert resumed.callbacks[0].state_dict() == first.callbacks[0].state_dict()
    assert resumed.callbacks[1].state_dict() == first.callbacks[1].state_dict()
    resumed.fit(x[:32], y[:32], epochs=2, **data)
    assert resumed.history["lr"] == whole.history["lr"]
    for name, value in whole.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value)


def test_callback_and_early_stopping_still_import_from_the_trainer():
    import gpucnn.callbacks
    import gpucnn.trainer

    assert gpucnn.trainer.Callback is gpucnn.callbacks.Callback
    assert gpucnn.trainer.EarlyStopping is gpucnn.callbacks.EarlyStopping


# ---------------------------------------------------------------------- 2. train --init
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """One short digits run (8x8 images, 10 classes) to start others from; the network without
    BatchNorm, whose predictions a fine-tuning at a tiny learning rate leaves as they are (one
    epoch leaves running statistics behind the weights, and fine-tuning updates them)."""
    out = tmp_path_factory.mktemp("digits") / "run"
    assert run("train", "--epochs", 1, "--model", "small", "--out", out, "--backend", "numpy") == 0
    return out


def three_class_digits(path: Path, size: int = 8) -> Path:
    """An .npz of the digits 0-2 (own data with 3 classes), or blank images of another size."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = digits.target < 3
    x = (digits.images[keep][:, None] / 16).astype(np.float32)
    if size != 8:
        x = np.zeros((len(x), 1, size, size), np.float32)
    np.savez(path, x=x, y=digits.target[keep])
    return path


def test_init_from_keeps_every_array_and_replaces_only_the_head(digits_run):
    saved = gpucnn.load_model(digits_run, backend="numpy").state_dict()
    same, replaced = init_from(digits_run, (1, 8, 8), 10, backend="numpy")
    assert replaced is None
    for name, value in saved.items():
        np.testing.assert_array_equal(same.state_dict()[name], value)
    adapted, replaced = init_from(digits_run / "model.npz", (1, 8, 8), 3, backend="numpy")
    assert adapted.output_shape == (3,) and replaced.path == "dense_2"
    assert (replaced.old_units, replaced.new_units) == (10, 3)
    state = adapted.state_dict()
    for name, value in saved.items():
        if name.startswith("dense_2."):
            assert state[name].shape[-1] == 3
        else:
            np.testing.assert_array_equal(state[name], value)


def test_init_from_refuses_a_model_without_a_dense_head(tmp_path):
    model = Sequential([Conv2D(2, 3, padding=1)], input_shape=(1, 8, 8), backend="numpy")
    model.save(tmp_path / "conv.npz")
    with pytest.raises(CheckpointError, match="expected a model whose outputs come from a Dense"):
        init_from(tmp_path / "conv.npz", (1, 8, 8), 3, backend="numpy")


def test_train_init_fine_tunes_with_its_own_settings(digits_run, tmp_path, capsys):
    out = tmp_path / "tuned"
    args = ["--epochs", 1, "--lr", 1e-7, "--optimizer", "adam", "--backend", "numpy"]
    assert run("train", "--init", digits_run, "--out", out, *args) == 0
    assert "replaced" not in capsys.readouterr().out
    meta = load_checkpoint(out / "model.npz").meta
    assert meta["run"]["init"] == str((digits_run / "model.npz").resolve())
    assert meta["run"]["lr"] == 1e-7 and meta["run"]["optimizer"] == "adam"
    assert meta["architecture"] == load_checkpoint(digits_run / "model.npz").meta["architecture"]
    # Adam's steps are about lr: the tuned model still predicts as the one it began from
    before = json.loads((digits_run / "metrics.json").read_text())["test_accuracy"]
    after = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    assert abs(after - before) < 0.01


def test_train_init_on_data_with_other_classes_replaces_the_last_dense(
    digits_run, tmp_path, capsys
):
    data = three_class_digits(tmp_path / "three.npz")
    out = tmp_path / "three"
    args = ["--data", data, "--epochs", 2, "--backend", "numpy", "--out", out]
    assert run("train", "--init", digits_run / "model.npz", *args) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "replaced" in line]
    assert lines == [
        "gpucnn: --init: replaced the last Dense layer 'dense_2' (10 classes) by a new one with "
        "3 outputs, freshly initialised"
    ]
    assert gpucnn.load_model(out, backend="numpy").output_shape == (3,)
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.8
    # the new run resumes from its own checkpoint, without the --init file
    assert run("train", "--resume", out, "--epochs", 3) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--model", "small"],
            "--init starts a new run from a saved model; received it with --model",
        ),
        (
            ["--resume", "RUN"],
            "--init starts a new run from a saved model; received it with --resume",
        ),
    ],
)
def test_train_init_refuses_model_and_resume(digits_run, capsys, extra, message):
    extra = [str(digits_run) if e == "RUN" else e for e in extra]
    assert run("train", "--init", digits_run, *extra) == 2
    assert message in one_line_error(capsys)


def test_train_init_refuses_another_input_shape(digits_run, tmp_path, capsys):
    data = three_class_digits(tmp_path / "nine.npz", size=9)
    code = run("train", "--init", digits_run, "--data", data, "--out", tmp_path / "o")
    assert code == 2
    line = one_line_error(capsys)
    assert (
        "expected a model for the data's input shape (1, 9, 9); received a model that takes (1, 8, 8)"
        in line
    )


def test_train_init_refuses_a_missing_file_and_its_own_folder_as_out(digits_run, tmp_path, capsys):
    assert run("train", "--init", tmp_path / "none.npz") == 2
    assert "not found" in one_line_error(capsys)
    assert run("train", "--init", digits_run, "--out", digits_run, "--overwrite") == 2
    assert "is the --init path" in one_line_error(capsys)


# ---------------------------------------------------------------------- 4. custom layers
PLUGIN = ROOT / "tests" / "data" / "first_day_plugin.py"
LEAKY = {"type": "FirstDayLeakyReLU", "alpha": 0.05}


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory) -> Path:
    """A digits run whose JSON architecture uses the plugin's layer."""
    folder = tmp_path_factory.mktemp("plugin")
    arch = folder / "arch.json"
    conv = {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"}
    layers = [conv, LEAKY, {"type": "Flatten"}, {"type": "Dense", "units": 10}]
    arch.write_text(json.dumps(layers))
    out = folder / "run"
    args = ["--model", arch, "--epochs", 2, "--out", out, "--backend", "numpy"]
    assert run("train", *args, "--plugin", PLUGIN) == 0
    return out


def test_a_plugin_layer_trains_from_json_and_is_saved_with_its_config(plugin_run):
    config = load_checkpoint(plugin_run / "model.npz").meta["architecture"]
    assert {k: config["layers"][1][k] for k in LEAKY} == LEAKY
    assert json.loads((plugin_run / "metrics.json").read_text())["test_accuracy"] > 0.7


def test_evaluate_predict_and_export_read_the_plugin_layer(plugin_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert run("evaluate", plugin_run, "--plugin", PLUGIN) == 0
    images = tmp_path / "images.npy"
    np.save(images, toy_data(3)[0])
    assert run("predict", plugin_run, images, "--plugin", PLUGIN, "--json") == 0
    onnx_file = tmp_path / "m.onnx"
    assert run("export", plugin_run, "--plugin", PLUGIN, "-o", onnx_file, "--check") == 0
    out = capsys.readouterr().out
    assert "largest difference" in out and onnx_file.is_file()
    assert float(out.rsplit("largest difference", 1)[1].split()[0]) < 1e-4


def test_without_the_plugin_the_unknown_layer_names_the_flag(tmp_path, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps([{"type": "NoSuchLayer"}, {"type": "Flatten"}]))
    assert run("train", "--model", arch, "--out", tmp_path / "o") == 2
    line = one_line_error(capsys)
    assert "received 'NoSuchLayer'" in line and "--plugin FILE.py" in line


def test_a_plugin_given_by_module_name_is_imported_from_the_working_folder(
    tmp_path, monkeypatch, capsys
):
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "first_day_module_plugin.py").write_text("IMPORTED = True\n")
    arch = tmp_path / "a.json"
    arch.write_text(json.dumps([{"type": "Flatten"}, {"type": "Dense", "units": 10}]))
    args = ["--model", arch, "--epochs", 1, "--out", tmp_path / "o", "--backend", "numpy"]
    assert run("train", *args, "--plugin", "first_day_module_plugin") == 0
    assert sys.modules["first_day_module_plugin"].IMPORTED


@pytest.mark.parametrize(
    "source, name, message",
    [
        (None, "missing.py", "--plugin missing.py: expected a Python file; it does not exist"),
        (None, "no_such_module_xyz", "--plugin no_such_module_xyz: expected an importable module"),
        ("raise RuntimeError('boom')\n", "bad.py", "importing it raised RuntimeError: boom"),
        ("def broken(:\n", "syntax.py", "importing it raised SyntaxError"),
    ],
)
def test_a_plugin_that_cannot_be_imported_is_one_line(
    tmp_path, monkeypatch, capsys, source, name, message
):
    monkeypatch.chdir(tmp_path)
    if source is not None:
        (tmp_path / name).write_text(source)
    assert run("evaluate", "model.npz", "--plugin", name) == 2
    assert message in one_line_error(capsys)


def test_registering_a_class_again_replaces_it_but_another_class_is_refused():
    from gpucnn.layers import LAYERS, Layer

    def define():
        class FirstDayTwice(Layer):
            pass

        return FirstDayTwice

    LAYERS.register("FirstDayTwice")(define())
    LAYERS.register("FirstDayTwice")(define())  # a notebook cell run again

    class Other(Layer):
        pass

    with pytest.raises(ValueError, match="'FirstDayTwice' is already registered .*choose another"):
        LAYERS.register("FirstDayTwice")(Other)


# ---------------------------------------------------------------------- 5. smaller things
def test_flags_are_never_abbreviated(capsys):
    assert run("train", "--epoch", 2) == 2
    assert "unrecognized arguments: --epoch 2" in one_line_error(capsys)


@pytest.mark.parametrize(
    "argv, suggestion",
    [
        (["trian"], "did you mean 'train'?"),
        (["evalute", "m.npz"], "did you mean 'evaluate'?"),
        (["train", "--dataset", "mnits"], "did you mean 'mnist'?"),
    ],
)
def test_a_mistyped_command_or_choice_gets_a_suggestion(capsys, argv, suggestion):
    assert run(*argv) == 2
    assert suggestion in one_line_error(capsys)


def help_text(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(command, "--help")
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_train_help_shows_the_recipe_defaults(capsys):
    from gpucnn.recipes import RECIPES

    text = help_text(capsys, "train")
    for key in ("epochs", "batch_size", "lr"):
        values = {recipe[key] for recipe in RECIPES.values()}
        if len(values) == 1:
            assert f"default: {values.pop()} (every dataset's recipe)" in text
        else:
            digits, mnist = RECIPES["digits"][key], RECIPES["mnist"][key]
            assert f"default: from the dataset's recipe (digits: {digits}, mnist: {mnist}" in text


def test_a_model_recipe_fills_the_flags_not_given(tmp_path):
    """--model resnet on (Fashion-)MNIST takes its recipe; any flag given overrides its part,
    and the default model of a dataset keeps the dataset's recipe."""
    from gpucnn.cli import build_parser
    from gpucnn.cli.train import _resolve_run
    from gpucnn.recipes import MODEL_RECIPES, RECIPES

    def resolved(*argv):
        args = build_parser().parse_args(["train", "--out", str(tmp_path / "run"), *argv])
        return _resolve_run(args)[0]

    fashion = resolved("--dataset", "fashion-mnist", "--model", "resnet")
    for key, value in MODEL_RECIPES["fashion-mnist", "resnet"].items():
        assert fashion[key] == value, key
    assert fashion["augment_flip"] is True and fashion["nesterov"] is True
    mnist = resolved("--dataset", "mnist", "--model", "resnet", "--epochs", "2", "--no-nesterov")
    assert mnist["epochs"] == 2 and mnist["nesterov"] is False and mnist["augment_flip"] is False
    assert mnist["augment_shift"] == 2 and mnist["label_smoothing"] == 0.1
    plain = resolved("--dataset", "mnist")
    assert plain["model"] == RECIPES["mnist"]["model"] and plain["augment_shift"] == 0
    assert plain["epochs"] == RECIPES["mnist"]["epochs"] and plain["label_smoothing"] == 0.0
    flipped = resolved("--dataset", "fashion-mnist", "--model", "resnet", "--no-augment-flip")
    assert flipped["augment_flip"] is False
    # another optimizer: the recipe's SGD settings give way to the optimizer's own defaults
    adamw = resolved("--dataset", "mnist", "--model", "resnet", "--optimizer", "adamw")
    assert adamw["lr"] == RECIPES["mnist"]["lr"] and adamw["weight_decay"] is None
    assert adamw["augment_shift"] == 2 and adamw["label_smoothing"] == 0.1
    still = resolved("--dataset", "mnist", "--model", "resnet", "--momentum", "0")
    assert still["nesterov"] is False and still["momentum"] == 0


def test_evaluate_has_a_description(capsys):
    assert "Evaluate a saved model on the test split" in help_text(capsys, "evaluate")


def test_predict_takes_a_run_folder(digits_run, tmp_path, capsys):
    images = tmp_path / "x.npy"
    np.save(images, toy_data(2)[0])
    assert run("predict", digits_run, images, "--json", "--backend", "numpy") == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 2 and all("label" in r for r in results)


def test_predict_names_a_folder_without_a_model(tmp_path, capsys):
    assert run("predict", tmp_path, tmp_path / "x.npy") == 2
    assert "expected a run folder with model.npz; found none" in one_line_error(capsys)


def test_progress_bars_are_plain_tqdm_without_ipywidgets(monkeypatch):
    """tqdm.auto without ipywidgets warns 'IProgress not found' in a notebook: not chosen."""
    import importlib
    import importlib.util
    import warnings

    import tqdm

    import gpucnn.progress

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ipywidgets" else real(name, *a),
    )
    try:
        module = importlib.reload(gpucnn.progress)
        assert module.tqdm is tqdm.std.tqdm
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            module.progress_bar(3, "x", enabled=True).close()
    finally:
        monkeypatch.undo()
        importlib.reload(gpucnn.progress)


def test_the_package_is_typed_and_the_onnx_extra_can_check_exports():
    tomllib = pytest.importorskip("tomllib")
    assert (Path(gpucnn.__file__).parent / "py.typed").is_file()  # installed with the package
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["gpucnn"]
    extra = project["project"]["optional-dependencies"]["onnx"]
    assert any(d.startswith("onnxruntime") for d in extra)
