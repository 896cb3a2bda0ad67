"""Reliability of the command line: bad inputs and faults get one line, run folders never lose
results, resume works from anywhere."""

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import python_path

from gpucnn import SGD, Sequential
from gpucnn.checkpoint import STATE_PREFIXES, load_checkpoint, save_checkpoint
from gpucnn.cli import main
from gpucnn.data import write_idx
from gpucnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from gpucnn.runfolder import LOCK_NAME, locked
from gpucnn.trainer import EarlyStopping, Trainer

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return main([str(a) for a in args])


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mode of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch digits run (the folder the bad inputs must leave unchanged)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert run("train", "--epochs", 1, "--out", out, "--backend", "numpy", "--no-progress") == 0
    return out


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, idat: bytes, ihdr: bytes | None = None) -> bytes:
    header = ihdr if ihdr is not None else struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def npz_with_meta(path: Path, meta, params=None) -> None:
    version = meta.get("version") if isinstance(meta, dict) else None
    prefix = STATE_PREFIXES.get(version, "param/")
    arrays = {f"{prefix}{k}": v for k, v in (params or {}).items()}
    np.savez(path, meta=np.array(meta if isinstance(meta, str) else json.dumps(meta)), **arrays)


@pytest.fixture(scope="module")
def bad(tmp_path_factory, trained):
    """A folder of malformed files, made once."""
    d = tmp_path_factory.mktemp("bad")
    layers = lambda *ls: json.dumps(list(ls))  # noqa: E731
    (d / "deep.json").write_text("[" * 100_000)
    (d / "type_list.json").write_text(layers({"type": ["Conv2D"], "filters": 2, "kernel_size": 3}))
    (d / "str_filters.json").write_text(
        layers({"type": "Conv2D", "filters": "32", "kernel_size": 3}, {"type": "Flatten"})
    )
    (d / "huge.json").write_text(
        layers(
            {"type": "Conv2D", "filters": 10**12, "kernel_size": 3},
            {"type": "Flatten"},
            {"type": "Dense", "units": 10},
        )
    )
    (d / "object.json").write_text(json.dumps({"a": 1}))
    (d / "shape.json").write_text(json.dumps({"input_shape": 5, "layers": []}))
    (d / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (d / "empty_list.json").write_text("[]")
    (d / "ints.json").write_text("[1, 2]")
    (d / "bogus_arg.json").write_text(layers({"type": "Dense", "units": 10, "bogus": 1}))
    np.save(d / "array.npy", np.zeros((2, 8, 8), np.float32))
    (d / "text.npz").write_text("hello, this is not a model\n")
    (d / "empty.npz").write_bytes(b"")
    (d / "image.npz").write_bytes(png(1, 1, zlib.compress(b"\x00\x00")))
    model = load_checkpoint(trained / "model.npz")
    params = dict(model.params)
    first = next(iter(params))
    params[first] = params[first].copy()
    params[first].flat[0] = np.nan
    npz_with_meta(d / "nan.npz", model.meta, params)
    npz_with_meta(d / "meta_deep.npz", "[" * 100_000)
    npz_with_meta(d / "meta_list.npz", [1])
    npz_with_meta(d / "meta_noarch.npz", {"format": "gpucnn-checkpoint", "version": 1})
    npz_with_meta(
        d / "meta_badarch.npz",
        {
            "format": "gpucnn-checkpoint",
            "version": 1,
            "architecture": {"input_shape": [1, 8, 8], "layers": [{"type": ["Dense"]}]},
        },
    )
    data = (trained / "model.npz").read_bytes()
    (d / "truncated.npz").write_bytes(data[: len(data) // 2])
    final = d / "final_only"
    final.mkdir()
    shutil.copy(trained / "model.npz", final / "checkpoint.npz")
    # .npy files
    header = b"\x93NUMPY\x01\x00"
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 8, 8), }"
    text += b" " * (117 - len(text)) + b"\n"
    (d / "huge_header.npy").write_bytes(header + struct.pack("<H", len(text)) + text + b"\0" * 64)
    np.save(d / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    full = (d / "array.npy").read_bytes()
    (d / "truncated.npy").write_bytes(full[:-10])
    np.save(d / "overflow.npy", np.full((1, 1, 8, 8), 3e38, np.float32))
    np.save(d / "nan_pixels.npy", np.full((1, 1, 8, 8), np.nan, np.float32))
    np.save(d / "wrong_size.npy", np.zeros((1, 1, 28, 28), np.float32))
    # PNGs
    (d / "bomb.png").write_bytes(png(8, 8, zlib.compress(b"\x00" * 20_000_000, 9)))
    (d / "short_ihdr.png").write_bytes(png(8, 8, b"", ihdr=b"\x00\x00"))
    (d / "huge_dims.png").write_bytes(png(100_000, 100_000, zlib.compress(b"\x00" * 100)))
    (d / "fake.png").write_bytes(b"not a png")
    (d / "bad_zlib.png").write_bytes(png(8, 8, b"\x78\x9c garbage"))
    # IDX
    (d / "magic.idx").write_bytes(b"\x01\x02\x03\x04" + b"\0" * 10)
    write_idx(d / "ok.idx", np.zeros((2, 8, 8), np.uint8))
    (d / "truncated.idx").write_bytes((d / "ok.idx").read_bytes()[:-5])
    idx_header = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 1, 8, 8)
    (d / "bomb.idx.gz").write_bytes(gzip.compress(idx_header + b"\0" * 30_000_000))
    huge_header = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 2**31, 2**16, 2**16)
    (d / "huge.idx.gz").write_bytes(gzip.compress(huge_header + b"\0" * 10))
    (d / "bad.gz").write_bytes(b"\x1f\x8b" + b"\0" * 20)
    (d / "a_file").write_text("x")
    return d


