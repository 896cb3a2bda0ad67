#!/usr/bin/env bash
# Every figure of the README's performance table, as JSON under benchmarks/results/.
# The PyTorch comparisons need torch (CPU build: pip install torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
mkdir -p "$out"
backend=${BACKEND:-numpy}
for model in reference small; do
  gpucnn bench --model "$model" --batch-size 32 128 512 --infer-batch-size 1000 --backend "$backend" --json "$out/bench-$model-$backend.json"
done
if python -c "import torch" 2>/dev/null; then
  python benchmarks/compare_torch.py --model reference --batch-size 128 --pairs 5 --json "$out/torch-reference-train-128.json"
  python benchmarks/compare_torch.py --model reference --mode infer --batch-size 1000 --steps 5 --pairs 5 --json "$out/torch-reference-infer-1000.json"
  python benchmarks/compare_torch.py --model small --batch-size 128 --pairs 5 --json "$out/torch-small-train-128.json"
fi
