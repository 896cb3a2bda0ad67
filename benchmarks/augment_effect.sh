#!/usr/bin/env bash
# Test accuracy with and without augmentation, same seed and recipe otherwise.
#
#   bash benchmarks/augment_effect.sh DATA [EPOCHS] [BACKEND] [AUGMENT FLAGS...]
#
# DATA is anything `gpucnn train --data` reads, e.g. Fashion-MNIST saved as an .npz with x, y,
# x_test, y_test. Default augmentation: --augment-shift 2 --augment-flip; model: $MODEL or
# reference. Prints one "test accuracy" line per run; the runs go to a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:?usage: augment_effect.sh DATA [EPOCHS] [BACKEND] [AUGMENT FLAGS...]}
epochs=${2:-3}
backend=${3:-auto}
shift $(($# < 3 ? $# : 3))
augment=("$@")
[ ${#augment[@]} -gt 0 ] || augment=(--augment-shift 2 --augment-flip)
scratch=$(mktemp -d)
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
for mode in none augmented; do
    flags=()
    [ "$mode" = augmented ] && flags=("${augment[@]}")
    printf '%s: ' "$mode"
    python -m gpucnn train --data "$data" --model "${MODEL:-reference}" --epochs "$epochs" --backend "$backend" \
        --out "$scratch/$mode" --no-progress "${flags[@]}" | tail -1
done
