#!/usr/bin/env bash
# Per-epoch time of `gpucnn train` on one process and on P processes (mpirun), the all-reduce's
# share of the step time, and the largest relative weight difference between the two runs.
# Usage: benchmarks/distributed.sh [P] [EPOCHS] [extra train flags...]
#   e.g. benchmarks/distributed.sh 2 1 --dataset mnist --data-dir DIR --no-download
set -euo pipefail
py=${PYTHON:-python3}
ranks=${1:-2}
epochs=${2:-1}
shift $(( $# < 2 ? $# : 2 ))
out=$(mktemp -d /tmp/gpucnn-distributed.XXXXXX)
flags=(train --epochs "$epochs" --backend numpy --no-progress "$@")
"$py" -m gpucnn "${flags[@]}" --out "$out/p1"
# one BLAS thread per rank: P ranks share the cores instead of oversubscribing them
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe -n "$ranks" \
    -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS -x PYTHONPATH "$py" -m gpucnn "${flags[@]}" --out "$out/p$ranks"
"$py" - "$out" "$ranks" <<'PY'
import json, sys
from pathlib import Path

import numpy as np

out, ranks = Path(sys.argv[1]), sys.argv[2]
one = json.loads((out / "p1" / "metrics.json").read_text())
many = json.loads((out / f"p{ranks}" / "metrics.json").read_text())
t1, tp = np.median(one["history"]["time_s"]), np.median(many["history"]["time_s"])
share = many["distributed"]["allreduce_seconds"] / sum(many["history"]["time_s"])
a, b = np.load(out / "p1" / "model.npz"), np.load(out / f"p{ranks}" / "model.npz")
diff = max(
    float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(a[k]))) for k in a.files if a[k].dtype.kind == "f"
)
print(
    json.dumps(
        {
            "epoch_s_1_process": round(t1, 2),
            f"epoch_s_{ranks}_processes": round(tp, 2),
            "speedup": round(t1 / tp, 2),
            "allreduce_share_of_epoch": round(share, 3),
            "allreduce_calls": many["distributed"]["allreduce_calls"],
            "max_relative_weight_difference": diff,
            "test_accuracy": [one["test_accuracy"], many["test_accuracy"]],
        },
        indent=2,
    )
)
PY
