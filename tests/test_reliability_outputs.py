"""Reliability of what the command line writes and of flags that would be lost silently:
outputs never replace inputs or run files, --resume compares values, seeds are in range, a
full disk names the file, and nothing but gpucnn's own lines reaches stderr."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import python_path

from gpucnn.cli import main
from gpucnn.runfolder import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return main([str(a) for a in args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def one_error_line(err: str, fragment: str) -> None:
    assert err.count("\n") == 1 and err.startswith("gpucnn: error: "), err
    assert "Traceback" not in err
    assert fragment in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch digits run with --seed 7 (left unchanged by every bad case)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert run("train", "--epochs", 1, "--seed", 7, "--out", out, "--backend", "numpy",
               "--no-progress") == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained):
    """Inputs a bad output path could destroy: an architecture, a dataset .npz, a link."""
    d = tmp_path_factory.mktemp("files")
    arch = [{"type": "Conv2D", "filters": 2, "kernel_size": 3}, {"type": "ReLU"},
            {"type": "Flatten"}, {"type": "Dense", "units": 10}]  # fmt: skip
    (d / "arch.json").write_text(json.dumps(arch))
    rng = np.random.default_rng(0)
    data = {"x": rng.random((40, 1, 8, 8), dtype=np.float32), "y": np.arange(40) % 2}
    np.savez(d / "data.npz", **data)
    (d / "own").mkdir()
    np.savez(d / "own" / "model.npz", **data)  # a dataset that happens to be named model.npz
    (d / "link.npz").symlink_to(trained / "model.npz")
    return d


# (argv, exit code, a fragment of the one stderr line). {run}: the finished run folder,
# {model}: its model.npz, {files}: the inputs above, {tmp}: an empty folder per case.
CASES = [
    # an output that is the command's own input
    ("export {model} -o {model}", 2, "is the input"),
    ("export {model} -o {run}/./model.npz", 2, "is the input"),
    ("export {model} -o {files}/link.npz", 2, "is the input"),
    ("evaluate {run}/checkpoint.npz --json {run}/checkpoint.npz", 2, "is the input"),
    ("evaluate {files}/link.npz --json {model}", 2, "is the input"),
    ("bench --model {files}/arch.json --json {files}/arch.json --backend numpy", 2,
     "is the input"),
    ("train --data {files}/data.npz --out {files}/data.npz", 2, "is the --data path"),
    ("train --data {files}/own/model.npz --out {files}/own --overwrite", 2,
     "would replace the --data file"),
    # an output that is a model, checkpoint or run file this command did not write
    ("export {model} -o {run}/checkpoint.npz", 2, "pass --overwrite to replace it"),
    ("evaluate {model} --json {run}/metrics.json", 2, "a run folder's metrics.json"),
    ("evaluate {model} --json {files}/data.npz", 2, "a .npz archive"),
    ("bench --model small --json {model} --backend numpy", 2, "a run folder's model.npz"),
    ("bench --model small --json {run}/../run/checkpoint.npz --backend numpy", 2,
     "pass --overwrite to replace it"),
    ("evaluate {model} --json {tmp}", 2, "expected a file name; received a folder"),
    # --resume: flags that would change the run, compared by value
    ("train --resume {run} --data {files}/data.npz", 2, "--data would change it"),
    ("train --resume {run} --augment-flip", 2,
     "--augment-flip would change it (received --augment-flip, the run has --no-augment-flip)"),
    ("train --resume {run} --augment-shift 2", 2, "--augment-shift would change it"),
    ("train --resume {run} --test-fraction 0.3", 2, "--test-fraction would change it"),
    ("train --resume {run} --momentum 0", 2, "received --momentum 0.0, the run has --momentum 0.9"),
    ("train --resume {run} --seed 3", 2, "received --seed 3, the run has --seed 7"),
    ("train --resume {run} --image-size 8 8", 2, "--image-size would change it"),
    ("train --resume {run} --out {tmp}", 2, "--out would change it"),
    # the run's own values are accepted: the refusal that remains is the finished run's
    ("train --resume {run} --seed 7", 2, "already trained 1 of 1 epochs"),
    ("train --resume {run} --seed 7 --dataset digits --model small_bn --batch-size 32 --lr 0.1 "
     "--momentum 0.9 --augment-shift 0 --out {run}/.", 2, "already trained 1 of 1 epochs"),
    # seeds: the range scikit-learn's split takes (seed + 1 <= 2**32 - 1)
    ("train --seed 18446744073709551616", 2, "--seed must be an integer from 0 to 4294967294"),
    ("train --seed 4294967295", 2, "--seed must be an integer from 0 to 4294967294"),
    ("train --seed -1", 2, "--seed must be an integer from 0 to 4294967294"),
]  # fmt: skip


@pytest.mark.parametrize("argv,code,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_output_or_flag_gets_one_line(argv, code, fragment, trained, files, tmp_path, capsys):
    before, inputs = snapshot(trained), snapshot(files)
    args = [
        a.format(run=trained, model=trained / "model.npz", files=files, tmp=tmp_path)
        for a in argv.split()
    ]
    assert main(args) == code
    one_error_line(capsys.readouterr().err, fragment)
    assert snapshot(trained) == before and snapshot(files) == inputs
    assert not (trained / LOCK_NAME).exists()


def test_resume_with_the_same_command_line_continues(tmp_path, capsys):
    out = tmp_path / "run"
    same = ["train", "--seed", 7, "--augment-shift", 1, "--batch-size", 64, "--out", out,
            "--backend", "numpy", "--no-progress"]  # fmt: skip
    assert run(*same, "--epochs", 1) == 0
    assert run(*same, "--epochs", 2, "--resume", out) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    assert capsys.readouterr().err == ""


def test_overwrite_replaces_a_run_file_when_asked(trained, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("model.npz", "metrics.json"):
        (copy / name).write_bytes((trained / name).read_bytes())
    assert run("evaluate", trained / "model.npz", "--json", copy / "metrics.json") == 2
    assert run("evaluate", trained / "model.npz", "--json", copy / "metrics.json",
               "--overwrite", "--backend", "numpy") == 0  # fmt: skip
    assert "confusion_matrix" in json.loads((copy / "metrics.json").read_text())
    # a plain JSON output is replaced as before, without --overwrite
    assert run("evaluate", trained / "model.npz", "--json", tmp_path / "r.json") == 0
    assert run("evaluate", trained / "model.npz", "--json", tmp_path / "r.json") == 0


def no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_full_disk_writing_json_names_the_file_and_keeps_the_previous(
    trained, tmp_path, monkeypatch, capsys
):
    previous = tmp_path / "results.json"
    previous.write_text("earlier results\n")
    monkeypatch.setattr(os, "fsync", no_space)
    assert run("evaluate", trained / "model.npz", "--json", previous, "--backend", "numpy") == 2
    one_error_line(
        capsys.readouterr().err,
        f"cannot write {previous}: No space left on device; the previous results.json is intact",
    )
    assert previous.read_text() == "earlier results\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left
    fresh = tmp_path / "bench.json"
    assert run("bench", "--model", "small", "--batch-size", 4, "--infer-batch-size", 4,
               "--repeats", 1, "--steps", 1, "--no-profile", "--backend", "numpy",
               "--json", fresh) == 2  # fmt: skip
    one_error_line(
        capsys.readouterr().err,
        f"cannot write {fresh}: No space left on device; nothing was written",
    )


def test_a_full_disk_during_export_names_the_file(trained, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    import gpucnn.export

    output = tmp_path / "m.onnx"
    monkeypatch.setattr(gpucnn.export.tempfile, "mkstemp", no_space)
    assert run("export", trained / "model.npz", "-o", output) == 2
    one_error_line(
        capsys.readouterr().err, f"cannot write {output}: No space left on device; nothing"
    )


def test_a_full_disk_during_the_report_names_the_file(trained, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("model.npz", "metrics.json"):
        (copy / name).write_bytes((trained / name).read_bytes())
    monkeypatch.setattr(Figure, "savefig", no_space)
    assert run("report", copy, "--backend", "numpy") == 2
    one_error_line(
        capsys.readouterr().err,
        f"cannot write {copy / 'report' / 'curves.png'}: No space left on device",
    )


# ---------------------------------------------------------------------- stderr stays clean
def grey_png(path: Path, size: int) -> Path:
    from PIL import Image

    pixels = (np.arange(size * size) % 256).astype(np.uint8).reshape(size, size)
    Image.fromarray(pixels, mode="L").save(path)
    return path


@pytest.fixture
def small_bomb_limit(monkeypatch):
    """Pillow's decompression-bomb limit lowered to 1000 pixels: it warns from 1000, refuses
    from 2000 (how the library tells a large image from a bomb, without large files)."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


