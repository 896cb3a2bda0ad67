"""Training recipes: the default settings per dataset and how a run's settings become objects.

A *run* is a flat JSON-compatible dict (dataset, model, epochs, batch size, optimizer
settings, schedule name...) stored in every checkpoint, so a resumed run rebuilds the same
optimizer and schedule from it.
"""

from __future__ import annotations

from typing import Any

from .architectures import architecture
from .model import Sequential
from .optim import Optimizer, Schedule, make_optimizer, make_schedule

# The default recipe per dataset: model, epochs, batch size, learning rate, schedule.
# digits: small_bn at lr 0.1 scored 0.9861/0.9833/0.9889/0.9889 test accuracy with seeds 0-3,
# against 0.9582/0.9805/0.9833/0.9861 for small at lr 0.05 (`gpucnn train --model M --lr X
# --seed S`, the other settings as here).
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"model": "small_bn", "epochs": 10, "batch_size": 32, "lr": 0.1, "schedule": "cosine"},
    "mnist": {"model": "reference", "epochs": 3, "batch_size": 128, "lr": 0.05, "schedule": "cosine"},
    "fashion-mnist": {"model": "reference", "epochs": 3, "batch_size": 128, "lr": 0.05, "schedule": "cosine"},
    # your own data (--data PATH): the small network adapts to any image size
    "custom": {"model": "small", "epochs": 10, "batch_size": 32, "lr": 0.05, "schedule": "cosine"},
}  # fmt: skip
# Recipes of a model on a dataset, on top of the dataset's: `gpucnn train --dataset D --model M`
# takes them (any flag given overrides its part). Measured figures: docs/performance.md
# ("BatchNorm, ResNet and the recipes").
MODEL_RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("fashion-mnist", "resnet"): {  # 11 epochs 0.9282, 13 0.9294, 14 0.9332 (docs)
        "epochs": 14, "batch_size": 128, "lr": 0.1, "schedule": "cosine", "warmup_epochs": 1,
        "optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
        "label_smoothing": 0.1, "augment_shift": 2, "augment_flip": True,
    },
    ("mnist", "resnet"): {
        "epochs": 6, "batch_size": 128, "lr": 0.1, "schedule": "cosine", "warmup_epochs": 1,
        "optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
        "label_smoothing": 0.1, "augment_shift": 2,
    },
}  # fmt: skip
SCHEDULE_NAMES = ("constant", "step", "exponential", "cosine")
OPTIMIZER_NAMES = ("sgd", "adam", "adamw")


# what a model's recipe sets for its optimizer: not taken by a run with another optimizer
OPTIMIZER_SETTINGS = ("lr", "momentum", "nesterov", "weight_decay")


def recipe(dataset: str, model: str | None = None, optimizer: str | None = None) -> dict[str, Any]:
    """The default settings for ``model`` (None: the dataset's own model) on ``dataset``;
    with an ``optimizer`` other than the model recipe's, without that recipe's settings for
    its optimizer (the dataset's learning rate and the optimizer's own defaults apply)."""
    if dataset not in RECIPES:
        raise ValueError(f"expected a dataset in {sorted(RECIPES)}; received {dataset!r}")
    settings = dict(RECIPES[dataset])
    specific = dict(MODEL_RECIPES.get((dataset, model or settings["model"]), {}))
    if optimizer is not None and optimizer != specific.get("optimizer", optimizer):
        specific = {k: v for k, v in specific.items() if k not in OPTIMIZER_SETTINGS}
        specific.pop("optimizer")
    settings.update(specific)
    return settings


def run_config(dataset: str, **settings: Any) -> dict[str, Any]:
    """The run for ``dataset``: its recipe (for ``settings["model"]`` and
    ``settings["optimizer"]`` when given) with every non-None ``settings`` value applied."""
    run = {"dataset": dataset, **recipe(dataset, settings.get("model"), settings.get("optimizer"))}
    run.update({k: v for k, v in settings.items() if v is not None or k not in run})
    return run


def optimizer_config(run: dict[str, Any]) -> dict[str, Any]:
    """The optimizer a run asks for, as ``make_optimizer`` input.

    Gradient clipping belongs to the optimizer; a run stores it as ``clip_norm``.
    """
    name = run.get("optimizer", "sgd")
    config: dict[str, Any] = {"type": name, "lr": run["lr"]}
    if run.get("weight_decay") is not None or name != "adamw":  # adamw has its own default
        config["weight_decay"] = run.get("weight_decay") or 0.0
    if name == "sgd":
        config.update(momentum=run.get("momentum", 0.0), nesterov=run.get("nesterov", False))
    if run.get("clip_norm") is not None:
        config["clip_norm"] = run["clip_norm"]
    return config


def schedule_config(name: str, epochs: int) -> dict[str, Any]:
    """A schedule name and the run's length as ``make_schedule`` input: step decays 10x at
    each third of the run, exponential by 0.8 per epoch, cosine to zero over the run."""
    configs = {
        "constant": {"type": "constant"},
        "step": {"type": "step", "step_size": max(epochs // 3, 1), "gamma": 0.1},
        "exponential": {"type": "exponential", "gamma": 0.8},
        "cosine": {"type": "cosine", "epochs": epochs},
    }
    if name not in configs:
        raise ValueError(f"expected a schedule in {SCHEDULE_NAMES}; received {name!r}")
    return configs[name]


def build_optimizer(run: dict[str, Any]) -> Optimizer:
    return make_optimizer(optimizer_config(run))


def build_schedule(run: dict[str, Any]) -> Schedule:
    """The run's schedule, after a linear warm-up when it has ``warmup_epochs``."""
    config = schedule_config(run["schedule"], run["epochs"])
    if run.get("warmup_epochs"):
        config = {"type": "warmup", "epochs": run["warmup_epochs"], "then": config}
    return make_schedule(config)


def build_model(
    run: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, backend: Any = "auto"
) -> Sequential:
    """The run's network (a built-in name or a JSON file) for the dataset's shapes.

    Raises
    ------
    ValueError when the architecture does not produce ``num_classes`` outputs.
    """
    arch = architecture(run["model"], tuple(input_shape), num_classes)
    try:
        model = Sequential.from_config(
            arch, backend=backend, seed=run.get("seed", 0), dtype=run.get("dtype", "float32")
        )
    except (TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        # a JSON value of the wrong kind (e.g. "filters": "32") reaching a layer's arithmetic
        raise ValueError(f"model {run['model']}: malformed architecture ({exc})") from None
    if tuple(model.output_shape) != (num_classes,):
        raise ValueError(
            f"model {run['model']}: expected {num_classes} outputs for {run['dataset']}; "
            f"received {model.output_shape}"
        )
    return model


__all__ = [
    "OPTIMIZER_NAMES",
    "RECIPES",
    "SCHEDULE_NAMES",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "optimizer_config",
    "run_config",
    "schedule_config",
]
