"""``gpucnn export``: write a saved model as ONNX for ONNX Runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import load_model
from ..model import model_file
from .common import add_plugin_flag
from .outputs import check_output, write_failed


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` and its flags to the subcommands ``sub``."""
    export = sub.add_parser("export", help="write a model as ONNX (opset 17) for ONNX Runtime")
    export.add_argument("model_path", metavar="MODEL.npz|RUN", help="a model file or a run folder")
    add_plugin_flag(export)
    export.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="the .onnx file (default: MODEL.onnx beside MODEL.npz)",
    )
    export.add_argument(
        "--probabilities", action="store_true", help="add a softmax output 'probabilities'"
    )
    export.add_argument(
        "--check",
        action="store_true",
        help="run the file in ONNX Runtime on random inputs and print the largest difference",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="let -o replace a model, checkpoint or run file (refused otherwise)",
    )


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import OPSET, compare_with_onnxruntime, export_onnx

    args.model_path = model_file(args.model_path)  # a run folder means its model.npz
    output = Path(args.output) if args.output else Path(args.model_path).with_suffix(".onnx")
    check_output(output, "-o" if args.output else "the output", [args.model_path], args.overwrite)
    model, _ = load_model(args.model_path, backend="numpy")  # export_onnx then needs onnx
    try:
        export_onnx(model, output, probabilities=args.probabilities)
    except OSError as exc:
        raise write_failed(output, exc) from None
    outputs = "logits, probabilities" if args.probabilities else "logits"
    print(
        f"wrote {output} ({output.stat().st_size:,} bytes, ONNX opset {OPSET}): input "
        f"{('N', *model.input_shape)} float32 -> {outputs} {('N', *model.output_shape)}".replace(
            "'", ""
        )
    )
    if args.check:
        largest = compare_with_onnxruntime(model, output)
        print(f"ONNX Runtime vs gpucnn at batch 1 and 7: largest difference {largest:.2e}")
    return 0
