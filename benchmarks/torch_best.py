"""PyTorch at its best on a GPU: the configurations ``compare_torch.py --device cuda`` times.

Eager PyTorch with its defaults is not the fastest PyTorch, so comparing gpucnn against it
alone flatters gpucnn. Each configuration here is PyTorch run the way a tuned user would run
it, on the same network, weights and batch as gpucnn (see ``torch_mirror.torch_twin``). A name
is ``RUNNER-PRECISION[-bench][-cl]``:

RUNNER
    ``eager``: one Python call per operation. ``graph``: the whole training step (forward,
    loss, backward, SGD step) or inference pass captured in one ``torch.cuda.CUDAGraph`` on
    static tensors after a warm-up on a side stream, then replayed (PyTorch's "whole network
    capture"). ``torch.optim.SGD`` has no step counter and so no ``capturable`` option: its
    momentum buffers exist after the warm-up and are updated in place by each replay.
    ``compile``: ``torch.compile(step, mode="reduce-overhead")``, Inductor kernels replayed
    through CUDA graphs.
PRECISION
    ``fp32``: float32 with TF32 off, which is what gpucnn computes. ``tf32``: float32 storage
    with TF32 cuDNN convolutions and matmuls. ``bf16``: ``torch.autocast`` to bfloat16
    (parameters, optimizer state and the loss stay float32), TF32 off.
``-bench``
    ``torch.backends.cudnn.benchmark = True``: cuDNN times its algorithms per shape.
``-cl``
    ``channels_last`` memory format for the model's weights and the input.

``graph`` and ``compile`` need CUDA; :func:`smoke` runs every other configuration on any
device with a tiny batch, which proves the code paths without a GPU.
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch_mirror import torch_twin

RUNNERS = ("eager", "graph", "compile")
PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_WARMUP_CALLS = 3  # reduce-overhead records its CUDA graphs after a warm-up call


@dataclass(frozen=True)
class TorchConfig:
    """How PyTorch runs: runner, precision, ``cudnn.benchmark`` and memory format."""

    runner: str
    precision: str
    cudnn_benchmark: bool = False
    channels_last: bool = False

    @property
    def name(self) -> str:
        flags = ("-bench" if self.cudnn_benchmark else "") + ("-cl" if self.channels_last else "")
        return f"{self.runner}-{self.precision}{flags}"

    @property
    def needs_cuda(self) -> bool:
        return self.runner != "eager"


def _catalog() -> tuple[TorchConfig, ...]:
    # Eager alone shows what each switch buys (defaults, + cudnn.benchmark, + channels_last);
    # graph in both layouts since channels_last need not win with few channels; compile once,
    # tuned, as Inductor picks its own convolution layouts anyway.
    configs = []
    for precision in PRECISIONS:
        configs += [
            TorchConfig("eager", precision),
            TorchConfig("eager", precision, cudnn_benchmark=True),
            TorchConfig("eager", precision, cudnn_benchmark=True, channels_last=True),
            TorchConfig("graph", precision, cudnn_benchmark=True),
            TorchConfig("graph", precision, cudnn_benchmark=True, channels_last=True),
            TorchConfig("compile", precision, cudnn_benchmark=True, channels_last=True),
        ]
    return tuple(configs)


CONFIGS = _catalog()


def select_configs(spec: str) -> list[TorchConfig]:
    """The configurations named by ``spec``, in catalog order: ``all``, ``none``, or a comma
    list of names, glob patterns (``graph-*-cl``) or single name parts (``graph``, ``bf16``,
    ``cl``), each selecting every configuration it matches. Raises ``ValueError`` for an item
    that matches none."""
    if spec == "all":
        return list(CONFIGS)
    if spec == "none":
        return []
    chosen = set()
    for item in filter(None, (part.strip() for part in spec.split(","))):
        hits = {c for c in CONFIGS if fnmatch.fnmatchcase(c.name, item)}
        hits |= {c for c in CONFIGS if item in c.name.split("-")}
        if not hits:
            names = ", ".join(c.name for c in CONFIGS)
            raise ValueError(f"--torch-configs: {item!r} matches no configuration; known: {names}")
        chosen |= hits
    return [c for c in CONFIGS if c in chosen]


@contextlib.contextmanager
def applied(torch, config: TorchConfig):
    """Set PyTorch's global switches (cudnn.benchmark, TF32) for ``config``; restore them after.

    The switches must hold while a graph is recorded or a step compiled, and while eager
    steps run, since each of those reads them then."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark = config.cudnn_benchmark
    cudnn.allow_tf32 = matmul.allow_tf32 = config.precision == "tf32"
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def _autocast(torch, config: TorchConfig, device_type: str) -> Callable:
    """A factory of the precision's autocast context (a no-op but for bf16)."""
    if config.precision != "bf16":
        return contextlib.nullcontext
    # the autocast cache of cast weights cannot live across CUDA graph replays
    cache = config.runner != "graph"
    return lambda: torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=cache)


def _step(torch, model, x, y, optimizer, mode: str, autocast: Callable):
    """``(zero_grad, body)``: one training step is ``zero_grad(); body()`` (forward and loss
    under ``autocast``, backward, SGD step); in inference ``body`` is the forward pass."""
    if mode != "train":

        def forward():
            with autocast():
                return model(x)

        return (lambda: None), forward
    loss_fn = torch.nn.CrossEntropyLoss()

    def body():
        with autocast():
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    return (lambda: optimizer.zero_grad(set_to_none=True)), body


