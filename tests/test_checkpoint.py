"""Checkpoints: round trip, atomic writes, no pickle, refusal of mismatched architectures."""

import json
import zipfile

import numpy as np
import pytest

from gpucnn import SGD, Sequential
from gpucnn.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    restore_model,
    restore_optimizer,
    save_checkpoint,
)
from gpucnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU


def net(filters=3, seed=0):
    layers = [Conv2D(filters, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(4)]
    return Sequential(layers, input_shape=(1, 6, 6), backend="numpy", seed=seed)


def test_round_trip_restores_weights_and_architecture(tmp_path):
    model = net()
    path = save_checkpoint(tmp_path / "m.npz", model, note="hello")
    loaded, checkpoint = load_model(path, backend="numpy")
    assert checkpoint.meta["note"] == "hello"
    x = np.random.default_rng(0).random((2, 1, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert loaded.get_config() == model.get_config()


def test_optimizer_state_is_saved(tmp_path):
    model = net()
    optimizer = SGD(0.1, momentum=0.9)
    model.loss_and_backward(np.zeros((2, 1, 6, 6), np.float32), np.array([0, 1]))
    optimizer.step(model)
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "c.npz", model, optimizer))
    assert checkpoint.meta["optimizer"]["steps"] == 1
    assert set(checkpoint.optimizer) == {f"{p.name}/velocity" for p in model.parameters()}


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path, monkeypatch):
    model = net()
    path = save_checkpoint(tmp_path / "c.npz", model)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(CheckpointError, match="disk full; the previous c.npz is intact"):
        save_checkpoint(path, net(seed=5))
    assert path.read_bytes() == before  # the previous checkpoint survived intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_loading_never_unpickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array([{"format": "gpucnn-checkpoint"}], dtype=object))
    with pytest.raises(CheckpointError, match="not a readable gpucnn checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content,message",
    [
        (
            b"not a zip at all",
            "not a gpucnn checkpoint: expected a .npz archive; received a text file",
        ),
        (None, "no readable 'meta' entry"),
    ],
)
def test_corrupt_checkpoints_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if content is None:
        np.savez(path, weights=np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", net())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_format_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, meta=np.array(json.dumps({"format": "something-else"})))
    with pytest.raises(
        CheckpointError, match="expected format 'gpucnn-checkpoint'; received 'something-else'"
    ):
        load_checkpoint(path)


def test_a_different_architecture_is_refused_clearly(tmp_path):
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "c.npz", net(filters=3)))
    with pytest.raises(
        CheckpointError,
        match=r"architecture does not match.*Conv2D\(filters=5.*received.*Conv2D\(filters=3",
    ):
        restore_model(checkpoint, net(filters=5))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.npz")


def test_npz_holds_only_plain_arrays(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", net(), SGD(0.1))
    with zipfile.ZipFile(path) as archive:
        assert "meta.npy" in archive.namelist()
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)


def test_restore_optimizer_mirrors_save(tmp_path):
    model = net()
    optimizer = SGD(0.1, momentum=0.9, clip_norm=3.0)
    model.loss_and_backward(np.zeros((2, 1, 6, 6), np.float32), np.array([0, 1]))
    optimizer.step(model)
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "c.npz", model, optimizer))
    again = SGD(0.1, momentum=0.9, clip_norm=3.0)
    restore_optimizer(checkpoint, again)
    saved, restored = optimizer.state_dict(), again.state_dict()
    assert {k: v for k, v in saved.items() if k != "arrays"} == {
        k: v for k, v in restored.items() if k != "arrays"
    }
    assert all(np.array_equal(saved["arrays"][k], restored["arrays"][k]) for k in saved["arrays"])
    with pytest.raises(CheckpointError, match="different optimizer"):
        restore_optimizer(checkpoint, SGD(0.1, momentum=0.5))
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore_optimizer(load_checkpoint(save_checkpoint(tmp_path / "m.npz", model)), again)


def test_a_checkpoint_from_before_optimizer_clipping_still_resumes(tmp_path):
    """Older files kept clip_norm in the trainer: an optimizer config without it still matches."""
    model = net()
    optimizer = SGD(0.1, momentum=0.9)
    model.loss_and_backward(np.zeros((2, 1, 6, 6), np.float32), np.array([0, 1]))
    optimizer.step(model)
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "c.npz", model, optimizer))
    restore_optimizer(checkpoint, SGD(0.1, momentum=0.9, clip_norm=5.0))