def test_a_large_but_allowed_image_gives_no_pillow_warning(
    trained, tmp_path, small_bomb_limit, capsys
):
    allowed = grey_png(tmp_path / "allowed.png", 40)  # 1600 pixels: Pillow warns
    refused = grey_png(tmp_path / "refused.png", 50)  # 2500: the library's limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run("predict", trained / "model.npz", allowed, "--backend", "numpy") == 0
        assert capsys.readouterr().err == ""
        assert run("predict", trained / "model.npz", refused, "--backend", "numpy") == 2
    one_error_line(capsys.readouterr().err, "declares 50x50 pixels")
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]


def test_own_images_at_an_allowed_size_give_no_pillow_warning(tmp_path, small_bomb_limit, capsys):
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(5):
            grey_png(tmp_path / "data" / label / f"{i}.png", 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run("train", "--data", tmp_path / "data", "--image-size", 8, "8", "--epochs", 1,
                   "--val-fraction", 0, "--out", tmp_path / "run", "--backend", "numpy",
                   "--no-progress") == 0  # fmt: skip
    assert capsys.readouterr().err == ""
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]


def test_the_report_prints_nothing_on_stderr_when_home_is_unwritable(trained, tmp_path):
    pytest.importorskip("matplotlib")
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("model.npz", "metrics.json"):
        (copy / name).write_bytes((trained / name).read_bytes())
    home = tmp_path / "home"
    home.write_text("a file, so no folder can be made under it (even by root)")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME",
                                                             "XDG_CACHE_HOME")}  # fmt: skip
    env.update(HOME=str(home), PYTHONPATH=python_path(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "gpucnn", "report", str(copy), "--backend", "numpy"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert (copy / "report" / "index.html").is_file()


# ---------------------------------------------------------------------- Docker test image
def test_the_cpu_test_image_holds_what_the_tests_read():
    dockerfile = ROOT / "docker" / "Dockerfile.cpu"
    if not dockerfile.is_file():
        pytest.skip(f"{dockerfile} is not part of this installation (inside the image)")
    stage = dockerfile.read_text().split(" AS test", 1)[1]
    copied = " ".join(line for line in stage.splitlines() if line.startswith("COPY"))
    # the README's Python example is run by test_reliability.py
    assert "README.md" in copied.split() and "/opt/gpucnn-tests/" in copied


def test_a_run_that_fails_before_writing_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    """Flags that are refused only once the run folder is claimed (an architecture file that
    cannot be read) remove the folders the command made; a folder that was there stays."""
    missing = tmp_path / "missing.json"
    assert run("train", "--model", missing, "--out", tmp_path / "a" / "b") == 2
    one_error_line(capsys.readouterr().err, "cannot read architecture file")
    assert not (tmp_path / "a").exists()
    monkeypatch.chdir(tmp_path)  # the default --out, runs/<name>, under the working folder
    assert run("train", "--model", missing) == 2
    assert not (tmp_path / "runs").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert run("train", "--model", missing, "--out", kept) == 2
    assert kept.is_dir() and not any(kept.iterdir())
