"""What the public (C, H, W) feature order of Flatten costs on a training step.

Activations are channels-last (N, H, W, C) inside a model, so ``Flatten`` permutes to
(N, C, H, W) before flattening (one copy of its input) and permutes the gradient back. This
script times the ``reference`` training step (forward, loss, backward, SGD-momentum update) at
one batch size with that Flatten and with a plain reshape in the internal (H, W, C) order (the
order before, which gives the same speed but weights no NCHW framework shares), alternating
the two in one process so that both see the same machine load. It also times the Flatten
forward + backward and the backward of the step before it (which receives the permuted
gradient) on their own. Medians of per-pair differences are printed, with the command.

    python benchmarks/flatten_order.py [--batch-size 128] [--pairs 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpucnn.backend import select_backend, synchronize  # noqa: E402
from gpucnn.bench import build_model, synthetic_batch  # noqa: E402
from gpucnn.layers import Flatten  # noqa: E402
from gpucnn.optim import SGD  # noqa: E402


class InternalOrderFlatten:
    """Flatten in the channels-last (H, W, C) order: a reshape each way, no copy."""

    def __init__(self, layer: Flatten):
        self.layer = layer

    def forward(self, x, training=True):
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out, need_input_grad=True):
        return grad_out.reshape(grad_out.shape[0], *self.layer.input_shape)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=30, help="alternating timed pairs")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    backend = select_backend(args.backend)
    model = build_model(args.model, backend)
    xp = model.xp
    x, y = synthetic_batch(model, args.batch_size, seed=0)
    optimizer = SGD(lr=0.01, momentum=0.9)
    index = next(i for i, step in enumerate(model.steps) if isinstance(step, Flatten))
    public, internal = model.steps[index], InternalOrderFlatten(model.steps[index])

    def train_step() -> float:
        synchronize(xp)
        start = time.perf_counter()
        model.loss_and_backward(x, y, check=False)
        optimizer.step(model)
        synchronize(xp)
        return time.perf_counter() - start

    def flatten_round_trip(flatten) -> float:
        """Flatten forward and backward plus the previous step's backward, in ms."""
        h = model._prepare_input(x, check=False)
        for step in model.steps[:index]:
            h = step.forward(h, training=True)
        flat = flatten.forward(h, training=True)
        g = xp.ones_like(flat)
        synchronize(xp)
        start = time.perf_counter()
        flatten.forward(h, training=True)
        model.steps[index - 1].backward(flatten.backward(g), need_input_grad=True)
        synchronize(xp)
        return time.perf_counter() - start

    variants = {"public (C, H, W)": public, "internal (H, W, C)": internal}
    steps = {name: [] for name in variants}
    trips = {name: [] for name in variants}
    for pair in range(args.pairs + 2):  # the first two pairs warm up and are dropped
        order = list(variants.items()) if pair % 2 else list(variants.items())[::-1]
        for name, flatten in order:
            model.steps[index] = flatten
            step = train_step()
            trip = flatten_round_trip(flatten)
            if pair >= 2:
                steps[name].append(step)
                trips[name].append(trip)
    model.steps[index] = public

    names = list(variants)
    step_diff = [a - b for a, b in zip(steps[names[0]], steps[names[1]], strict=True)]
    trip_diff = [a - b for a, b in zip(trips[names[0]], trips[names[1]], strict=True)]
    median_step = {name: statistics.median(v) for name, v in steps.items()}
    report = {
        "command": "python " + " ".join(sys.argv),
        "model": args.model,
        "batch_size": args.batch_size,
        "pairs": args.pairs,
        "backend": backend.name,
        "cpu": platform.processor() or platform.machine(),
        "median_step_ms": {k: 1e3 * v for k, v in median_step.items()},
        "median_step_difference_ms": 1e3 * statistics.median(step_diff),
        "median_flatten_round_trip_ms": {k: 1e3 * statistics.median(v) for k, v in trips.items()},
        "median_flatten_round_trip_difference_ms": 1e3 * statistics.median(trip_diff),
        # the fastest round trip is the least disturbed by other processes
        "min_flatten_round_trip_ms": {k: 1e3 * min(v) for k, v in trips.items()},
    }
    print(f"{args.model} training step at batch {args.batch_size}, {args.pairs} alternating pairs:")
    for name in names:
        print(
            f"  Flatten {name:<20} step {report['median_step_ms'][name]:7.2f} ms   "
            f"Flatten fwd+bwd and the step before's backward "
            f"{report['median_flatten_round_trip_ms'][name]:6.3f} ms "
            f"(fastest {report['min_flatten_round_trip_ms'][name]:6.3f} ms)"
        )
    relative = report["median_step_difference_ms"] / report["median_step_ms"][names[1]]
    print(
        f"  cost of the permutation: {report['median_step_difference_ms']:+.2f} ms per step "
        f"({100 * relative:+.1f} %, median of per-pair differences); in isolation "
        f"{report['median_flatten_round_trip_difference_ms']:+.3f} ms"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