def _eager(torch, zero_grad, body, mode: str) -> Callable[[int], None]:
    def loop(steps: int) -> None:
        with torch.inference_mode() if mode != "train" else contextlib.nullcontext():
            for _ in range(steps):
                zero_grad()
                body()

    return loop


def _graph(torch, zero_grad, body, mode: str) -> Callable[[int], None]:
    """Record one step in a CUDA graph (PyTorch's whole-network capture recipe)."""
    grad_mode = torch.no_grad if mode != "train" else contextlib.nullcontext
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    # the warm-up runs lazy initialisation (cuDNN plans, momentum buffers) outside the capture
    with torch.cuda.stream(side), grad_mode():
        for _ in range(3):
            zero_grad()
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    zero_grad()  # backward then allocates the gradients in the graph's pool; replays overwrite
    with grad_mode(), torch.cuda.graph(graph):
        body()

    def loop(steps: int) -> None:
        for _ in range(steps):
            graph.replay()

    return loop


def _compiled(torch, zero_grad, body, mode: str) -> Callable[[int], None]:
    """``torch.compile(mode="reduce-overhead")`` of the whole step, warmed up and recorded."""
    # A fresh start for each compiled configuration: no earlier model's graphs to guard against,
    # and a step that would recompile past the limit fails instead of silently running eager.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # so that compile_counters speaks of this configuration only
    torch._dynamo.config.fail_on_recompile_limit_hit = True

    def step():
        zero_grad()
        body()

    compiled = torch.compile(step, mode="reduce-overhead", dynamic=False)
    grad_mode = torch.no_grad if mode != "train" else contextlib.nullcontext

    def loop(steps: int) -> None:
        with grad_mode():
            for _ in range(steps):
                compiled()

    return loop


def compile_counters(torch) -> dict:
    """Graph breaks and CUDA-graph skips TorchDynamo and Inductor counted since the last
    ``compile`` configuration was built: a reduce-overhead step that skipped its CUDA graphs is not
    the configuration its name says."""
    from torch._dynamo.utils import counters

    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "cudagraph_skips": counters["inductor"]["cudagraph_skips"],
    }


def build(
    torch, config: TorchConfig, model, x_host, y_host, mode: str, steps: int, device: str
) -> Callable[[], float]:
    """A function that times ``steps`` steps of ``config`` (images/s): the torch twin of the
    built gpucnn ``model`` (its weights copied, so every configuration starts from gpucnn's
    weights) on the batch ``x_host`` (N, C, H, W), ``y_host`` (N,), SGD with momentum 0.9
    as gpucnn's step. Building warms up, records the CUDA graph or compiles, so the returned
    function times steady state only. Build one configuration at a time: a ``compile`` one
    resets TorchDynamo. Raises ``RuntimeError`` for a CUDA-only configuration elsewhere."""
    device_type = torch.device(device).type
    if config.needs_cuda and device_type != "cuda":
        raise RuntimeError(f"{config.runner} needs CUDA, not {device_type}")
    with applied(torch, config):
        net = torch_twin(model, torch).to(device)
        net.train(mode == "train")
        x = torch.from_numpy(np.ascontiguousarray(x_host)).to(device)
        y = torch.from_numpy(np.ascontiguousarray(y_host)).to(device)
        if config.channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        autocast = _autocast(torch, config, device_type)
        zero_grad, body = _step(torch, net, x, y, optimizer, mode, autocast)
        runner = {"eager": _eager, "graph": _graph, "compile": _compiled}[config.runner]
        loop = runner(torch, zero_grad, body, mode)
        loop(max(steps, COMPILE_WARMUP_CALLS))

    def sync() -> None:
        if device_type == "cuda":
            torch.cuda.synchronize()

    def timed() -> float:
        with applied(torch, config):
            sync()
            start = time.perf_counter()
            loop(steps)
            sync()
            return len(x) * steps / (time.perf_counter() - start)

    return timed


def failure(error: BaseException) -> str:
    """``"failed: <type>: <first line>"``, short enough for a JSON report and a log line."""
    lines = str(error).strip().splitlines()
    return f"failed: {type(error).__name__}: {lines[0] if lines else ''}"[:240]


def smoke(torch, model, device: str, mode: str, configs, batch_size: int = 4) -> dict:
    """Build and run each configuration in ``configs`` for two steps on a tiny random batch:
    ``{name: "ok" | "skipped: ..." | "failed: ..."}``. Proves the code paths run; times
    nothing worth reading."""
    rng = np.random.default_rng(0)
    x_host = rng.random((batch_size, *model.input_shape), dtype=np.float32)
    y_host = rng.integers(0, model.output_shape[0], batch_size)
    outcome = {}
    for config in configs:
        if config.needs_cuda and torch.device(device).type != "cuda":
            outcome[config.name] = f"skipped: {config.runner} needs CUDA"
            continue
        try:
            rate = build(torch, config, model, x_host, y_host, mode, 2, device)()
            outcome[config.name] = "ok" if rate > 0 else f"failed: rate {rate}"
        except Exception as error:  # a report line, not a crash: the next one may work
            outcome[config.name] = failure(error)
    return outcome
