"""Reliability of reading: pipes and devices are refused, not read; archives are checked member by
member before anything is inflated; malformed run files and memory shortfalls get one line."""

import io
import json
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gpucnn.resources as resources
from gpucnn.checkpoint import CheckpointError, load_checkpoint
from gpucnn.cli import main
from gpucnn.data import DatasetError
from gpucnn.data.files import load_data
from gpucnn.report import ReportError, read_metrics
from gpucnn.runfolder import LOCK_NAME
from gpucnn.safe_read import NpzArchive, read_json

BOMB_BYTES = 256 << 20  # what a bomb member inflates to; deflated it is ~1 MB
INFLATE_LIMIT = 64 << 20  # no bad input may make a command inflate more than this


def run(*args):
    return main([str(a) for a in args])


# ---------------------------------------------------------------------- building bad files
def npy_header(shape, dtype="<f4") -> bytes:
    """The magic and header of a .npy file of that shape and dtype."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    )
    return out.getvalue()


def rewrite_npz(src: Path, dst: Path, drop=(), add=None, raw=None) -> None:
    """Copy the members of ``src`` except ``drop``; ``add`` maps a member name to
    ``(shape, dtype)`` of zeros written as a compressed .npy (the bombs: ~1000x smaller
    than they inflate); ``raw`` maps names to bytes stored as they are (not .npy)."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            if info.filename.removesuffix(".npy") not in drop:
                new.writestr(info, old.read(info))
        for name, (shape, dtype) in (add or {}).items():
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            with new.open(f"{name}.npy", "w", force_zip64=True) as f:
                f.write(npy_header(shape, np.dtype(dtype).str))
                chunk = bytes(16 << 20)
                for start in range(0, nbytes, len(chunk)):
                    f.write(chunk[: min(len(chunk), nbytes - start)])
        for name, data in (raw or {}).items():
            new.writestr(name, data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch digits run with its resumable checkpoint."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert run("train", "--epochs", 1, "--out", out, "--backend", "numpy", "--no-progress") == 0
    return out


@pytest.fixture(scope="module")
def bad(tmp_path_factory, trained):
    d = tmp_path_factory.mktemp("bad")
    model, checkpoint = trained / "model.npz", trained / "checkpoint.npz"
    os.mkfifo(d / "pipe.json")
    os.mkfifo(d / "pipe.npz")
    (d / "folder.json").mkdir()
    # run folders whose checkpoint is a pipe, or holds bombs / wrong optimizer state
    for name in ("pipe_run", "bomb_run", "optim_run", "state_run"):
        (d / name).mkdir()
        for f in ("model.npz", "metrics.json"):
            (d / name / f).write_bytes((trained / f).read_bytes())
    os.mkfifo(d / "pipe_run" / "checkpoint.npz")
    rewrite_npz(checkpoint, d / "bomb_run" / "checkpoint.npz",
                add={"optim/junk": ((BOMB_BYTES // 4,), "<f4")})  # fmt: skip
    velocity = load_checkpoint(checkpoint).optimizer
    first = next(iter(velocity))
    rewrite_npz(checkpoint, d / "optim_run" / "checkpoint.npz", drop={f"optim/{first}"},
                add={f"optim/{first}": ((3, 3), "<f4")})  # fmt: skip
    rewrite_npz(checkpoint, d / "state_run" / "checkpoint.npz",
                add={"state/callback0/junk": ((BOMB_BYTES // 4,), "<f4")})  # fmt: skip
    # model files
    rewrite_npz(model, d / "extra_member.npz", add={"junk": ((BOMB_BYTES // 4,), "<f4")})
    param = next(k for k in load_checkpoint(model).params)
    rewrite_npz(model, d / "huge_param.npz", drop={f"model/{param}"},
                add={f"model/{param}": ((BOMB_BYTES // 4,), "<f4")})  # fmt: skip
    rewrite_npz(model, d / "raw_member.npz", raw={"notes.txt": b"hello"})
    rewrite_npz(
        model,
        d / "int_param.npz",
        drop={f"model/{param}"},
        add={f"model/{param}": (load_checkpoint(model).params[param].shape, "<i4")},
    )
    # --data files
    x = np.zeros((10, 1, 8, 8), np.float32)
    y = np.arange(10) % 2
    np.savez(d / "data.npz", x=x, y=y)
    rewrite_npz(d / "data.npz", d / "data_extra.npz", add={"junk": ((BOMB_BYTES,), "u1")})
    rewrite_npz(d / "data.npz", d / "data_bomb_y.npz", drop={"y"},
                add={"y": ((BOMB_BYTES // 8,), "<i8")})  # fmt: skip
    rewrite_npz(d / "data.npz", d / "data_raw.npz", raw={"readme": b"\xff\x00"})
    huge_y = d / "huge_y"
    huge_y.mkdir()
    np.save(huge_y / "x.npy", x)
    (huge_y / "y.npy").write_bytes(npy_header((10**12,), "<i8") + b"\0" * 64)
    pipe_x = d / "pipe_x"
    pipe_x.mkdir()
    os.mkfifo(pipe_x / "x.npy")
    np.save(pipe_x / "y.npy", y)
    # run folders for `report`
    metrics = json.loads((trained / "metrics.json").read_text())
    for name, content in {
        "metrics_list": b"[1, 2, 3]",
        "metrics_objects": json.dumps({**metrics, "history": {"loss": [{"a": 1}]}}).encode(),
        "metrics_data_dir": json.dumps({**metrics, "run": {**metrics["run"], "data_dir": 5}}).encode(),
        "metrics_binary": b"\xff\xfe garbage",
    }.items():  # fmt: skip
        (d / name).mkdir()
        (d / name / "metrics.json").write_bytes(content)
    return d


@pytest.fixture
def inflated(monkeypatch):
    """Counts the bytes every zip member read inflates (np.load reads through this too)."""
    count = [0]
    read = zipfile.ZipExtFile.read

    def counting(self, n=-1):
        data = read(self, n)
        count[0] += len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)
    return count


@pytest.fixture
def no_hang():
    """Fail instead of blocking forever on a pipe (the defect these cases guard against)."""

    def timeout(signum, frame):
        raise TimeoutError("the command blocked: it read from a pipe")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# (argv, a fragment of the one stderr line); every case exits 2. {run}: the finished run,
# {model}: its model.npz, {bad}: the bad files, {tmp}: an empty folder per case.
CASES = [
    # 1. not regular files
    ("train --model {bad}/pipe.json --out {tmp}/o", "pipe.json: expected a regular architecture file; received a named pipe"),
    ("train --model /dev/zero --out {tmp}/o", "/dev/zero: expected a regular architecture file; received a character device"),
    ("train --model {bad}/folder.json --out {tmp}/o", "folder.json: expected a regular architecture file; received a directory"),
    ("bench --model {bad}/pipe.json --backend numpy", "received a named pipe"),
    ("evaluate {bad}/pipe.npz", "pipe.npz: expected a regular checkpoint file; received a named pipe"),
    ("evaluate /dev/zero", "/dev/zero: expected a regular checkpoint file; received a character device"),
    ("export {bad}/pipe.npz", "received a named pipe"),
    ("predict {bad}/pipe.npz {model}", "received a named pipe"),
    ("predict {model} {bad}/pipe.npz", "pipe.npz: expected a regular image file; received a named pipe"),
    ("train --resume {bad}/pipe_run", "checkpoint.npz: expected a regular checkpoint file; received a named pipe"),
    ("train --data {bad}/pipe.npz --out {tmp}/o", "pipe.npz: expected a folder or a .npz file; received a named pipe"),
    ("train --data {bad}/pipe_x --out {tmp}/o", "x.npy: expected a regular file; received a named pipe"),
    # 2. declared sizes checked before inflating
    ("evaluate {bad}/extra_member.npz", "unexpected member 'junk'"),
    ("evaluate {bad}/huge_param.npz", "(the saved architecture's); received shape (67108864,)"),
    ("evaluate {bad}/int_param.npz", "non-float values (dtype int32)"),
    ("train --resume {bad}/bomb_run --epochs 2", "optimizer state 'junk' is for no parameter"),
    ("train --resume {bad}/state_run --epochs 2", "state callback0/junk: expected at most"),
    ("train --data {bad}/data_bomb_y.npz --out {tmp}/o", "data_bomb_y.npz:y: expected integer labels of shape (10,) (one per image in 'x'); its header declares shape (33554432,)"),
    ("train --data {bad}/huge_y --out {tmp}/o", "y.npy: expected integer labels of shape (10,) (one per image); its header declares shape (1000000000000,)"),
    # 3. one line naming the file, not a traceback
    ("evaluate {bad}/raw_member.npz", "member 'notes.txt': expected a .npy array (as numpy.savez writes); received a raw entry"),
    # 4. optimizer state that does not fit names the checkpoint
    ("train --resume {bad}/optim_run --epochs 2", "optim_run/checkpoint.npz: optimizer state"),
]  # fmt: skip


@pytest.mark.parametrize("argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_read_gets_one_line(argv, fragment, trained, bad, tmp_path, capsys, inflated, no_hang):
    args = [
        a.format(run=trained, model=trained / "model.npz", bad=bad, tmp=tmp_path)
        for a in argv.split()
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpucnn: error: "), err
    assert fragment in err, err
    assert inflated[0] < INFLATE_LIMIT, f"{inflated[0]:,} bytes inflated"
    assert not (trained / LOCK_NAME).exists()


def test_an_extra_member_of_a_data_file_is_not_inflated(bad, tmp_path, capsys, inflated):
    # user data may carry arrays gpucnn does not use: they stay compressed
    out = tmp_path / "o"
    args = ("train", "--data", bad / "data_extra.npz", "--epochs", 1, "--out", out)
    assert run(*args, "--backend", "numpy", "--no-progress") == 0
    assert inflated[0] < INFLATE_LIMIT, f"{inflated[0]:,} bytes inflated"


def test_a_raw_member_of_a_data_file_is_not_read(bad, tmp_path):
    data = load_data(bad / "data_raw.npz")
    assert len(data.x_train) + len(data.x_test) == 10


def test_the_optimizer_state_check_names_the_checkpoint(bad):
    path = bad / "optim_run" / "checkpoint.npz"
    with pytest.raises(CheckpointError, match=rf"{path}: optimizer state .*expected shape"):
        load_checkpoint(path)


# ---------------------------------------------------------------------- Python API
@pytest.mark.parametrize(
    "name,error,message",
    [
        ("extra_member.npz", CheckpointError, "unexpected member 'junk'"),
        ("huge_param.npz", CheckpointError, "expected shape"),
        ("raw_member.npz", CheckpointError, "received a raw entry"),
        ("pipe.npz", CheckpointError, "received a named pipe"),
    ],
)
def test_load_checkpoint_refuses_before_inflating(bad, inflated, no_hang, name, error, message):
    with pytest.raises(error, match=message):
        load_checkpoint(bad / name)
    assert inflated[0] < INFLATE_LIMIT


@pytest.mark.parametrize(
    "name,message",
    [
        ("data_bomb_y.npz", r"its header declares shape \(33554432,\)"),
        ("huge_y", r"y.npy: expected integer labels of shape \(10,\)"),
        ("pipe.npz", "received a named pipe"),
        ("pipe_x", "x.npy: expected a regular file; received a named pipe"),
    ],
)
def test_load_data_refuses_before_reading(bad, inflated, no_hang, name, message):
    with pytest.raises(DatasetError, match=message):
        load_data(bad / name)
    assert inflated[0] < INFLATE_LIMIT


def test_npz_members_are_declared_without_inflating(bad, inflated):
    with NpzArchive(bad / "extra_member.npz") as archive:
        header = archive.header("junk")
    assert header.shape == (BOMB_BYTES // 4,) and header.nbytes == BOMB_BYTES
    assert inflated[0] < 1 << 20


def test_a_member_whose_header_disagrees_with_its_entry_is_refused(tmp_path):
    path = tmp_path / "lying.npz"
    with zipfile.ZipFile(path, "w") as f:  # claims 10^6 floats, holds 4 bytes
        f.writestr("x.npy", npy_header((10**6,)) + b"\0" * 4)
    with NpzArchive(path) as archive, pytest.raises(ValueError, match="the entry holds"):
        archive.header("x")


def test_json_reads_are_bounded(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(ValueError, match=r"big.json: expected a JSON file of at most 100 bytes"):
        read_json(path, limit=100)
    with pytest.raises(ValueError, match="character device"):
        read_json("/dev/zero")


# ---------------------------------------------------------------------- run files
REPORT_CASES = [
    ("metrics_list", "metrics_list/metrics.json: expected the file to be a JSON object; received list"),
    ("metrics_objects", "metrics_objects/metrics.json: expected history['loss'] to be a list of numbers; received dict"),
    ("metrics_data_dir", "metrics_data_dir/metrics.json: expected run['data_dir'] to be a folder name; received 5"),
    ("metrics_binary", "metrics_binary/metrics.json is not valid JSON: expected UTF-8 text; received byte 0xff at position 0"),
]  # fmt: skip


@pytest.mark.parametrize("folder,message", REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_read_metrics_names_the_file(bad, folder, message):
    with pytest.raises(ReportError) as caught:
        read_metrics(bad / folder / "metrics.json")
    assert message in str(caught.value)


@pytest.mark.parametrize("folder,message", REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_report_of_a_malformed_run_gets_one_line(bad, folder, message, capsys):
    pytest.importorskip("matplotlib")
    assert run("report", bad / folder, "--backend", "numpy", "--no-download") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_write_report_refuses_malformed_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    from gpucnn.report import write_report

    with pytest.raises(ReportError, match="expected the file to be a JSON object"):
        write_report(tmp_path, None, [1, 2])


def test_a_lock_that_is_a_pipe_is_refused(tmp_path, capsys, no_hang):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / LOCK_NAME)
    assert run("train", "--epochs", 1, "--out", out, "--backend", "numpy") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lock to be a regular file; received a named pipe" in err


# ---------------------------------------------------------------------- memory
@pytest.fixture
def little_memory(monkeypatch):
    """64 MiB available, and every allocation from 1 MiB checked (instead of 256 MiB)."""
    monkeypatch.setattr(resources, "LARGE", 1 << 20)
    monkeypatch.setattr(resources, "available_memory", lambda: 64 << 20)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_bench_refuses_a_batch_whose_step_does_not_fit(little_memory, monkeypatch, capsys, threads):
    # the synthetic batch (6 MB) fits; the first convolution's 140 MB do not
    monkeypatch.setenv("GPUCNN_CPU_THREADS", threads)
    args = ("bench", "--model", "reference", "--batch-size", 2000, "--repeats", 1, "--steps", 1)
    assert run(*args, "--no-profile", "--backend", "numpy") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpucnn: error: out of memory: "), err
    assert "convolution of 2000 images" in err and "GiB of memory is available" in err


@pytest.mark.parametrize("threads", ["1", "2"])
def test_every_op_checks_memory_before_allocating(little_memory, monkeypatch, threads):
    from gpucnn import Sequential
    from gpucnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU

    monkeypatch.setenv("GPUCNN_CPU_THREADS", threads)
    x = np.zeros((1024, 1, 28, 28), np.float32)
    for layers in (
        [Conv2D(64, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(10)],  # the fused step
        [Conv2D(64, 3), Flatten(), Dense(10)],  # a plain convolution
        [Conv2D(64, 3, padding="same"), ReLU(), Flatten(), Dense(10)],
    ):
        model = Sequential(layers, input_shape=(1, 28, 28), backend="numpy")
        with pytest.raises(MemoryError, match=r"of 1024 images.* needs"):
            model.loss_and_backward(x, np.zeros(1024, np.int64))
