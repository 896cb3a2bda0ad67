"""Kernels and time of one training step on the GPU: standard ops, CUDA kernels, CUDA graph.

Needs CuPy with a GPU, and PyTorch for its profiler: CUPTI records every kernel the process
launches, CuPy's included. For each batch size and each setting of ``GPUCNN_CUDA_KERNELS``
it warms up, records one step (forward, loss, backward, SGD-momentum update) and counts the
kernels and memory operations by name, then times ``--steps`` steps (median of ``--repeats``).
In the graph mode the count is of the kernels the replayed graph runs, launched at once.
Also times the dropout mask draw of :class:`gpucnn.random.Random` on the device.

    python benchmarks/gpu_step_profile.py --model reference --batch-size 128 512 --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import time

from gpucnn.backend import select_backend, synchronize
from gpucnn.bench import build_model, synthetic_batch
from gpucnn.cuda_graph import GRAPHS_ENV, training_step
from gpucnn.functional._dispatch import CUDA_KERNELS_ENV
from gpucnn.optim import SGD
from gpucnn.random import Random


def count_launches(step, xp) -> dict:
    """Kernels and memory operations that one call of ``step`` puts on the GPU, by name."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    synchronize(xp)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        synchronize(xp)
    names, times = collections.Counter(), collections.Counter()
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        names[event.name[:80]] += 1
        times[event.name[:80]] += getattr(event, "device_time", None) or getattr(
            event, "cuda_time", 0.0
        )
    return {
        "launches": sum(names.values()),
        "gpu_time_us": sum(times.values()),
        "by_name": dict(names),
        "gpu_us_by_name": {name: round(us, 1) for name, us in times.most_common()},
    }


def inference_profile(args, backend) -> list[dict]:
    """Kernels and GPU time of one inference forward pass at ``--infer-batch-size``, for
    gpucnn with and without its CUDA kernels and for PyTorch (eval, inference mode)."""
    import torch

    xp = backend.xp
    runs = []
    for kernels, graphs in (("0", "0"), ("1", "0"), ("1", "1")):
        os.environ[CUDA_KERNELS_ENV], os.environ[GRAPHS_ENV] = kernels, graphs
        model = build_model(args.model, backend)
        x, _ = synthetic_batch(model, args.infer_batch_size, seed=0)
        infer = model.inference_function()

        def forward(infer=infer, x=x, kernels=kernels):
            os.environ[CUDA_KERNELS_ENV] = kernels  # the ops read it at each call
            infer(x)

        name = "standard ops" if kernels == "0" else "CUDA kernels" + " + graph" * (graphs == "1")
        runs.append(("gpucnn, " + name, forward))
    from compare_torch import torch_model  # noqa: PLC0415 - a sibling script

    net = torch_model(args.model, torch).cuda().eval()
    batch = torch.rand(args.infer_batch_size, *build_model(args.model, backend).input_shape)
    batch = batch.cuda()

    def torch_forward():
        with torch.inference_mode():
            net(batch)

    runs.append(("torch", torch_forward))
    report = []
    for name, forward in runs:
        for _ in range(3):
            forward()
        seconds = median_seconds(forward, xp, args.steps, args.repeats)
        entry = {"library": name, "batch_size": args.infer_batch_size, "forward_ms": 1e3 * seconds}
        entry.update(count_launches(forward, xp))
        report.append(entry)
        top = ", ".join(f"{k[:40]} {v:.0f}" for k, v in list(entry["gpu_us_by_name"].items())[:6])
        print(
            f"inference {args.infer_batch_size} {name:<28}: {entry['launches']} kernels, "
            f"GPU {entry['gpu_time_us']:.0f} us, forward {entry['forward_ms']:.3f} ms "
            f"({args.infer_batch_size / seconds:.0f} img/s); top us: {top}",
            flush=True,
        )
    os.environ.pop(CUDA_KERNELS_ENV, None)
    os.environ.pop(GRAPHS_ENV, None)
    return report


def median_seconds(step, xp, steps: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize(xp)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(xp)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def random_draw_cost(xp, repeats: int = 50) -> dict:
    """Microseconds per dropout-mask draw (128 x 128) and per plain CuPy draw, for comparison."""
    random = Random(0, xp)
    shape = (128, 128)
    generator = xp.random.default_rng(0)

    def per_call(fn):
        fn()
        synchronize(xp)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        synchronize(xp)
        return 1e6 * (time.perf_counter() - start) / repeats

    return {
        "random_uniform_us": per_call(lambda: random.uniform(shape, xp.float32)),
        "one_persistent_generator_us": per_call(lambda: generator.random(shape, dtype=xp.float32)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="reference")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--infer-batch-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    backend = select_backend("cupy")
    xp = backend.xp
    report = {"model": args.model, "runs": []}
    modes = {  # name: (GPUCNN_CUDA_KERNELS, GPUCNN_CUDA_GRAPHS)
        "standard ops": ("0", "0"),
        "CUDA kernels": ("1", "0"),
        "CUDA kernels + graph": ("1", "1"),
    }
    for batch_size in args.batch_size:
        for mode, (kernels, graphs) in modes.items():
            os.environ[CUDA_KERNELS_ENV], os.environ[GRAPHS_ENV] = kernels, graphs
            model = build_model(args.model, backend)
            x, y = synthetic_batch(model, batch_size, seed=0)
            step_function = training_step(model, SGD(lr=0.01, momentum=0.9))

            def step(step_function=step_function, x=x, y=y):
                step_function(x, y)

            for _ in range(3):
                step()
            try:
                launches = count_launches(step, xp)
            except Exception as exc:  # noqa: BLE001 - the profiler may be unavailable
                launches = {"error": f"{type(exc).__name__}: {exc}"}
            seconds = median_seconds(step, xp, args.steps, args.repeats)
            run = {
                "batch_size": batch_size,
                "mode": mode,
                "step_ms": 1e3 * seconds,
                "train_images_per_second": batch_size / seconds,
                **getattr(step_function, "describe", dict)(),
                **launches,
            }
            report["runs"].append(run)
            print(
                f"batch {batch_size:>5} {mode:<21}: {run.get('launches', '?')} kernels, "
                f"GPU {run.get('gpu_time_us', 0):.0f} us, step {run['step_ms']:.3f} ms, "
                f"{run['train_images_per_second']:.0f} img/s"
                + (f" [{run['disabled_because']}]" if run.get("disabled_because") else ""),
                flush=True,
            )
    os.environ.pop(CUDA_KERNELS_ENV, None)
    os.environ.pop(GRAPHS_ENV, None)
    report["inference"] = inference_profile(args, backend)
    report["random"] = random_draw_cost(xp)
    print("dropout draw:", json.dumps(report["random"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
