"""``benchmarks/gil_share.py``: its sample counting, its limit model and its child's steps.
py-spy itself runs only where it is installed and may attach to a child process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if not (BENCHMARKS / "gil_share.py").exists():
    pytest.skip(
        "no benchmarks/ beside the tests (an installed copy, as in the test image)",
        allow_module_level=True,
    )
sys.path.insert(0, str(BENCHMARKS))

import gil_share  # noqa: E402

RAW = "\n".join(
    [
        "<module> (gil_share.py:1);main (gil_share.py:2);child (gil_share.py:3) 7",  # warm-up
        "<module> (gil_share.py:1);child (gil_share.py:3);timed_steps (gil_share.py:4);f (a.py:1) 30",
        "<module> (gil_share.py:1);child (gil_share.py:3);timed_steps (gil_share.py:4) 10",
        "_bootstrap (threading.py:1);_worker (_cpu_threads.py:2);_in_part (_cpu_threads.py:3) 12",
        "_bootstrap (threading.py:1);_worker (_cpu_threads.py:2);get (queue.py:9) 50",  # idle
    ]
)


def test_counts_only_samples_taken_while_stepping():
    # every stack of the stepping thread: the warm-up's and idle workers' are not counted
    assert gil_share.count_samples(RAW, gil=False, steps=10) == 40
    # GIL holders: the workers' samples in proportion to the 10 timed of 12 steps
    assert gil_share.count_samples(RAW, gil=True, steps=10) == pytest.approx(40 + 12 * 10 / 12)


def test_threads_at_limit_meets_work_and_gil_time():
    # 12 ms of work on one thread, 2 ms of GIL-held time, 1 ms more per thread:
    # 12 / p = 2 + (p - 1) at p = 3
    assert float(gil_share.threads_at_limit(12.0, 2.0, 1.0)) == pytest.approx(3.0, abs=0.05)
    assert float(gil_share.threads_at_limit(12.0, 1.0, 1.0)) == pytest.approx(12**0.5, abs=0.05)
    # GIL-held time that does not grow: Amdahl's bound
    assert float(gil_share.threads_at_limit(12.0, 3.0, 0.0)) == 4.0


def test_child_times_the_suite_network(monkeypatch):
    monkeypatch.setenv("GPUCNN_CPU_THREADS", "1")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gil_share.py"), "--child", "--network", "reference",
         "--batch", "4", "--threads", "1", "--steps", "2"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout.strip().splitlines()[-1])["seconds"] > 0


@pytest.mark.skipif(gil_share.find_py_spy() is None, reason="py-spy is not installed")
def test_share_of_a_small_network_is_a_fraction():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gil_share.py"), "--networks", "reference",
         "--batch-size", "16", "--steps", "60"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    said = (done.stderr + done.stdout).lower()
    if done.returncode != 0 and any(w in said for w in ("ptrace", "permission", "not permitted")):
        pytest.skip("py-spy may not attach to processes here")
    assert done.returncode == 0, done.stderr
    row = done.stdout.strip().splitlines()[-1].split()
    assert row[:2] == ["reference", "16"]
    shares = [int(row[2]), int(row[9])]  # "N % of T = G ms", once per thread count
    # the ratio of two runs' sample counts, each over about a second: on a loaded machine a
    # share may pass 100; this checks the wiring, not the figure
    assert all(0 <= share <= 200 for share in shares)


def test_call_contention_prints_a_ratio_per_call(capsys):
    gil_share.call_contention(sizes=(4096,), seconds=0.05)
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert len(rows) == 3 and all(row.rstrip().endswith("x") for row in rows)
    assert all(float(row.split()[-1][:-1]) > 0 for row in rows)


@pytest.mark.parametrize(
    "arguments,expected",
    [
        (["--threads", "1"], "expected --threads of at least 2 (compared with one); received 1"),
        (["--networks", "nope"], "unknown networks ['nope']"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(arguments, expected):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gil_share.py"), *arguments],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert expected in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
