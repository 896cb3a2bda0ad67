"""Data-parallel training over MPI: equivalence with one process, resume, errors.

The tests that start processes run ``mpirun --allow-run-as-root --oversubscribe -n 2`` and
skip when ``mpirun`` or mpi4py is missing.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import FakeMPI, ThreadComm, ThreadGroup, python_path

from gpucnn.checkpoint import load_checkpoint
from gpucnn.cli import main
from gpucnn.distributed import DistributedError, MPICommunicator, import_mpi, mpi_world_size
from gpucnn.layers import Dense, Flatten, ReLU
from gpucnn.model import Sequential
from gpucnn.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
HAVE_MPI = shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpirun = pytest.mark.skipif(not HAVE_MPI, reason="mpirun or mpi4py is not installed")


def mpirun(*args, ranks=2, timeout=300, **popen):
    """Run ``python -m gpucnn ARGS`` (or a script) on ``ranks`` processes."""
    command = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(ranks)]
    command += ["-x", "PYTHONPATH", "-x", "PYTHONUNBUFFERED", sys.executable, *map(str, args)]
    env = dict(os.environ, PYTHONPATH=python_path(ROOT), PYTHONUNBUFFERED="1")
    env.pop("GPUCNN_BACKEND", None)
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    return subprocess.run(command, env=env, text=True, capture_output=True, timeout=timeout)


def train_args(out, *extra):
    return ["-m", "gpucnn", "train", "--out", out, "--backend", "numpy", "--no-progress", *extra]


def max_relative_difference(a_path, b_path):
    """Over every parameter and buffer of two saved models, relative to the array's largest
    value, or to 1e-3 for arrays that stay near zero (a convolution's bias before BatchNorm
    gets no gradient, so it holds rounding noise)."""
    a, b = load_checkpoint(a_path).params, load_checkpoint(b_path).params
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-3)) for k in a)


# ---------------------------------------------------------------------- without MPI
def test_world_size_from_the_launcher_environment(monkeypatch):
    for variable in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    assert mpi_world_size() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert mpi_world_size() == 4


def test_missing_mpi4py_is_one_clear_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(DistributedError, match=r'pip install "gpucnn\[mpi\]"'):
        import_mpi()
    assert main(["train", "--distributed", "--out", str(tmp_path), "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gpucnn: error: distributed training needs mpi4py")


class TwoRanks:
    """Stands in for rank 0 of two (enough for checks made before any message)."""

    size, rank, is_root = 2, 0, True


def test_a_global_batch_smaller_than_the_ranks_is_refused():
    model = Sequential([Flatten(), Dense(4), ReLU(), Dense(3)], (2,), backend="numpy")
    trainer = Trainer(model, communicator=TwoRanks(), log=None, progress=False)
    x, y = np.zeros((8, 2)), np.zeros(8, dtype=np.int64)
    with pytest.raises(ValueError, match=r"batch_size >= the number of processes \(2\)"):
        trainer.fit(x, y, batch_size=1)


@pytest.mark.parametrize("count", [0, 1, 7, 32, 33])
def test_shards_cover_the_batch_once_and_differ_by_at_most_one(count):
    shards = []
    for rank in range(3):
        comm = object.__new__(MPICommunicator)  # shard needs only rank and size
        comm.rank, comm.size = rank, 3
        shards.append(comm.shard(count))
    sizes = [s.stop - s.start for s in shards]
    assert shards[0].start == 0 and shards[-1].stop == count and sum(sizes) == count
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:], strict=False))
    assert max(sizes) - min(sizes) <= 1


# ---------------------------------------------------------------------- under mpirun
@needs_mpirun
@pytest.mark.parametrize(
    "dtype,batch,tolerance,model",
    [
        ("float64", 32, 1e-10, "small"),
        ("float64", 32, 1e-10, "small_bn"),
        pytest.param("float32", 32, 1e-5, "small", marks=pytest.mark.slow),
        pytest.param("float64", 33, 1e-10, "small", marks=pytest.mark.slow),
    ],
    ids=["float64", "float64-batchnorm", "float32", "float64-indivisible-batch"],
)
def test_two_processes_give_the_weights_of_one(tmp_path, dtype, batch, tolerance, model):
    """One epoch on digits with global batch B: P=2 ends where P=1 does, BatchNorm included
    (its statistics are taken over the global batch); the running statistics too."""
    flags = ["--epochs", 1, "--batch-size", batch, "--dtype", dtype, "--model", model]
    single, double = tmp_path / "p1", tmp_path / "p2"
    assert main([str(a) for a in train_args(single, *flags)[2:]]) == 0
    result = mpirun(*train_args(double, *flags))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("test accuracy") == 1  # only rank 0 prints
    assert max_relative_difference(single / "model.npz", double / "model.npz") < tolerance
    metrics = json.loads((double / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["distributed"]["allreduce_calls"] == -(-1294 // batch)  # one per step
    single_metrics = json.loads((single / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and single_metrics["world_size"] == 1
    assert abs(metrics["test_accuracy"] - single_metrics["test_accuracy"]) < 1e-12


API_SCRIPT = """
import sys
import numpy as np
from gpucnn import SGD, Sequential
from gpucnn.checkpoint import save_checkpoint
from gpucnn.distributed import MPICommunicator
from gpucnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from gpucnn.trainer import Trainer

