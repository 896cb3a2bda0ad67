"""gpucnn vs PyTorch on the same network, batch, thread count and optimizer.

Optional: needs ``torch`` (on a CPU-only machine ``pip install torch==2.13.0``). Runs the
two libraries in alternating pairs so both see the same machine state, and reports the median
of each and the median of the per-pair ratios. Each timed run is a fresh child process running
one library only: in one process, PyTorch's OpenMP workers keep spinning after each call and
steal the CPU from NumPy's BLAS threads, which skews the comparison. With ``--device cuda``
both run in this one process instead (the GPU does the work, and one CUDA start-up is paid
once, not per run), every batch size in turn; there PyTorch is also timed with TF32 off
(its cuDNN convolutions use TF32 by default; gpucnn computes in full float32), then at its
best: each configuration of ``--torch-configs`` (all by default; see ``torch_best.py``: the
whole step in a CUDA graph, ``torch.compile(mode="reduce-overhead")``, ``cudnn.benchmark``,
``channels_last``, float32 with TF32 off and on, bfloat16 autocast) in turn, in alternating
pairs with gpucnn, with the fastest configuration per precision. ``--smoke`` runs each
configuration for two steps of a tiny batch, on any device, and times nothing.

    python benchmarks/compare_torch.py --model reference --batch-size 128 --pairs 5
    python benchmarks/compare_torch.py --model vgg --batch-size 128   # any network of cpu_suite.py
    python benchmarks/compare_torch.py --model reference --mode infer --batch-size 1000
    python benchmarks/compare_torch.py --backend cupy --device cuda --batch-size 128 512 2048
    python benchmarks/compare_torch.py --backend cupy --device cuda --torch-configs graph,compile
    python benchmarks/compare_torch.py --smoke --mode infer

Writes a JSON report with ``--json FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from gpucnn import Sequential
from gpucnn.backend import select_backend, to_device
from gpucnn.cuda_graph import training_step
from gpucnn.optim import SGD
from gpucnn.resources import retain_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_suite  # noqa: E402
import torch_best  # noqa: E402
from torch_mirror import time_gpucnn, time_torch, torch_twin  # noqa: E402


def build_model(name: str, backend) -> Sequential:
    """A network of ``cpu_suite.py`` (the built-ins among them) or an architecture file for
    MNIST-shaped input, with the weights of seed 0."""
    if name in cpu_suite.NETWORKS:
        config = cpu_suite.config(name)
    else:
        from gpucnn.architectures import architecture

        config = architecture(name, cpu_suite.MNIST, 10)
    return Sequential.from_config(config, backend=backend, seed=0)


def host_batch(batch_size: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The batch every run times: images (N, C, H, W) in [0, 1) and labels (N,)."""
    rng = np.random.default_rng(0)
    shape = cpu_suite.NETWORKS[name][0] if name in cpu_suite.NETWORKS else cpu_suite.MNIST
    return rng.random((batch_size, *shape), dtype=np.float32), rng.integers(0, 10, batch_size)


