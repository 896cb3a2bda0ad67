"""``benchmarks/time_to_accuracy.py``: each run a fresh ``gpucnn train`` process timed from its
start, the first with an empty kernel cache, nothing left behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import python_path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "time_to_accuracy.py"


@pytest.mark.skipif(
    not SCRIPT.is_file(),
    reason="no benchmarks/ beside the tests (an installed copy, as in the test image)",
)
def test_two_runs_are_timed_from_start_to_exit_and_leave_nothing(tmp_path):
    report = tmp_path / "tta.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=python_path(ROOT))
    command = [
        sys.executable, str(SCRIPT), "--dataset", "digits",
        "--backend", "numpy", "--target", "0.5", "--json", str(report), "--", "--epochs", "1",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    runs = json.loads(report.read_text())["runs"]
    assert [r["kernel_cache"] for r in runs] == ["empty", "warm"]
    for r in runs:
        assert r["epochs"] == 1 and r["reached_target"] and r["test_accuracy"] >= 0.5
        assert r["wall_s"] > r["training_s"] > 0  # imports, data and evaluation on top
    assert "run 2 (kernel cache warm)" in done.stdout
    assert list(scratch.iterdir()) == []  # run folders and the kernel cache removed
