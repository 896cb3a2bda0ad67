#!/usr/bin/env bash
# One-shot GPU check (its first sections took about 2 minutes on an NVIDIA H200; the sections
# added since, the suite networks and time to accuracy, are not yet timed on a GPU; plus the
# compile time of the torch.compile configurations): kernels and GPU time per training step with the standard ops,
# the CUDA kernels and a CUDA graph, and per inference pass beside PyTorch's; `gpucnn bench` on
# CuPy in those three modes (per-layer profile); PyTorch CUDA comparisons, eager and at its best
# (benchmarks/torch_best.py); every other network of the CPU suite against PyTorch eager and
# graph-captured; seconds to 99 % on MNIST from the command's start (first run and second, with
# the kernel cache); 3 epochs of MNIST with CUDA graphs off and on; mixed precision (bfloat16
# and float16 steps against PyTorch bf16 autocast, MNIST in bfloat16); the NumPy path against PyTorch
# on the host's CPU cores; then the whole test suite with its CuPy tests (in 8 processes where
# pytest-xdist is installed). Benchmarks run first, on a quiet GPU.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]       (default: $OUT, else benchmarks/results/gpu)
#
# MNIST is read from $MNIST_DIR (default ../shared/data/mnist, else the download cache). At
# most eight files are written, all in RESULTS_DIR: check.log holds everything printed,
# tests.log the whole test report, results.json every benchmark's JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
results=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$results"
scratch=$(mktemp -d)
py=${PYTHON:-python3}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mnist=${MNIST_DIR:-../shared/data/mnist}
status=0
exec > >(tee "$results/check.log") 2>&1

section() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }
run() { "$@" || { echo "FAILED ($?): $*"; status=1; }; }

section environment
nvidia-smi -L || true
run $py -c "import cupy, numpy, sys; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__)"
run $py -m gpucnn info

section "kernels and step time: standard ops, CUDA kernels, CUDA kernels + graph"
run $py benchmarks/gpu_step_profile.py --batch-size 128 512 2048 --infer-batch-size 1000 \
  --json "$results/step_profile.json"

section "gpucnn bench on CuPy"
for mode in "0 0" "1 0" "1 1"; do
  read -r kernels graphs <<<"$mode"
  echo "GPUCNN_CUDA_KERNELS=$kernels GPUCNN_CUDA_GRAPHS=$graphs"
  run env GPUCNN_CUDA_KERNELS=$kernels GPUCNN_CUDA_GRAPHS=$graphs $py -m gpucnn bench \
    --backend cupy --model reference --batch-size 128 512 2048 --infer-batch-size 1000 \
    --json "$scratch/bench-kernels$kernels-graphs$graphs.json"
done

section "PyTorch CUDA comparisons (CUDA kernels and graphs on)"
export GPUCNN_CUDA_GRAPHS=1
run $py benchmarks/compare_torch.py --backend cupy --device cuda --batch-size 128 512 2048 \
  --pairs 3 --torch-configs none --json "$scratch/torch-train.json"
run $py benchmarks/compare_torch.py --backend cupy --device cuda --mode infer --batch-size 1000 \
  --steps 50 --pairs 3 --torch-configs none --json "$scratch/torch-infer-1000.json"

# apart from the eager comparison, so that a configuration that breaks the CUDA context
# cannot take those figures with it; torch.compile for float32 only (each compile costs tens of
# seconds, and the whole check should stay under 8 minutes)
section "PyTorch at its best (CUDA graph, torch.compile, cudnn.benchmark, channels_last, TF32, bf16)"
best=${TORCH_CONFIGS:-eager,graph,compile-fp32*}
run $py benchmarks/compare_torch.py --backend cupy --device cuda --batch-size 128 512 2048 \
  --pairs 3 --torch-configs "$best" --json "$scratch/torch-best-train.json"
run $py benchmarks/compare_torch.py --backend cupy --device cuda --mode infer --batch-size 1000 \
  --steps 50 --pairs 3 --torch-configs "$best" --json "$scratch/torch-best-infer-1000.json"

section "BatchNorm networks on CuPy: small_bn and resnet, BatchNorm kernels off, then on"
for model in small_bn resnet; do
  for bn in 0 1; do
    echo "GPUCNN_CUDA_BATCH_NORM=$bn"
    run env GPUCNN_CUDA_BATCH_NORM=$bn $py -m gpucnn bench --backend cupy --model $model \
      --batch-size 128 512 2048 --infer-batch-size 1000 --json "$scratch/bench-$model-bn$bn.json"
  done
done
run env GPUCNN_CUDA_GRAPHS=1 $py benchmarks/compare_torch.py --backend cupy --device cuda \
  --model resnet --batch-size 128 512 2048 --pairs 3 --torch-configs "$best" \
  --json "$scratch/torch-best-train-resnet.json"

