"""The PyTorch configurations of ``benchmarks/torch_best.py`` (what ``compare_torch.py --device
cuda`` times beside gpucnn): names select as documented, and every configuration the device
can run builds and steps, in training and in inference. ``compile`` is left to the benchmark:
compiling takes longer than a unit test should."""

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import torch_best  # noqa: E402

from gpucnn.backend import select_backend  # noqa: E402
from gpucnn.bench import build_model  # noqa: E402


def names(spec: str) -> list[str]:
    return [config.name for config in torch_best.select_configs(spec)]


def test_selection_by_name_glob_and_part():
    assert len(names("all")) == len(torch_best.CONFIGS) == len(set(names("all")))
    assert names("none") == []
    assert names("eager-fp32") == ["eager-fp32"]
    assert names("graph-*-cl") == [
        "graph-fp32-bench-cl",
        "graph-tf32-bench-cl",
        "graph-bf16-bench-cl",
    ]
    assert names("compile,bf16") == [
        name for name in names("all") if name.startswith("compile") or "-bf16" in name
    ]
    with pytest.raises(ValueError, match="'nope' matches no configuration"):
        torch_best.select_configs("eager,nope")


def test_each_switch_is_set_while_applied_and_restored_after():
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.allow_tf32)
    with torch_best.applied(torch, torch_best.TorchConfig("eager", "tf32", cudnn_benchmark=True)):
        assert cudnn.benchmark and cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    with torch_best.applied(torch, torch_best.TorchConfig("eager", "fp32")):
        assert not (cudnn.benchmark or cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
    assert (cudnn.benchmark, cudnn.allow_tf32) == before


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_every_configuration_this_device_runs_takes_steps(mode):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = [config for config in torch_best.CONFIGS if config.runner != "compile"]
    model = build_model("reference", select_backend("numpy"))
    outcome = torch_best.smoke(torch, model, device, mode, configs)
    for config in configs:
        expected = "ok" if device == "cuda" or not config.needs_cuda else "skipped"
        assert outcome[config.name].startswith(expected), (config.name, outcome[config.name])


def test_compare_torch_takes_every_network_of_the_cpu_suite():
    """``--model`` names a built-in or any network of ``cpu_suite.py`` (the GPU check times them
    all): the model and the timed batch take that network's input shape."""
    import compare_torch
    import cpu_suite

    for name in ("vgg", "reference"):
        model = compare_torch.build_model(name, select_backend("numpy"))
        x, y = compare_torch.host_batch(3, name)
        assert x.shape == (3, *cpu_suite.NETWORKS[name][0]) and y.shape == (3,)
        assert tuple(model.input_shape) == cpu_suite.NETWORKS[name][0]
    outcome = torch_best.smoke(
        torch, compare_torch.build_model("vgg", select_backend("numpy")), "cpu", "train",
        torch_best.select_configs("eager-fp32"),
    )  # fmt: skip
    assert outcome["eager-fp32"].startswith("ok"), outcome
