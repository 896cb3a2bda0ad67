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
from gpucnn.checkpoint import CheckpointError, load_checkpoint
from gpucnn.cli import main
from gpucnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, ReLU

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
    gpucnn.trainer.Trainer(model, SGD(lr=0.05), progress=False, log=None).fit(x, y, epochs=1)
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
    with pytest.raises(CheckpointError, match="does not exist"):
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