comm = MPICommunicator() if sys.argv[2] == "mpi" else None
rng = np.random.default_rng(0)
x = rng.normal(size=(203, 1, 8, 8))
y = rng.integers(0, 3, size=203)
model = Sequential(
    [Conv2D(4, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(3)], (1, 8, 8), "float64", "numpy",
    seed=1 + (comm.rank if comm else 0),  # differing starts: rank 0's weights must win
)
optimizer = SGD(lr=0.1, momentum=0.9, clip_norm=0.5)  # clipping after the averaging
trainer = Trainer(model, optimizer, communicator=comm, log=None, progress=False)
trainer.fit(x, y, validation_data=(x[:50], y[:50]), epochs=2, batch_size=20)
if comm is None or comm.is_root:
    save_checkpoint(sys.argv[1], model, history=trainer.history)
"""


@needs_mpirun
def test_python_api_with_clipping_matches_one_process(tmp_path):
    script = tmp_path / "api.py"
    script.write_text(API_SCRIPT)
    env = dict(os.environ, PYTHONPATH=python_path(ROOT))
    subprocess.run(
        [sys.executable, script, tmp_path / "one.npz", "single"], env=env, check=True, timeout=120
    )
    result = mpirun(script, tmp_path / "two.npz", "mpi")
    assert result.returncode == 0, result.stderr
    assert max_relative_difference(tmp_path / "one.npz", tmp_path / "two.npz") < 1e-10
    one = load_checkpoint(tmp_path / "one.npz").meta["history"]
    two = load_checkpoint(tmp_path / "two.npz").meta["history"]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-10)
    np.testing.assert_allclose(two["val_accuracy"], one["val_accuracy"], rtol=1e-12)


@needs_mpirun
def test_batch_norm_on_each_ranks_share_saves_one_state(tmp_path):
    """--no-sync-batch-norm: each rank normalises its own share; the running statistics are
    averaged over the ranks after every epoch, so the saved model evaluates to the accuracy
    training printed."""
    out = tmp_path / "bn"
    result = mpirun(
        *train_args(out, "--model", "small_bn", "--epochs", 2, "--batch-size", 32),
        "--no-sync-batch-norm",
    )
    assert result.returncode == 0, result.stderr
    trained = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    assert main(["evaluate", str(out / "model.npz"), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == trained


@needs_mpirun
def test_a_global_batch_smaller_than_the_ranks_is_refused_under_mpirun(tmp_path):
    result = mpirun(*train_args(tmp_path / "run", "--batch-size", 1, "--epochs", 1))
    assert result.returncode == 2
    # one line from gpucnn (rank 0); mpirun adds its own note about the non-zero exit
    lines = [line for line in result.stderr.splitlines() if line.startswith("gpucnn")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "--batch-size is the global batch, split over 2 processes" in lines[0]


@needs_mpirun
@pytest.mark.slow
def test_resume_after_sigterm_equals_an_uninterrupted_run(tmp_path):
    # 59 epochs (seconds of training: small batches, many steps) left when the signal is
    # sent, so it lands during training even when the epochs are fast
    flags = ["--epochs", 60, "--batch-size", 16, "--model", "small"]  # the timing it was tuned on
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert mpirun(*train_args(straight, *flags)).returncode == 0
    proc = mpirun(*train_args(split, *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # interrupt once the first epoch is done
        if line.startswith("epoch 1/60") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0  # mpirun reports the signal
    # Open MPI sends SIGKILL about 1 s after SIGTERM: on a loaded machine the ranks may not
    # finish their step in time, and then the last epoch's checkpoint is the one to resume
    if "interrupted by" in err:
        assert "interrupted by SIGTERM" in err and "resume with" in err, err
        assert err.count("interrupted by") == 1  # rank 0 alone speaks
    assert not (split / "model.npz").exists()
    assert load_checkpoint(split / "checkpoint.npz").meta["trainer"]["epoch"] >= 1
    # the backend is the machine's, not the run's: name the one the straight run used
    result = mpirun(
        "-m", "gpucnn", "train", "--resume", split, "--backend", "numpy", "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    assert max_relative_difference(straight / "model.npz", split / "model.npz") == 0.0
    metrics = json.loads((split / "metrics.json").read_text())
    assert metrics["epochs"] == 60 and metrics["world_size"] == 2


# ---------------------------------------------------------------------- ranks as threads
def _layers(kind):
    from gpucnn.layers import BatchNorm1D, BatchNorm2D, Conv2D, MaxPool2D, Residual

    if kind == "plain":
        return [Conv2D(3, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(3)]
    return [  # BatchNorm in a nested container, before and after the flatten
        Conv2D(3, 3), BatchNorm2D(), ReLU(),
        Residual([Conv2D(3, 3, padding=1), BatchNorm2D(momentum=0.3)]),
        MaxPool2D(2), Flatten(), Dense(5), BatchNorm1D(), ReLU(), Dense(3),
    ]  # fmt: skip


def _fit(backend, comm=None, samples=41, batch=8, kind="plain", sync=True, augment=False):
    from gpucnn import SGD, Sequential
    from gpucnn.augment import Augment

    rng = np.random.default_rng(3)
    x = rng.normal(loc=0.5, size=(samples, 1, 6, 6))
    y = rng.integers(0, 3, size=samples)
    model = Sequential(_layers(kind), (1, 6, 6), "float64", backend)
    trainer = Trainer(
        model, SGD(lr=0.1, momentum=0.9, clip_norm=1.0), communicator=comm, log=None,
        progress=False, sync_batch_statistics=sync,
        augment=Augment(shift=1, flip=True, seed=5) if augment else None,
    )  # fmt: skip
    trainer.fit(x, y, validation_data=(x[:9], y[:9]), epochs=2, batch_size=batch)
    return model.state_dict(), trainer.history


def _fit_on_thread_ranks(size, cuda_aware=False, **fit):
    """``_fit(**fit)`` on ``size`` ranks that are threads; returns the results and the
    communicators, by rank."""
    group, results, comms = ThreadGroup(size), [None] * size, [None] * size

    def rank_main(rank):
        comms[rank] = MPICommunicator(ThreadComm(group, rank), cuda_aware=cuda_aware)
        results[rank] = _fit(comm=comms[rank], **fit)

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(result is not None for result in results)
    return results, comms


def _assert_same_training(results, expected, expected_history):
    for weights, history in results:
        assert weights.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(weights[name], value, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(history["loss"], expected_history["loss"], rtol=1e-10)
        assert history["val_accuracy"] == expected_history["val_accuracy"]


@pytest.mark.parametrize(
    "backend,cuda_aware", [("numpy", False), ("cupy", False), ("cupy", True)],
    ids=["numpy", "cupy-host-staging", "cupy-cuda-aware"],
)  # fmt: skip
def test_two_thread_ranks_match_one_process(monkeypatch, backend, cuda_aware):
    """The gradient exchange without mpirun; 41 images at batch 8 leave one rank idle in the
    last batch. On CuPy, both the host-staging and the device-buffer paths."""
    if backend == "cupy":
        from gpucnn.backend import probe_cupy

        if probe_cupy()[0] is None:
            pytest.skip("no GPU")
    monkeypatch.setattr("gpucnn.distributed.import_mpi", lambda: FakeMPI)
    expected, expected_history = _fit(backend)
    results, _ = _fit_on_thread_ranks(2, backend=backend, cuda_aware=cuda_aware)
    _assert_same_training(results, expected, expected_history)


@pytest.mark.parametrize(
    "size,samples,batch,augment",
    [(2, 42, 8, False), (3, 42, 8, False), (3, 40, 7, False), (3, 41, 8, True)],
    ids=["two-ranks", "three-ranks-one-idle", "three-ranks-unequal-shares", "augmented"],
)
def test_batch_norm_statistics_over_thread_ranks_match_one_process(
    monkeypatch, size, samples, batch, augment
):
    """BatchNorm2D/1D (one inside a Residual) with the statistics of the global batch: the
    running statistics, every weight and the losses equal one process's, float64. 42 images
    at batch 8 end with a batch of two, so one of three ranks joins the all-reduces with an
    empty share (and BatchNorm1D sees one value per rank); 40 at batch 7 on three ranks
    gives shares of 2 and 3. With augmentation (shifts and flips), each rank applies the
    choices one process makes for its share; 41 images at batch 8 end with a lone image,
    which joins the batch before it."""
    monkeypatch.setattr("gpucnn.distributed.import_mpi", lambda: FakeMPI)
    fit = dict(samples=samples, batch=batch, kind="bn", augment=augment)
    expected, expected_history = _fit("numpy", **fit)
    assert any(name.endswith("running_var") for name in expected)
    results, comms = _fit_on_thread_ranks(size, backend="numpy", **fit)
    _assert_same_training(results, expected, expected_history)
    steps = 2 * (samples // batch if samples % batch == 1 else -(-samples // batch))
    # three BatchNorm layers, one all-reduce each in forward and one in backward per step
    assert comms[0].stats()["statistics_allreduce_calls"] == steps * 3 * 2


def test_batch_norm_on_own_shares_differs_and_averages_running_statistics(monkeypatch):
    """sync_batch_statistics=False: each rank normalises its own share (so training differs
    from one process) and every rank ends with the same, averaged, running statistics."""
    monkeypatch.setattr("gpucnn.distributed.import_mpi", lambda: FakeMPI)
    expected, _ = _fit("numpy", samples=44, kind="bn")
    results, comms = _fit_on_thread_ranks(2, backend="numpy", samples=44, kind="bn", sync=False)
    (first, _), (second, _) = results
    assert comms[0].stats()["statistics_allreduce_calls"] == 0
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    name = "batchnorm2d_1.running_mean"
    assert not np.allclose(first[name], expected[name], rtol=1e-6)
