"""gpucnn (NumPy) vs PyTorch CPU on a suite of networks, with identical weights.

Every network is first checked for parity in float64: gpucnn and its PyTorch twin (the same
weights and buffers, see ``torch_mirror.py``) must give the same logits and the same gradient
of every parameter. Then each (network, mode, batch) is timed in alternating pairs, gpucnn
then PyTorch, each timed run a fresh child process running one library only (as in
``compare_torch.py``: PyTorch's OpenMP workers would otherwise spin and steal the cores from
NumPy's threads). Each side runs on ``--threads`` threads (``torch.set_num_threads``;
``GPUCNN_CPU_THREADS`` and the BLAS limit). One line per network, then the geometric mean
of the per-configuration ratios (gpucnn / PyTorch, each the median over its pairs).

    python benchmarks/cpu_suite.py                          # every network, train 32/128/512, infer 1000
    python benchmarks/cpu_suite.py --networks vgg strided --batch-size 128 --pairs 5
    python benchmarks/cpu_suite.py --infer-batch-size 0 --json suite.json   # training only
    python benchmarks/cpu_suite.py --list

PyTorch runs with ``OMP_WAIT_POLICY=PASSIVE`` unless ``--torch-omp-wait-policy`` says
otherwise (see its help). Timings on a shared machine are noisy: compare figures from one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch_mirror  # noqa: E402

MNIST = (1, 28, 28)
COLOUR = (3, 32, 32)


def conv(filters, kernel, **options):
    return {"type": "Conv2D", "filters": filters, "kernel_size": kernel, **options}


RELU = {"type": "ReLU"}
BN = {"type": "BatchNorm2D"}
FLATTEN = {"type": "Flatten"}


def pool(size, stride=None):
    return {"type": "MaxPool2D", "pool_size": size, "stride": stride or size}


def dense(units):
    return {"type": "Dense", "units": units}


def _vgg(with_bn: bool) -> list:
    def block(filters):
        layers = []
        for _ in range(2):
            layers += [conv(filters, 3, padding="same"), *([BN] if with_bn else []), RELU]
        return layers + [pool(2)]

    return [*block(32), *block(64), FLATTEN, dense(128), RELU, dense(10)]


# name -> (input shape, layers, what it stands for); a str names a built-in architecture
NETWORKS: dict[str, tuple[tuple[int, int, int], list | str, str]] = {
    "reference": (MNIST, "reference", "built-in: 2 x (3x3 conv, ReLU, 2x2 pool), 2 Dense"),
    "small": (MNIST, "small", "built-in: 16/32 filters, 'same' padding"),
    "lenet": (MNIST, "lenet", "built-in: LeNet-5, 5x5 kernels"),
    "small_bn": (MNIST, "small_bn", "built-in: small with BatchNorm"),
    "resnet": (MNIST, "resnet", "built-in: ResNet, 32/64/64/128 filters, global average pooling"),
    "wide5x5": (
        MNIST,
        [conv(64, 5, padding=2), RELU, pool(2), conv(128, 5, padding=2), RELU, pool(2),
         FLATTEN, dense(10)],
        "5x5 kernels with padding, 64/128 filters",
    ),
    "strided": (
        MNIST,
        [conv(32, 3, stride=2, padding=1), RELU, conv(64, 3, stride=2, padding=1), RELU,
         conv(128, 3, stride=2, padding=1), RELU, FLATTEN, dense(10)],
        "stride-2 convolutions, no pooling",
    ),
    "vgg": (COLOUR, _vgg(False), "3x32x32 colour, 3x3 'same' convolutions back to back"),
    "overlap_pool": (
        MNIST,
        [conv(32, 3), RELU, pool(3, 2), conv(64, 3), RELU, pool(3, 2), FLATTEN, dense(10)],
        "overlapping 3x3/2 max pooling",
    ),
    "vgg_bn": (COLOUR, _vgg(True), "vgg with BatchNorm after every convolution"),
}  # fmt: skip


def config(name: str) -> dict:
    from gpucnn.architectures import architecture

    shape, layers, _ = NETWORKS[name]
    if isinstance(layers, str):
        return architecture(layers, shape, 10)
    return {"input_shape": list(shape), "layers": [dict(layer) for layer in layers]}


# the parent's architecture of the network a child times: a --baseline tree then builds the
# same network, even where its own built-in of that name differs
CONFIG_ENV = "GPUCNN_SUITE_CONFIG"


def build(name: str, dtype: str = "float32", seed: int = 0):
    from gpucnn import Sequential

    given = os.environ.get(CONFIG_ENV)
    spec = json.loads(given) if given else config(name)
    return Sequential.from_config(spec, backend="numpy", seed=seed, dtype=dtype)


def skip_reason(name: str) -> str | None:
    """Why ``name`` cannot run here (a layer type not in this gpucnn), or None."""
    try:
        build(name)
    except (ValueError, KeyError) as exc:
        return str(exc).splitlines()[0]
    return None


# ------------------------------------------------------------------------------ child


def child(args) -> dict:
    """Time one library on one (network, mode, batch) in this process."""
    import torch

    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    from gpucnn.cuda_graph import training_step
    from gpucnn.optim import SGD
    from gpucnn.resources import retain_freed_memory

    batch, mode = args.batch, args.mode
    rng = np.random.default_rng(0)
    model = build(args.network)
    x_host = rng.random((batch, *model.input_shape), dtype=np.float32)
    y_host = rng.integers(0, 10, batch)
    if args.child == "gpucnn":
        retain_freed_memory()  # as Trainer.fit does
        step = training_step(model, SGD(lr=0.01, momentum=0.9))

        def timed(steps):
            return torch_mirror.time_gpucnn(model, x_host, y_host, step, mode, steps)
    else:
        net = torch_mirror.torch_twin(model, torch, torch.float32)
        net.train(mode == "train")
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.from_numpy(x_host), torch.from_numpy(y_host)

        def timed(steps):
            return torch_mirror.time_torch(torch, net, x, y, optimizer, mode, steps)

    timed(1)  # warm-up: allocator, thread pools
    steps = max(2, math.ceil(args.seconds * timed(1) / batch))
    return {"images_per_second": timed(steps), "steps": steps}


# ----------------------------------------------------------------------------- parent


def profile(args) -> None:
    """Per-step medians of one training batch of each network, on ``--threads`` threads."""
    os.environ["GPUCNN_CPU_THREADS"] = str(args.threads)
    from threadpoolctl import threadpool_limits

    from gpucnn.bench import StepTimer
    from gpucnn.resources import retain_freed_memory

    threadpool_limits(args.threads)
    retain_freed_memory()
    batch = args.batch_size[0] if args.batch_size else 128
    print(f"per-step median ms at batch {batch}, {args.threads} threads; CPU: {cpu_name()}")
    rng = np.random.default_rng(2)
    for name in args.networks:
        if skip_reason(name):
            continue
        model = build(name)
        x = rng.random((batch, *model.input_shape), dtype=np.float32)
        y = rng.integers(0, 10, batch)
        model.loss_and_backward(x, y, check=False)  # warm-up
        timer = StepTimer(model.xp)
        for _ in range(max(3, args.pairs)):
            model.loss_and_backward(x, y, check=False, step_hook=timer)
        rows = [
            (step.name, *(1e3 * statistics.median(timer.times[step.name, p]) for p in ("forward", "backward")))
            for step in model.steps
        ]  # fmt: skip
        print(f"{name}: {sum(f + b for _, f, b in rows):.1f} ms")
        for step, forward, backward in rows:
            print(f"  {step:<40} {forward:8.2f} / {backward:8.2f}")


def measure(
    args, library: str, network: str, mode: str, batch: int, source: str | None = None
) -> float:
    """Images/s of one timed run in a child process; ``source``: import gpucnn from there."""
    command = [
        sys.executable, __file__, "--child", library, "--network", network, "--mode", mode,
        "--batch", str(batch), "--threads", str(args.threads), "--seconds", str(args.seconds),
    ]  # fmt: skip
    env = dict(os.environ, GPUCNN_CPU_THREADS=str(args.threads))
    env[CONFIG_ENV] = json.dumps(config(network))
    if library == "torch" and args.torch_omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.torch_omp_wait_policy
    if source:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{library} {network} {mode} {batch} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["images_per_second"]


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), metavar="NAME")
    parser.add_argument("--batch-size", type=int, nargs="*", default=[32, 128, 512],
                        help="training batch sizes (none: no training runs)")  # fmt: skip
    parser.add_argument("--infer-batch-size", type=int, default=1000, help="0: no inference")
    parser.add_argument("--pairs", type=int, default=3, help="alternating timed pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per timed run")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also time the gpucnn in this source tree (e.g. a git worktree of main), "
        "alternating with this one, and report the speed-up over it",
    )
    parser.add_argument(
        "--torch-omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY of the PyTorch runs ('' leaves it unset). PASSIVE by default: "
        "on a machine shared with other jobs, OpenMP threads that spin at barriers while "
        "another is descheduled made PyTorch 5-10x slower at 2 threads (measured)",
    )
    parser.add_argument("--no-parity", action="store_true", help="skip the float64 check")
    parser.add_argument("--list", action="store_true", help="list the networks and exit")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print gpucnn's per-step forward/backward ms (gpucnn.bench.layer_profile) for "
        "--networks at the first --batch-size instead of timing against PyTorch",
    )
    parser.add_argument("--json", help="write the report to this file")
    parser.add_argument("--child", choices=("gpucnn", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--network", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.list:
        for name, (shape, _, about) in NETWORKS.items():
            print(f"{name:<13} {'x'.join(map(str, shape)):<8} {about}")
        return
    unknown = sorted(set(args.networks) - set(NETWORKS))
    if unknown:
        parser.error(f"unknown networks {unknown}; choose from {list(NETWORKS)}")
    if args.profile:
        profile(args)
        return

    import torch

    runs = [("train", b) for b in args.batch_size]
    if args.infer_batch_size > 0:
        runs.append(("infer", args.infer_batch_size))
    print(
        f"gpucnn (NumPy {np.__version__}) vs torch {torch.__version__} CPU, {args.threads} "
        f"threads each (torch OMP_WAIT_POLICY={args.torch_omp_wait_policy or 'unset'}), "
        f"{args.pairs} alternating pairs; CPU: {cpu_name()}",
        flush=True,
    )
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cpu": cpu_name(),
        "threads": args.threads,
        "pairs": args.pairs,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "baseline": args.baseline,
        "torch_omp_wait_policy": args.torch_omp_wait_policy,
        "networks": {},
        "skipped": {},
    }
    started = time.perf_counter()
    for name in args.networks:
        reason = skip_reason(name)
        if reason:
            print(f"{name:<13} skipped: {reason}", flush=True)
            report["skipped"][name] = reason
            continue
        entry = {"runs": []}
        if not args.no_parity:
            model = build(name, dtype="float64")
            torch_mirror.random_biases(model)
            entry["parity_max_abs_diff"] = torch_mirror.check_parity(model, torch)
        cells = []
        for mode, batch in runs:
            mine, theirs, base = [], [], []
            for _ in range(args.pairs):
                mine.append(measure(args, "gpucnn", name, mode, batch))
                if args.baseline:
                    base.append(measure(args, "gpucnn", name, mode, batch, args.baseline))
                theirs.append(measure(args, "torch", name, mode, batch))
            ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
            run = {
                "mode": mode,
                "batch_size": batch,
                "gpucnn_images_per_second": statistics.median(mine),
                "torch_images_per_second": statistics.median(theirs),
                "median_pair_ratio": statistics.median(ratios),
                "pairs": [{"gpucnn": a, "torch": b} for a, b in zip(mine, theirs, strict=True)],
            }
            cell = f"{mode} {batch}: {run['median_pair_ratio']:.2f}x"
            if args.baseline:
                run["baseline_images_per_second"] = statistics.median(base)
                run["baseline_pair_ratio"] = statistics.median(
                    [b / t for b, t in zip(base, theirs, strict=True)]
                )
                run["speedup_over_baseline"] = statistics.median(
                    [a / b for a, b in zip(mine, base, strict=True)]
                )
                for pair, b in zip(run["pairs"], base, strict=True):
                    pair["baseline"] = b
                cell += f" (was {run['baseline_pair_ratio']:.2f}x)"
            entry["runs"].append(run)
            cells.append(cell)
        entry["geometric_mean_ratio"] = geometric_mean(
            r["median_pair_ratio"] for r in entry["runs"]
        )
        report["networks"][name] = entry
        parity = "" if args.no_parity else f"  (parity {entry['parity_max_abs_diff']:.0e})"
        print(f"{name:<13} " + "  ".join(cells) + f"  | geo-mean {entry['geometric_mean_ratio']:.2f}x{parity}", flush=True)  # fmt: skip
    summary = {}
    for mode, batch in runs:
        ratios = [
            run["median_pair_ratio"]
            for entry in report["networks"].values()
            for run in entry["runs"]
            if (run["mode"], run["batch_size"]) == (mode, batch)
        ]
        summary[f"{mode}_{batch}"] = geometric_mean(ratios)
    summary["all"] = geometric_mean(
        run["median_pair_ratio"] for e in report["networks"].values() for run in e["runs"]
    )
    report["geometric_means"] = summary
    print(
        "geometric mean of gpucnn/torch ratios: "
        + "  ".join(f"{key.replace('_', ' ')}: {value:.2f}x" for key, value in summary.items())
        + f"   ({time.perf_counter() - started:.0f} s)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
