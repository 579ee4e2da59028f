#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md on one GPU: one JSON, one table.
#
#   bash scripts/gpu_benchmarks.sh [RESULTS.json]     (default gpu_benchmarks.json)
#
# Train step at 256 px (official widths, FAN masks, ResNet-18 term), global
# batch 8/16/32, float32 and bfloat16; L2M edit at batch 1/32/128; Inception
# features at batch 200; JAX and torch side by side with FLOPs, MFU, compile
# time and memory (scripts/benchmark_*.py). Needs only jax, flax, optax,
# orbax, numpy, pillow, absl, scipy and torch/torchvision: no tensorflow,
# tfds, clu or ml_collections. Each stage has a time limit (the sum is
# under 8 minutes); a stage that fails or runs out is reported and the
# others still run; the exit status is 1 if any stage failed.
#
# L2M_BENCH_TINY=1 runs the same stages at test size on a CPU
# (tests/test_gpu_benchmarks.py, in the slow suite, runs it so that this
# script cannot rot).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_benchmarks.json}
rm -f "$OUT"
export PYTHONUNBUFFERED=1
# JAX and torch share the GPU within one process (edit, FID): JAX must not
# take 75% of the memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
PY=${PYTHON:-python3}

if [[ "${L2M_BENCH_TINY:-0}" == 1 ]]; then
  TRAIN=(--tiny --sizes 32 --batches 2 --dtypes float32 --steps 1 --warmup 1
         --count-torch-flops)
  EDIT=(--tiny --batch-sizes 2 --dtypes float32 bfloat16 --repeats 1)
  FID=(--tiny --batch-size 2 --iters 1 --dtypes float32 bfloat16)
  LIMITS=(900 300 300)
else
  TRAIN=(--sizes 256 --batches 8,16,32 --dtypes float32,bfloat16 --steps 10
         --warmup 3 --count-torch-flops)
  EDIT=(--batch-sizes 1 32 128 --dtypes float32 bfloat16 --repeats 5)
  FID=(--batch-size 200 --iters 5 --dtypes float32 bfloat16)
  LIMITS=(270 120 75)
fi

failed=()
stage() {  # stage NAME LIMIT_S CMD...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit} s) ==="
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s ==="
  if [[ $rc != 0 ]]; then failed+=("$name (exit $rc)"); fi
}

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
stage train "${LIMITS[0]}" "$PY" scripts/benchmark_train.py "${TRAIN[@]}" --json "$OUT"
stage edit "${LIMITS[1]}" "$PY" scripts/benchmark_edit.py "${EDIT[@]}" --json "$OUT"
stage fid "${LIMITS[2]}" "$PY" scripts/benchmark_fid.py "${FID[@]}" --json "$OUT"
echo
echo "=== all results ($OUT, ${SECONDS} s) ==="
"$PY" scripts/bench_report.py "$OUT" || failed+=("report")
if (( ${#failed[@]} )); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
