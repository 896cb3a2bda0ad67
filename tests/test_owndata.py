"""Your own data: image folders, .npz and .npy datasets, disk-backed training, augmentation,
and prediction on real image files (JPEG, palette, 16-bit, alpha, any size)."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import python_path
from PIL import Image

from gpucnn import Sequential
from gpucnn.augment import Augment
from gpucnn.cli import main
from gpucnn.data import DatasetError
from gpucnn.data.files import NpyImages, load_data, load_image_folder, load_npz
from gpucnn.data.images import read_image
from gpucnn.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return main([str(a) for a in args])


def shape_image(label: int, size: int, rng, colour=True) -> np.ndarray:
    """A bright disc (label 0) or square (label 1) on a dark background, (size, size, 3) uint8."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    if label == 0:
        mask = (yy - c) ** 2 + (xx - c) ** 2 < (size / 3) ** 2
    else:
        mask = (abs(yy - c) < size / 3) & (abs(xx - c) < size / 3)
    image = np.zeros((size, size, 3), np.uint8)
    image[mask] = [200 + int(rng.integers(0, 55)), 180, 160] if colour else 230
    return image


@pytest.fixture
def folder(tmp_path):
    """Two classes of PNG and JPEG images of mixed sizes, plus one corrupt file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for label, name in enumerate(["disc", "square"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            size = (12, 16, 20)[i % 3]
            path = root / name / f"{i}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(shape_image(label, size, rng)).save(path)
    (root / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "square" / ".hidden.png").write_bytes(b"ignored")
    return root


# ---------------------------------------------------------------------- image folders
def test_image_folder_resizes_converts_and_skips_corrupt_files(folder):
    skipped = []
    x, y, classes, bad = load_image_folder(
        folder, (16, 16), 1, on_skip=lambda p, r: skipped.append((p, r))
    )
    assert classes == ["disc", "square"]
    assert x.shape == (24, 1, 16, 16) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(y).tolist() == [12, 12]
    assert len(skipped) == 1 and skipped[0][0].endswith("broken.png") and bad == [skipped[0][0]]
    # default shape: the most common size, colour kept as RGB
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, _, _, _ = load_image_folder(folder)
    assert x.shape[1:] == (3, 12, 12) or x.shape[1:] in {(3, s, s) for s in (12, 16, 20)}
    assert len(caught) == 1 and "broken.png" in str(caught[0].message)


def test_image_folder_refusals(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "one").mkdir()
    with pytest.raises(DatasetError, match="at least 2"):
        load_image_folder(tmp_path)
    (tmp_path / "two").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "one" / "a.png")
    (tmp_path / "two" / "b.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="none in 'two'"):
        load_image_folder(tmp_path, on_skip=lambda p, r: None)
    (tmp_path / "one" / "a.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no readable image"):
        load_image_folder(tmp_path, on_skip=lambda p, r: None)


def test_load_data_holds_out_a_seeded_stratified_test_split(folder):
    a = load_data(folder, (16, 16), 1, test_fraction=0.25, seed=3, on_skip=lambda p, r: None)
    b = load_data(folder, (16, 16), 1, test_fraction=0.25, seed=3, on_skip=lambda p, r: None)
    assert len(a.x_test) == 6 and np.bincount(a.y_test).tolist() == [3, 3]
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert a.skipped and a.classes == ["disc", "square"]
    streamed = load_data(folder, (16, 16), 1, 0.25, 3, stream=True, on_skip=lambda p, r: None)
    np.testing.assert_array_equal(streamed.x_test[:], a.x_test)
    np.testing.assert_array_equal(streamed.y_train, a.y_train)


# ---------------------------------------------------------------------- arrays
def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    y = np.arange(20) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["cat", "dog"]))
    data = load_data(tmp_path / "d.npz", seed=0)
    assert data.input_shape == (1, 6, 6) and data.classes == ["cat", "dog"]
    assert len(data.x_train) + len(data.x_test) == 20 and len(data.x_test) == 4
    np.testing.assert_allclose(
        np.sort(np.concatenate([data.x_train, data.x_test]).ravel()), np.sort(x.ravel() / 255.0)
    )
    np.savez(tmp_path / "t.npz", x=x, y=y, x_test=x[:3], y_test=y[:3])
    data = load_data(tmp_path / "t.npz", image_size=(8, 8), channels=3)
    assert data.x_train.shape == (20, 3, 8, 8) and len(data.x_test) == 3
    assert data.classes == ["0", "1"]
    np.savez(tmp_path / "bad.npz", x=x, labels=y)
    with pytest.raises(DatasetError, match="expected arrays 'x' and 'y'"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", x=x, y=y[:5])
    with pytest.raises(DatasetError, match=r"shape \(20,\)"):
        load_npz(tmp_path / "short.npz")
    with pytest.raises(DatasetError, match="no such file"):
        load_data(tmp_path / "none.npz")


def test_npy_rows_are_read_in_any_order(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (50, 2, 3, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    source = NpyImages(tmp_path / "x.npy")
    rows = np.array([7, 3, 4, 5, 49, 0])
    np.testing.assert_array_equal(source[rows], x[rows] / np.float32(255))
    np.testing.assert_array_equal(source[10:13], x[10:13] / np.float32(255))
    sub = source.subset([2, 9])
    assert sub.shape == (2, 2, 3, 4)
    np.testing.assert_array_equal(sub[:], x[[2, 9]] / np.float32(255))


def dense_model(input_shape, classes=2, seed=0):
    config = {
        "input_shape": list(input_shape),
        "layers": [{"type": "Flatten"}, {"type": "Dense", "units": classes}],
    }
    return Sequential.from_config(config, backend="numpy", seed=seed)


def test_disk_backed_training_equals_in_memory_training(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((70, 1, 5, 5), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    data = load_data(tmp_path, test_fraction=0.2, seed=0, stream=True)
    assert isinstance(data.x_train, NpyImages)
    in_memory = load_data(tmp_path, test_fraction=0.2, seed=0, stream=False)
    assert isinstance(in_memory.x_train, np.ndarray)
    weights = []
    for d in (data, in_memory):
        model = dense_model((1, 5, 5))
        Trainer(model, seed=1, log=None).fit(
            d.x_train, d.y_train, validation_data=(d.x_test, d.y_test), epochs=2, batch_size=8
        )
        weights.append(model.state_dict())
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])


def test_disk_backed_nan_is_refused_when_read(tmp_path):
    x = np.zeros((10, 1, 2, 2), np.float32)
    x[4, 0, 1, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"NaN or inf in rows \[4\]"):
        Trainer(dense_model((1, 2, 2)), log=None).fit(
            NpyImages(tmp_path / "x.npy"), np.zeros(10, np.int64), batch_size=10
        )


RSS_SCRIPT = """
import sys, numpy as np
from gpucnn import Sequential
from gpucnn.data.files import NpyImages
from gpucnn.resources import peak_rss_mib
from gpucnn.trainer import Trainer
x = NpyImages(sys.argv[1])
y = np.load(sys.argv[2])
model = Sequential.from_config({"input_shape": list(x.shape[1:]),
    "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 2}]}, backend="numpy")
before = peak_rss_mib()
Trainer(model, log=None).fit(x, y, epochs=1, batch_size=64)
print(before, peak_rss_mib())
"""


def test_disk_backed_training_keeps_memory_bounded(tmp_path):
    n, shape = 3000, (3, 64, 64)  # 141 MiB as float32 on the host
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (n, *shape))
    x[:] = np.random.default_rng(0).integers(0, 256, x.shape, dtype=np.uint8)
    x.flush()
    del x
    np.save(tmp_path / "y.npy", np.arange(n) % 2)
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, tmp_path / "x.npy", tmp_path / "y.npy"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": python_path(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    before, after = map(float, out.stdout.split())
    full = n * np.prod(shape) * 4 / 2**20
    assert after - before < 0.25 * full, (before, after, full)


# ---------------------------------------------------------------------- augmentation
def naive_augment(x, flips, offsets, shift):
    out = np.zeros_like(x)
    N, C, H, W = x.shape
    for n in range(N):
        image = x[n, :, :, ::-1] if flips[n] else x[n]
        padded = np.zeros((C, H + 2 * shift, W + 2 * shift), x.dtype)
        padded[:, shift : shift + H, shift : shift + W] = image
        dy, dx = offsets[0][n], offsets[1][n]
        out[n] = padded[:, dy : dy + H, dx : dx + W]
    return out


@pytest.mark.parametrize("shift,flip", [(2, True), (1, False), (0, True)])
def test_augment_matches_a_naive_loop_on_every_backend(xp, shift, flip):
    x = np.random.default_rng(0).random((6, 2, 5, 7), dtype=np.float32)
    augmented = Augment(shift, flip, seed=5)(xp.asarray(x))
    rng = np.random.default_rng(5)  # the same draws, in the same order
    flips = rng.random(6) < 0.5 if flip else np.zeros(6, bool)
    offsets = rng.integers(0, 2 * shift + 1, size=(2, 6)) if shift else np.zeros((2, 6), int)
    from gpucnn.backend import to_numpy

    np.testing.assert_array_equal(to_numpy(augmented), naive_augment(x, flips, offsets, shift))


def test_augment_is_seeded_and_off_by_default():
    x = np.random.default_rng(0).random((8, 1, 6, 6), dtype=np.float32)
    a, b = Augment(2, True, seed=1), Augment(2, True, seed=1)
    np.testing.assert_array_equal(a(x), b(x))
    np.testing.assert_array_equal(a(x), b(x))  # and the sequence continues alike
    assert not np.array_equal(Augment(2, True, seed=2)(x), Augment(2, True, seed=1)(x))
    assert Augment()(x) is x
    with pytest.raises(ValueError, match="shift"):
        Augment(shift=-1)


def test_augment_applies_to_training_batches_only():
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 4, 4), dtype=np.float32)
    y = rng.integers(0, 2, 40)
    seen = []

    class Counting(Augment):
        def __call__(self, batch):
            seen.append(batch.shape[0])
            return super().__call__(batch)

    Trainer(dense_model((1, 4, 4)), augment=Counting(1, True), log=None).fit(
        x, y, validation_data=(x[:10], y[:10]), epochs=2, batch_size=16
    )
    assert seen == [16, 16, 8] * 2  # labels untouched: augmented batches keep their size


# ---------------------------------------------------------------------- CLI
@pytest.fixture
def trained_on_folder(folder, tmp_path, capsys):
    out = tmp_path / "run"
    code = run(
        "train", "--data", folder, "--image-size", 16, 16, "--channels", 1, "--epochs", 8,
        "--backend", "numpy", "--out", out, "--augment-shift", 1, "--seed", 0,
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("warning: skipped") == 1 and "broken.png" in err
    return out


def test_train_on_folder_writes_metrics_and_preprocessing(trained_on_folder, capsys):
    metrics = json.loads((trained_on_folder / "metrics.json").read_text())
    assert metrics["skipped_files"] == 1 and metrics["run"]["augment_shift"] == 1
    from gpucnn.checkpoint import load_checkpoint

    prep = load_checkpoint(trained_on_folder / "model.npz").meta["preprocessing"]
    assert prep["classes"] == ["disc", "square"] and prep["background"] == "dark"
    assert prep["image_size"] == [16, 16] and prep["channels"] == 1
    assert run("evaluate", trained_on_folder / "model.npz") == 0
    out = capsys.readouterr().out
    assert "disc" in out and "square" in out


def test_predict_on_every_image_kind(trained_on_folder, tmp_path, capsys):
    rng = np.random.default_rng(1)
    disc = shape_image(0, 40, rng)
    files = {}
    files["jpeg"] = tmp_path / "a.jpg"
    Image.fromarray(disc).save(files["jpeg"], quality=90)
    files["palette"] = tmp_path / "p.png"
    Image.fromarray(disc).convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"])
    files["16-bit"] = tmp_path / "g16.png"
    Image.fromarray(disc[..., 0].astype(np.uint16) * 257).save(files["16-bit"])
    assert Image.open(files["16-bit"]).mode.startswith("I")
    files["alpha"] = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([disc, np.full(disc.shape[:2], 255, np.uint8)])).save(files["alpha"])
    files["huge"] = tmp_path / "big.bmp"
    Image.fromarray(shape_image(0, 300, rng)).save(files["huge"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nothing")
    code = run("predict", trained_on_folder / "model.npz", *files.values(), bad, "--json")
    captured = capsys.readouterr()
    assert code == 2
    results = json.loads(captured.out)
    assert [r["file"] for r in results] == [str(p) for p in [*files.values(), bad]]
    assert "error" in results[-1] and captured.err.count("gpucnn: error:") == 1
    for result in results[:-1]:
        assert result["class"] in ("disc", "square") and not result["inverted"]
    assert {r["class"] for r in results[:-1]} == {"disc"}


def test_read_image_conversions(tmp_path):
    grey16 = np.array([[0, 65535], [32768, 1000]], np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g.png")
    np.testing.assert_allclose(read_image(tmp_path / "g.png")[0], grey16 / 65535.0, atol=1e-6)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = [0, 0, 0, 255]  # opaque black; the rest transparent -> white background
    Image.fromarray(rgba).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png", channels=1)
    np.testing.assert_allclose(image[0], [[0, 1], [1, 1]])
    rgb = np.zeros((1, 1, 3), np.uint8)
    rgb[..., 1] = 255
    Image.fromarray(rgb).save(tmp_path / "g1.png")
    assert read_image(tmp_path / "g1.png", channels=1)[0, 0, 0] == pytest.approx(150 / 255)
    assert read_image(tmp_path / "g1.png", channels=3, size=(3, 5)).shape == (3, 3, 5)


def test_predict_inverts_dark_on_white_digits_with_a_warning(tmp_path, capsys):
    out = tmp_path / "digits"
    assert run("train", "--epochs", 3, "--out", out, "--backend", "numpy") == 0
    from gpucnn.data import load_digits

    x, y = load_digits()
    index = int(np.flatnonzero(y == 3)[0])
    light = np.round(x[index, 0] * 255).astype(np.uint8)
    Image.fromarray(light).save(tmp_path / "light.png")
    Image.fromarray(255 - light).resize((64, 64)).save(tmp_path / "scan.png")
    capsys.readouterr()
    assert run("predict", out / "model.npz", tmp_path / "light.png", tmp_path / "scan.png") == 0
    captured = capsys.readouterr()
    assert captured.err.count("inverted") == 1 and "scan.png" in captured.err
    lines = captured.out.strip().splitlines()
    assert lines[0].split(": ")[1].split()[0] == "3"
    assert run("predict", out / "model.npz", tmp_path / "scan.png", "--invert", "no") == 0
    assert "inverted" not in capsys.readouterr().err


def test_train_data_refusals(tmp_path, capsys):
    assert run("train", "--data", tmp_path / "nothing") == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert run("train", "--data", tmp_path, "--dataset", "mnist") == 2
    assert "--data cannot be combined" in capsys.readouterr().err
    assert run("train", "--image-size", 8, 8) == 2
    assert "apply to --data only" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("x")
    assert run("train", "--data", tmp_path / "a.txt") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a folder" in err


def test_train_on_npz_from_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = np.zeros((40, 8, 8), np.uint8)
    y = np.arange(40) % 2
    x[y == 0, 2:6, 1:3] = 255
    x[y == 1, 1:3, 2:6] = 255
    x = np.clip(x + rng.integers(0, 30, x.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "bars.npz", x=x, y=y, class_names=np.array(["vertical", "horizontal"]))
    out = tmp_path / "run"
    code = run(
        "train", "--data", tmp_path / "bars.npz", "--epochs", 3, "--out", out, "--backend", "numpy"
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_files"] == 0 and metrics["test_accuracy"] >= 0.5
    np.save(tmp_path / "one.npy", x[:2])
    capsys.readouterr()
    assert run("predict", out / "model.npz", tmp_path / "one.npy") == 0
    assert "vertical" in capsys.readouterr().out