# (argv, exit code, a fragment of the one stderr line). {run}: the finished run folder,
# {model}: its model.npz, {bad}: the malformed files, {tmp}: an empty folder per case.
CASES = [
    # run folders
    ("train --out {run}", 2, "holds an earlier run"),
    ("train --out {bad}/a_file/sub", 2, "cannot write there"),
    ("train --resume {run} --batch-size 64 --lr 0.001 --optimizer adam --out {tmp}/x", 2,
     "--batch-size, --lr, --optimizer, --out would change it"),
    ("train --resume {run} --seed 3", 2, "--seed would change it"),
    ("train --resume {run} --overwrite", 2, "--overwrite would change it"),
    ("train --resume {run}", 2, "already trained 1 of 1 epochs"),
    ("train --resume {run} --epochs 0", 2, "--epochs must be >= 1"),
    ("train --resume {tmp}", 2, "checkpoint.npz not found"),
    ("train --resume {bad}/final_only", 2, "final_only/checkpoint.npz: this checkpoint holds final weights only"),
    # flags
    ("train --seed -1", 2, "--seed must be an integer from 0 to 4294967294"),
    ("train --val-fraction 0.9999 --out {tmp}/o", 2, "leaves no training images"),
    ("train --val-fraction 0.0001 --out {tmp}/o", 2, "leaves no validation images"),
    ("train --val-fraction 1.5", 2, "--val-fraction must be in [0, 1)"),
    ("train --batch-size 0", 2, "--batch-size must be >= 1"),
    ("train --lr -1", 2, "--lr must be a positive number"),
    ("train --lr nan", 2, "--lr must be a positive number"),
    ("train --clip-norm 0", 2, "--clip-norm must be a positive number"),
    ("train --momentum -0.5", 2, "--momentum must be >= 0"),
    ("train --patience 2 --val-fraction 0", 2, "--patience needs validation data"),
    ("train --patience 0", 2, "--patience must be >= 1"),
    # architecture files
    ("train --model {bad}/deep.json --out {tmp}/o", 2, "nested too deeply"),
    ("train --model {bad}/type_list.json --out {tmp}/o", 2, "expected a layer type in"),
    ("train --model {bad}/str_filters.json --out {tmp}/o", 2, "filters"),
    ("train --model {bad}/huge.json --out {tmp}/o", 2, "out of memory"),
    ("train --model {bad}/object.json --out {tmp}/o", 2, "expected a list of layers"),
    ("train --model {bad}/shape.json --out {tmp}/o", 2, "does not match"),
    ("train --model {bad}/binary.json --out {tmp}/o", 2, "is not valid JSON"),
    ("train --model {bad}/empty_list.json --out {tmp}/o", 2, "non-empty list"),
    ("train --model {bad}/ints.json --out {tmp}/o", 2, "expected a layer as a dict"),
    ("train --model {bad}/bogus_arg.json --out {tmp}/o", 2, "bad arguments for layer Dense"),
    # model files
    ("evaluate {bad}/array.npy", 2, "received a .npy array"),
    ("evaluate {bad}/text.npz", 2, "received a text file"),
    ("evaluate {bad}/empty.npz", 2, "received an empty file"),
    ("evaluate {bad}/image.npz", 2, "received a PNG image"),
    ("evaluate {bad}/nan.npz", 2, "holds NaN/inf"),
    ("evaluate {bad}/meta_deep.npz", 2, "no readable 'meta' entry"),
    ("evaluate {bad}/meta_list.npz", 2, "expected format"),
    ("evaluate {bad}/meta_noarch.npz", 2, "no architecture"),
    ("evaluate {bad}/meta_badarch.npz", 2, "cannot rebuild the saved architecture"),
    ("evaluate {bad}/truncated.npz", 2, "not a readable gpucnn checkpoint"),
    ("evaluate {model} --dataset mnist --data-dir {tmp} --no-download", 2, "not found"),
    # images given to predict
    ("predict {model} {bad}/huge_header.npy", 2, "header declares shape"),
    ("predict {model} {bad}/objects.npy", 2, "Python objects"),
    ("predict {model} {bad}/truncated.npy", 2, "header declares shape"),
    ("predict {model} {bad}/overflow.npy", 2, "output is not finite"),
    ("predict {model} {bad}/nan_pixels.npy", 2, "nan_pixels.npy: expected finite input"),
    ("predict {model} {bad}/wrong_size.npy", 2, "expected 8x8 images"),
    ("predict {model} {tmp}/missing.png", 2, "file not found"),
    ("predict {model} {bad}/short_ihdr.png", 2, "corrupt PNG"),
    ("predict {model} {bad}/huge_dims.png", 2, "declares 100000x100000 pixels"),
    ("predict {model} {bad}/fake.png", 2, "not a PNG file"),
    ("predict {model} {bad}/bad_zlib.png", 2, "corrupt PNG data"),
    ("predict {model} {bad}/magic.idx", 2, "not an IDX file"),
    ("predict {model} {bad}/truncated.idx", 2, "truncated"),
    ("predict {model} {bad}/bomb.idx.gz", 2, "has trailing bytes"),
    ("predict {model} {bad}/huge.idx.gz", 2, "expected at most"),
    ("predict {model} {bad}/bad.gz", 2, "corrupt or truncated gzip"),
    # resources
    ("bench --model small --batch-size 1000000000 --backend numpy", 2,
     "out of memory: a synthetic batch of 1000000000 images needs"),
    ("bench --model {bad}/deep.json --backend numpy", 2, "nested too deeply"),
]  # fmt: skip