def setup(args, library: str, batch_size: int, torch):
    """A function that times one run of ``library`` at ``batch_size`` (images/s)."""
    x_host, y_host = host_batch(batch_size, args.model)
    if library == "gpucnn":
        retain_freed_memory()  # as Trainer.fit does (glibc keeps freed memory for reuse)
        backend = select_backend(args.backend)
        model = build_model(args.model, backend)
        if args.precision:
            model.set_precision(args.precision)
        step = training_step(model, SGD(lr=0.01, momentum=0.9))
        x, y = to_device(x_host, backend.xp), to_device(y_host, backend.xp)
        return lambda: time_gpucnn(model, x, y, step, args.mode, args.steps)
    # the same weights as gpucnn's model (built with the same seed)
    model = torch_twin(build_model(args.model, select_backend("numpy")), torch).to(args.device)
    model.train(args.mode == "train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.from_numpy(x_host).to(args.device), torch.from_numpy(y_host).to(args.device)
    return lambda: time_torch(torch, model, x, y, optimizer, args.mode, args.steps, args.device)


def set_torch_tf32(torch, allowed: bool) -> None:
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed


def child(args) -> float:
    """Time one library in this process (called through --child)."""
    import torch

    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    run = setup(args, args.child, args.batch_size[0], torch)
    run()  # warm-up (and, with CUDA graphs, recording)
    return run()


def in_process(args, batch_size: int, torch) -> tuple[list, list, list, dict]:
    """Alternating pairs in this process: gpucnn, PyTorch as configured, PyTorch without TF32;
    then each of ``args.torch_configs`` in turn (see :func:`time_configs`)."""
    runs = {name: setup(args, name, batch_size, torch) for name in ("gpucnn", "torch")}
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    mine, theirs, theirs_fp32 = [], [], []
    for name in ("gpucnn", "torch"):
        runs[name]()  # warm-up
    for _ in range(args.pairs):
        mine.append(runs["gpucnn"]())
        theirs.append(runs["torch"]())
        set_torch_tf32(torch, False)
        theirs_fp32.append(runs["torch"]())
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    del runs["torch"]  # its memory, before the configurations claim theirs
    configs = time_configs(args, batch_size, torch, runs["gpucnn"])
    return mine, theirs, theirs_fp32, configs


def time_configs(args, batch_size: int, torch, gpucnn_run) -> dict:
    """Each PyTorch configuration of ``args.torch_configs`` (see ``torch_best.py``) in turn:
    built and warmed up, then timed in ``args.pairs`` alternating pairs with ``gpucnn_run``,
    then freed. One at a time, so that a recorded graph or compiled step holds no memory
    while another runs, and each ratio comes from pairs taken side by side. A configuration
    that fails to build or run is reported as ``"failed: <reason>"``, and the others go on."""
    x_host, y_host = host_batch(batch_size, args.model)
    model = build_model(args.model, select_backend("numpy"))  # the weights gpucnn starts from
    results = {}
    for config in args.torch_configs:
        mine, theirs = [], []
        try:
            run = torch_best.build(
                torch, config, model, x_host, y_host, args.mode, args.steps, args.device
            )
            counters = torch_best.compile_counters(torch) if config.runner == "compile" else {}
            for _ in range(args.pairs):
                mine.append(gpucnn_run())
                theirs.append(run())
        except Exception as error:  # one configuration failing must not end the comparison
            results[config.name] = {"status": torch_best.failure(error)}
            continue
        finally:
            run = None
            if torch.cuda.is_available():
                # after a failed capture the device may refuse; the next run will say so
                with contextlib.suppress(RuntimeError):
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
        results[config.name] = {
            "status": "ok",
            "runner": config.runner,
            "precision": config.precision,
            "cudnn_benchmark": config.cudnn_benchmark,
            "channels_last": config.channels_last,
            **counters,
            "torch_images_per_second": statistics.median(theirs),
            "gpucnn_images_per_second": statistics.median(mine),
            "median_pair_ratio": statistics.median(
                a / b for a, b in zip(mine, theirs, strict=True)
            ),
            "pairs": [{"gpucnn": a, "torch": b} for a, b in zip(mine, theirs, strict=True)],
        }
    return results


def best_configs(configs: dict) -> dict:
    """Per precision, the fastest configuration that ran: ``{"torch_best_fp32": {...}, ...}``.
    ``fp32`` (TF32 off) is the one that computes what gpucnn computes."""
    best = {}
    for precision in torch_best.PRECISIONS:
        ran = {
            name: result
            for name, result in configs.items()
            if result["status"] == "ok" and result["precision"] == precision
        }
        if ran:
            name = max(ran, key=lambda n: ran[n]["torch_images_per_second"])
            best[f"torch_best_{precision}"] = {
                "config": name,
                "torch_images_per_second": ran[name]["torch_images_per_second"],
                "median_pair_ratio": ran[name]["median_pair_ratio"],
            }
    return best


def config_lines(configs: dict, best: dict) -> list[str]:
    """One printed line per configuration, then the best one per precision."""
    lines = []
    for name, result in configs.items():
        if result["status"] != "ok":
            lines.append(f"  torch[{name}] {result['status']}")
            continue
        line = (
            f"  torch[{name}] {result['torch_images_per_second']:.0f} img/s, "
            f"ratio {result['median_pair_ratio']:.2f}x"
        )
        if result["runner"] == "compile":
            line += (
                f" ({result['graph_breaks']} graph breaks, "
                f"{result['cudagraph_skips']} CUDA-graph skips)"
            )
        lines.append(line)
    for key, result in best.items():
        lines.append(
            f"  best {key.removeprefix('torch_best_')}: {result['config']} "
            f"{result['torch_images_per_second']:.0f} img/s, ratio {result['median_pair_ratio']:.2f}x"
        )
    return lines


def smoke(args, torch) -> int:
    """``--smoke``: every selected configuration for two steps of a tiny batch on
    ``--device``; those that need CUDA are skipped elsewhere. Exit status 1 if one failed."""
    model = build_model(args.model, select_backend("numpy"))
    outcome = torch_best.smoke(torch, model, args.device, args.mode, args.torch_configs)
    for name, status in outcome.items():
        print(f"{args.model} {args.mode} torch[{name}] on {args.device}: {status}")
    return int(any(status.startswith("failed") for status in outcome.values()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="reference")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[128])
    parser.add_argument("--steps", type=int, default=20, help="batches per timed run")
    parser.add_argument("--pairs", type=int, default=5, help="alternating timed pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="numpy", help="gpucnn backend")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--json")
    parser.add_argument(
        "--precision",
        choices=("mixed_bfloat16", "mixed_float16"),
        help="gpucnn's precision policy (CuPy only; default float32); compare with PyTorch's "
        "bf16 configurations",
    )
    parser.add_argument(
        "--torch-configs",
        help="with --device cuda (or --smoke): PyTorch configurations timed beside eager, "
        "'all' (the default there), 'none', or a comma list of names, globs or name parts "
        "such as eager,graph,compile or bf16; see benchmarks/torch_best.py",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run each --torch-configs configuration for two steps of a tiny batch on --device "
        "(those needing CUDA are skipped elsewhere) and time nothing",
    )
    parser.add_argument("--child", choices=("gpucnn", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"images_per_second": child(args)}))
        return
    cuda = args.device.startswith("cuda")
    if args.torch_configs is not None and not (cuda or args.smoke):
        parser.error("--torch-configs needs --device cuda or --smoke")
    try:
        args.torch_configs = torch_best.select_configs(args.torch_configs or "all")
    except ValueError as error:
        parser.error(str(error))
    if args.smoke:
        import torch

        sys.exit(smoke(args, torch))

    def measure(library: str, batch_size: int) -> float:
        command = [sys.executable, __file__, "--child", library, *sys.argv[1:]]
        command += ["--batch-size", str(batch_size)]  # the last one given wins
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])["images_per_second"]

    import torch

    backend = select_backend(args.backend)
    reports = []
    for batch_size in args.batch_size:
        fp32 = configs = None
        if cuda:
            mine, torch_rates, fp32, configs = in_process(args, batch_size, torch)
        else:
            mine, torch_rates = [], []
            for _ in range(args.pairs):
                mine.append(measure("gpucnn", batch_size))
                torch_rates.append(measure("torch", batch_size))
        ratios = [a / b for a, b in zip(mine, torch_rates, strict=True)]
        report = {
            "model": args.model,
            "mode": args.mode,
            "batch_size": batch_size,
            "threads": args.threads,
            "steps": args.steps,
            "gpucnn_backend": backend.name,
            "gpucnn_precision": args.precision or "float32",
            "torch_device": args.device,
            "torch_version": torch.__version__,
            "gpucnn_images_per_second": statistics.median(mine),
            "torch_images_per_second": statistics.median(torch_rates),
            "median_pair_ratio": statistics.median(ratios),
            "pairs": [{"gpucnn": a, "torch": b} for a, b in zip(mine, torch_rates, strict=True)],
        }
        line = (
            f"{args.model} {args.mode} batch {batch_size}, {args.threads} threads: "
            f"gpucnn[{backend.name}] {report['gpucnn_images_per_second']:.0f} img/s, "
            f"torch[{args.device}] {report['torch_images_per_second']:.0f} img/s, "
            f"ratio {report['median_pair_ratio']:.2f}x (median of {args.pairs} alternating pairs)"
        )
        if fp32 is not None:
            report["torch_no_tf32_images_per_second"] = statistics.median(fp32)
            report["median_pair_ratio_no_tf32"] = statistics.median(
                [a / b for a, b in zip(mine, fp32, strict=True)]
            )
            line += (
                f"; torch with TF32 off {report['torch_no_tf32_images_per_second']:.0f} img/s, "
                f"ratio {report['median_pair_ratio_no_tf32']:.2f}x"
            )
        print(line, flush=True)
        if configs:
            best = best_configs(configs)
            report["torch_configs"] = configs
            report.update(best)
            print("\n".join(config_lines(configs, best)), flush=True)
        reports.append(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports[0] if len(reports) == 1 else reports, f, indent=2)


if __name__ == "__main__":
    main()