# the other networks of benchmarks/cpu_suite.py: PyTorch eager (TF32 as configured and off) and
# with the whole step in a CUDA graph (float32; compile would cost tens of seconds each)
section "every CPU-suite network on CuPy against PyTorch eager and graph-captured float32"
suite=${SUITE_NETWORKS:-small lenet small_bn wide5x5 strided vgg overlap_pool vgg_bn}
suite_configs=${SUITE_TORCH_CONFIGS:-graph-fp32*}
for net in $suite; do
  run $py benchmarks/compare_torch.py --backend cupy --device cuda --model $net \
    --batch-size 128 512 2048 --pairs 2 --torch-configs "$suite_configs" \
    --json "$scratch/suite-train-$net.json"
  run $py benchmarks/compare_torch.py --backend cupy --device cuda --model $net --mode infer \
    --batch-size 1000 --steps 50 --pairs 2 --torch-configs "$suite_configs" \
    --json "$scratch/suite-infer-$net.json"
done

section "time to 99 % on MNIST from the command's start: first run compiles, second uses the kernel cache"
tta_data=()
[ -d "$mnist" ] && tta_data=(--data-dir "$mnist")
run $py benchmarks/time_to_accuracy.py --backend cupy "${tta_data[@]}" --runs 2 \
  --json "$scratch/time-to-accuracy.json"

section "MNIST, reference, 3 epochs (CUDA graphs off, then on)"
data_args=()
[ -d "$mnist" ] && data_args=(--data-dir "$mnist" --no-download)
for graphs in 0 1; do
  run env GPUCNN_CUDA_GRAPHS=$graphs $py -m gpucnn train --dataset mnist "${data_args[@]}" \
    --backend cupy --out "$scratch/mnist-graphs$graphs"
done

# mixed precision has never run on a GPU: bfloat16 and float16 against our own float32 (the
# sections above) and PyTorch's bf16 autocast, eager and graph-captured; then MNIST in bfloat16;
# with the 16-bit cuBLAS GEMM switched on (the CuPy tests run it on and off)
section "mixed precision: gpucnn bfloat16 / float16 against PyTorch bf16 autocast"
for net in ${PRECISION_NETWORKS:-reference resnet vgg}; do
  for precision in mixed_bfloat16 mixed_float16; do
    run env GPUCNN_CUDA_HALF_GEMM=1 $py benchmarks/compare_torch.py --backend cupy \
      --device cuda --model $net --precision $precision --batch-size 128 2048 --pairs 2 \
      --torch-configs "eager-bf16,graph-bf16-bench*" --json "$scratch/precision-$net-$precision.json"
  done
done
run env GPUCNN_CUDA_HALF_GEMM=1 $py -m gpucnn train --dataset mnist "${data_args[@]}" \
  --backend cupy --precision mixed_bfloat16 --out "$scratch/mnist-bf16"

$py - "$scratch" "$results" <<'EOF'
import glob, json, os, sys
scratch, results = sys.argv[1:]
merged = {}
for path in sorted(glob.glob(os.path.join(scratch, "*.json"))):
    merged[os.path.basename(path)[:-5]] = json.load(open(path))
for graphs in ("0", "1"):
    metrics = os.path.join(scratch, f"mnist-graphs{graphs}", "metrics.json")
    if os.path.exists(metrics):
        merged[f"mnist_metrics_graphs{graphs}"] = json.load(open(metrics))
metrics = os.path.join(scratch, "mnist-bf16", "metrics.json")
if os.path.exists(metrics):
    merged["mnist_metrics_bfloat16"] = json.load(open(metrics))
json.dump(merged, open(os.path.join(results, "results.json"), "w"), indent=2)
print("wrote", os.path.join(results, "results.json"), "with", sorted(merged))
EOF
rm -rf "$scratch"

section "CPU: NumPy path vs PyTorch CPU on this host's cores (threads split each op; then GPUCNN_CPU_THREADS=1)"
lscpu | grep -E "Model name|^CPU\(s\)" || true
cores=$($py -c "import os; print(len(os.sched_getaffinity(0)))")
for model in reference small; do
  for threads in "" 1; do
    echo "GPUCNN_CPU_THREADS=${threads:-default}"
    run env GPUCNN_CPU_THREADS=$threads $py benchmarks/compare_torch.py --model $model \
      --batch-size 128 --threads "$cores" --pairs 3
  done
done

section "test suite (CuPy tests included)"
parallel=()
$py -c "import xdist" 2>/dev/null && parallel=(-n 8)
$py -m pytest -q -p no:cacheprovider -rfs "${parallel[@]}" tests > "$results/tests.log" 2>&1 \
  || { echo "FAILED: test suite"; status=1; }
tail -n 30 "$results/tests.log"
section "done: $([ $status = 0 ] && echo 'every step passed' || echo 'some step FAILED')"
exit $status