@pytest.mark.parametrize("argv,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line(argv, code, fragment, trained, bad, tmp_path, capsys):
    before = snapshot(trained)
    args = [
        a.format(run=trained, model=trained / "model.npz", bad=bad, tmp=tmp_path)
        for a in argv.split()
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpucnn: error: "), err
    assert "Traceback" not in err
    assert fragment in err, err
    runtime_warnings = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not runtime_warnings
    assert snapshot(trained) == before
    assert not (trained / LOCK_NAME).exists()


def test_at_least_forty_cases():
    assert len(CASES) >= 40


def test_png_with_more_data_than_declared_is_read_at_the_declared_size(trained, bad, capsys):
    # 20 MB of pixel data behind an 8x8 header: the decoder stops at the declared 64 pixels
    assert main(["predict", str(trained / "model.npz"), str(bad / "bomb.png")]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and captured.out.startswith(f"{bad / 'bomb.png'}: ")
    assert "error" not in captured.err


# ---------------------------------------------------------------------- run folders
def test_a_locked_run_folder_refuses_a_second_writer(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with locked(out):
        assert run("train", "--epochs", 1, "--out", out, "--backend", "numpy") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"in use by process {os.getpid()}" in err
    assert not any(out.iterdir())  # nothing written, lock released


def test_a_stale_lock_is_reported_and_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(f"{dead.pid} host\n")
    (out / ".checkpoint.npz.abc123.tmp").write_bytes(b"left by a killed write")
    assert run("train", "--epochs", 1, "--out", out, "--backend", "numpy", "--no-progress") == 0
    assert f"stale lock of process {dead.pid}" in capsys.readouterr().out
    assert not (out / LOCK_NAME).exists()
    assert not list(out.glob(".*.tmp"))  # the interrupted write's leftover is gone


def test_overwrite_only_when_asked_and_files_follow_the_umask(tmp_path, capsys):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert run("train", "--epochs", 1, "--out", out, "--backend", "numpy") == 0
        first = snapshot(out)
        assert run("train", "--epochs", 1, "--out", out, "--backend", "numpy") == 2
        assert snapshot(out) == first
        assert "--overwrite" in capsys.readouterr().err
        assert run("train", "--epochs", 1, "--out", out, "--seed", 5, "--overwrite") == 0
        assert snapshot(out) != first
    finally:
        os.umask(old)
    for name in ("model.npz", "checkpoint.npz", "metrics.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_unwritable_out_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run("train", "--out", blocker / "run") == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and "epoch" not in err


def test_full_disk_message_names_the_file_and_keeps_the_previous(tmp_path, monkeypatch):
    from gpucnn.checkpoint import CheckpointError

    model = Sequential([Flatten(), Dense(3)], input_shape=(1, 2, 2), backend="numpy")
    path = save_checkpoint(tmp_path / "c.npz", model)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(CheckpointError, match=r"c\.npz: No space left on device; the previous"):
        save_checkpoint(path, model)
    assert load_checkpoint(path).params


# ---------------------------------------------------------------------- resume
@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A 60 + 20 image MNIST-format dataset, accepted by pinning its own checksums."""
    import gpucnn.data.catalog as catalog
    import gpucnn.data.mnist as mnist

    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    pins = {}
    parts = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(60, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.arange(20, dtype=np.uint8) % 10,
    }
    for name, array in parts.items():
        write_idx(folder / name, array)
        pins[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    spec = dataclasses.replace(mnist.MNIST, gz_sha256=pins, idx_sha256=pins)
    monkeypatch.setattr(mnist, "MNIST", spec)
    monkeypatch.setattr(catalog, "MNIST", spec)
    return folder


def test_resume_after_moving_the_run_folder_and_the_data(tmp_path, tiny_mnist, monkeypatch, capsys):
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps([
        {"type": "Conv2D", "filters": 2, "kernel_size": 3}, {"type": "ReLU"},
        {"type": "MaxPool2D", "pool_size": 2}, {"type": "Flatten"}, {"type": "Dense", "units": 10},
    ]))  # fmt: skip
    common = ("--backend", "numpy", "--no-progress")
    assert run("train", "--dataset", "mnist", "--data-dir", tiny_mnist, "--model", arch,
               "--epochs", 1, "--batch-size", 16, "--out", tmp_path / "a", *common) == 0  # fmt: skip
    straight = tmp_path / "straight"
    assert run("train", "--dataset", "mnist", "--data-dir", tiny_mnist, "--model", arch,
               "--epochs", 2, "--batch-size", 16, "--out", straight, *common) == 0  # fmt: skip

    moved, data = tmp_path / "elsewhere" / "b", tmp_path / "moved-data"
    moved.parent.mkdir()
    (tmp_path / "a").rename(moved)
    tiny_mnist.rename(data)
    arch.unlink()  # the checkpoint holds the architecture
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert run("train", "--resume", moved, "--epochs", 2, "--no-download", *common) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-dir" in err
    assert run("train", "--resume", moved, "--epochs", 2, "--data-dir", data, "--no-download",
               *common) == 0  # fmt: skip
    a, b = load_checkpoint(straight / "model.npz"), load_checkpoint(moved / "model.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert json.loads((moved / "metrics.json").read_text())["epochs"] == 2
    # the new data folder is remembered: evaluate needs no --data-dir
    assert run("evaluate", moved / "model.npz", "--no-download", "--backend", "numpy") == 0


# ---------------------------------------------------------------------- Python API
def digits_split():
    from gpucnn.data import load_digits

    x, y = load_digits()
    return x[:300], y[:300], x[300:400], y[300:400]


def small_net(seed=0):
    return Sequential(
        [Conv2D(4, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(10)],
        input_shape=(1, 8, 8),
        backend="numpy",
        seed=seed,
    )


def test_a_second_fit_trains_that_many_more_epochs():
    x, y, xv, yv = digits_split()
    once, twice = small_net(), small_net()
    Trainer(once, SGD(0.05, momentum=0.9), seed=1, log=None).fit(x, y, epochs=4, batch_size=32)
    trainer = Trainer(twice, SGD(0.05, momentum=0.9), seed=1, log=None)
    trainer.fit(x, y, epochs=2, batch_size=32)
    history = trainer.fit(x, y, epochs=2, batch_size=32)
    assert trainer.epoch == 4 and len(history["loss"]) == 4
    for a, b in zip(once.parameters(), twice.parameters(), strict=True):
        assert np.array_equal(a.data, b.data), a.name


def test_early_stopping_state_is_checkpointed(tmp_path):
    x, y, xv, yv = digits_split()
    stopper = EarlyStopping("val_accuracy", patience=5)
    trainer = Trainer(small_net(), SGD(0.05), callbacks=[stopper],
                      checkpoint_path=tmp_path / "c.npz", log=None)  # fmt: skip
    trainer.fit(x, y, (xv, yv), epochs=3, batch_size=32)
    again = EarlyStopping("val_accuracy", patience=5)
    resumed = Trainer(small_net(seed=9), SGD(0.05), callbacks=[again], log=None)
    resumed.restore(load_checkpoint(tmp_path / "c.npz"))
    assert (again.best, again.best_epoch, again.wait) == (
        stopper.best, stopper.best_epoch, stopper.wait
    )  # fmt: skip
    assert again.best_weights.keys() == stopper.best_weights.keys()
    for key, value in stopper.best_weights.items():
        assert np.array_equal(again.best_weights[key], value)


def test_a_layer_cannot_join_two_models():
    shared = Dense(10)
    first = Sequential([Flatten(), shared], input_shape=(1, 8, 8), backend="numpy")
    with pytest.raises(ValueError, match="already belongs to another Sequential"):
        Sequential([Flatten(), shared], input_shape=(1, 4, 4), backend="numpy")
    assert first.layers[1].input_shape == (64,)  # the first model is intact
    relu = ReLU()
    with pytest.raises(ValueError, match="appears twice"):
        Sequential([Flatten(), relu, Dense(3), relu], input_shape=(4,), backend="numpy")


def test_backward_with_a_wrong_gradient_shape_names_the_layer():
    model = small_net()
    model.forward(np.zeros((5, 1, 8, 8), np.float32), training=True)
    with pytest.raises(
        ValueError, match=r"Dense 'dense_1': expected a gradient of the model output"
    ):
        model.backward(np.zeros((5, 7), np.float32))


def test_the_readme_python_example_runs(monkeypatch, tmp_path):
    text = (ROOT / "README.md").read_text()
    # the training example (the load/save example before it is run by test_first_day.py)
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    code = next(block for block in blocks if "Trainer(" in block)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


# ---------------------------------------------------------------------- output and warnings
def test_a_closed_pipe_exits_quietly(trained):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    env = {**os.environ, "PYTHONPATH": python_path(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "gpucnn", "info", "--backend", "numpy"],
        stdout=write,
        stderr=subprocess.PIPE,
        env=env,
        timeout=120,
    )
    os.close(write)
    assert result.returncode == 141 and result.stderr == b""


def test_a_diverging_run_prints_one_line_and_no_warnings(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = run(
            "train", "--epochs", 2, "--lr", 1e20, "--out", tmp_path / "o", "--backend", "numpy"
        )
    assert code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training diverged" in err
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_full_disk_during_training_is_one_line_and_keeps_the_checkpoint(
    tmp_path, monkeypatch, capsys
):
    import gpucnn.checkpoint as checkpoint

    calls, savez = [], np.savez

    def fill_up(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return savez(*args, **kwargs)

    monkeypatch.setattr(checkpoint.np, "savez", fill_up)
    out = tmp_path / "run"
    assert run("train", "--epochs", 2, "--out", out, "--backend", "numpy", "--no-progress") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write {out / 'checkpoint.npz'}: No space left on device" in err
    assert "the previous checkpoint.npz is intact" in err
    assert load_checkpoint(out / "checkpoint.npz").meta["trainer"]["epoch"] == 1
    assert not list(out.glob(".*")), "no lock or temporary file is left"
