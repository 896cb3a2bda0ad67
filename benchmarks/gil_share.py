"""How much of a NumPy training step holds Python's GIL: the bound on what more threads buy.

``gpucnn.functional._cpu_threads.over_images`` splits each pass over CPU threads, and each
part then calls NumPy. NumPy releases the GIL inside its loops and BLAS calls, but holds it
for everything around them: the Python of each part, argument parsing, allocation and
dispatch of every call. Those stretches run one at a time however many threads there are, so
if a step on one thread holds the GIL for a share ``g`` of its time, no number of threads
makes it more than ``1 / g`` times faster (Amdahl), and long before that the threads queue
for the GIL.

This script measures it with py-spy (``pip install py-spy``; it samples a process from
outside and, with ``--gil``, records a sample only while some thread holds the GIL). Each
network's training steps run in a child process twice under ``py-spy record``: once sampling
every stack of the stepping thread (``--idle``: the sampling rate actually achieved) and once
only GIL holders (the stepping thread's and the workers'). The share is the second count over
the first, per second of stepping; times the step, it gives the ms per step the GIL is held.
Both are reported for ``GPUCNN_CPU_THREADS=1`` and for ``--threads``. A split does not
divide the GIL-held time: every part makes the same NumPy calls on fewer images, so that time
grows with the threads ("added per thread"). The last column is where a linear model of the
two counts says the shrinking work per thread meets the growing GIL-held time, which runs
one thread at a time: more threads than that cannot make the step faster.

    python benchmarks/gil_share.py                                   # the suite's networks, batch 128
    python benchmarks/gil_share.py --networks reference resnet --batch-size 32 128 --threads 2
    python benchmarks/gil_share.py --calls      # NumPy calls of 4096 to 10^6 values in two threads

The child's steps are those of ``cpu_suite.py`` (same networks, SGD with momentum).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

# the frame that marks a sample taken while the child steps (not while it imports or builds)
STEP_FRAME = "timed_steps"
# the frame of a part of a split that runs in a worker thread (gpucnn.functional._cpu_threads)
WORKER_FRAME = "_in_part"
WARM_UP = 2  # untimed steps before the timed ones


def child(args) -> None:
    """Run ``--steps`` training steps after two of warm-up; print the seconds they took."""
    import cpu_suite
    import numpy as np
    from threadpoolctl import threadpool_limits

    from gpucnn.optim import SGD
    from gpucnn.resources import retain_freed_memory
    from gpucnn.step import TrainingStep

    threadpool_limits(args.threads)
    retain_freed_memory()
    model = cpu_suite.build(args.network)
    step = TrainingStep(model, SGD(lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, *model.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    for _ in range(WARM_UP):
        step(x, y)

    def timed_steps() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            step(x, y)
        return time.perf_counter() - start

    print(json.dumps({"seconds": timed_steps()}))


def sampled(args, py_spy: str, network: str, batch: int, threads: int, gil: bool):
    """(samples taken while stepping, seconds of stepping) of one child under py-spy: with
    ``gil`` only those taken while a thread held the GIL (the stepping thread's and the
    workers'), else every sample of the stepping thread, idle or not."""
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "samples.txt"
        command = [
            py_spy, "record", "--nonblocking", "--rate", str(args.rate), "--format", "raw",
            "--output", str(raw), "--gil" if gil else "--idle", "--",
            sys.executable, __file__, "--child", "--network", network, "--batch", str(batch),
            "--threads", str(threads), "--steps", str(args.steps),
        ]  # fmt: skip
        env = dict(os.environ, GPUCNN_CPU_THREADS=str(threads))
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(
                f"py-spy failed on {network} (exit {done.returncode}; it needs the right to "
                f"trace processes, e.g. root or ptrace_scope 0):\n{done.stderr}"
            )
        report = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not report:
            raise SystemExit(f"no timing from the child on {network}:\n{done.stdout}{done.stderr}")
        seconds = json.loads(report[-1])["seconds"]
        return count_samples(raw.read_text(), gil, args.steps), seconds


def find_py_spy() -> str | None:
    """py-spy's path: on PATH, or beside this Python (a virtual environment not activated)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def count_samples(raw: str, gil: bool, steps: int) -> float:
    """The samples of py-spy's raw output (``frame;frame;... count`` lines) taken while the
    child stepped: the stepping thread's, and with ``gil`` the workers' too. A worker's
    stack does not show which step it serves: its samples count in proportion to the timed
    steps among all (the warm-up steps are like the others)."""
    main_thread = workers = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if STEP_FRAME in stack:
            main_thread += int(count)
        elif gil and WORKER_FRAME in stack:
            workers += int(count)
    return main_thread + workers * steps / (steps + WARM_UP)


def call_contention(sizes=(4096, 65536, 1 << 20), seconds: float = 0.4) -> None:
    """Print what one NumPy call costs alone and how much two threads calling it at once get
    done together: a call holds the GIL around its loop, and two threads hand the GIL over on
    every call. Float32 arrays of each size."""
    import threading

    import numpy as np

    def calls(size):
        z, one = np.ones(size, np.float32), np.ones(size, np.float32)
        return {
            "np.add(z, one, out=z)": lambda: np.add(z, one, out=z),
            "np.multiply(z, one, out=z)": lambda: np.multiply(z, one, out=z),
            "np.copyto(z, one)": lambda: np.copyto(z, one),
        }

    def rate(ops) -> float:
        counts, stop = [0] * len(ops), threading.Event()

        def loop(k):
            while not stop.is_set():
                ops[k]()
                counts[k] += 1

        threads = [threading.Thread(target=loop, args=(k,)) for k in range(len(ops))]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        return sum(counts) / seconds

    print("calls per second of two threads at once over one thread alone (1.0: no gain)")
    for size in sizes:
        first, second = calls(size), calls(size)
        for name in first:
            alone = rate([first[name]])
            both = rate([first[name], second[name]])
            print(
                f"  {size:>8} values  {name:<28} {1e6 / alone:7.1f} us alone, two threads {both / alone:.2f}x"
            )


def main() -> None:
    import cpu_suite

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--networks", nargs="+", default=list(cpu_suite.NETWORKS), metavar="NAME")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[128])
    parser.add_argument("--threads", type=int, default=2, help="the second thread count")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per child")
    parser.add_argument(
        "--rate",
        type=int,
        default=100,
        help="py-spy samples per second. The sampler takes CPU time of its own: on 2 cores "
        "at 500, resnet's 2-thread step at batch 32 took 140 ms, at 100 88 ms (71-87 ms "
        "unsampled)",
    )
    parser.add_argument(
        "--calls",
        action="store_true",
        help="instead: how much two threads making the same NumPy call at once get done",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--network", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.calls:
        call_contention()
        return
    unknown = sorted(set(args.networks) - set(cpu_suite.NETWORKS))
    if unknown:
        parser.error(f"unknown networks {unknown}; choose from {list(cpu_suite.NETWORKS)}")
    if args.threads < 2:
        parser.error(
            f"expected --threads of at least 2 (compared with one); received {args.threads}"
        )
    py_spy = find_py_spy()
    if py_spy is None:
        raise SystemExit("expected py-spy on PATH (pip install py-spy); received none")
    print(
        f"GIL held during a training step (py-spy, {args.rate} Hz, {args.steps} steps), as a "
        f"share of the step's wall time and in ms per step; CPU: {cpu_suite.cpu_name()}"
    )
    p = args.threads
    print(
        f"{'network':<13} {'batch':>5}  {'1 thread':>24}  {f'{p} threads':>24}  "
        f"{'added per thread':>16}  {'threads at the limit':>20}"
    )
    for network in args.networks:
        for batch in args.batch_size:
            step_ms, held_ms, cells = [], [], []
            for threads in (1, p):
                every, seconds = sampled(args, py_spy, network, batch, threads, gil=False)
                held, held_seconds = sampled(args, py_spy, network, batch, threads, gil=True)
                if every == 0:
                    raise SystemExit(
                        f"expected py-spy samples of {STEP_FRAME}() in {network}'s child; "
                        "received none (did py-spy read its frames?)"
                    )
                # the rate achieved in the first run, applied to the second's stepping time
                share = held / (every * held_seconds / seconds)
                step_ms.append(1e3 * held_seconds / args.steps)
                held_ms.append(share * step_ms[-1])
                cells.append(f"{100 * share:3.0f} % of {step_ms[-1]:6.1f} = {held_ms[-1]:5.1f} ms")
            added = (held_ms[1] - held_ms[0]) / (p - 1)  # p >= 2, checked above
            limit = threads_at_limit(step_ms[0], held_ms[0], added)
            print(
                f"{network:<13} {batch:>5}  {cells[0]:>24}  {cells[1]:>24}  {added:13.1f} ms  "
                f"{limit:>20}",
                flush=True,
            )


def threads_at_limit(one_thread_ms: float, held_ms: float, added_ms: float) -> str:
    """The thread count p where the step's share of work, ``one_thread_ms / p``, meets the
    GIL-held time, ``held_ms + (p - 1) * added_ms``, which runs one thread at a time: beyond
    it more threads cannot help (a linear model of the two measured counts)."""
    if added_ms <= 0:
        return f"{one_thread_ms / max(held_ms, 1e-9):.1f}"
    b = held_ms - added_ms
    return f"{(-b + math.sqrt(b * b + 4 * added_ms * one_thread_ms)) / (2 * added_ms):.1f}"


if __name__ == "__main__":
    main()
