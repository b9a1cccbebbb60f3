#!/usr/bin/env bash
# Everything the GPU path needs checked, on one GPU, in under 8 minutes (each step has its own time limit):
#   1. the exact-mode parity suite (pytest -m parity) on this host   (fp32 CPU: the official tokens)
#   2. parity on CUDA: fixtures' deterministic outputs in fp32, TF32 off (benchmarks/gpu_check.py parity)
#   3. the Triton SJD accept/resample kernel against its torch reference on CUDA
#   4. images/s and tokens/s of VAR-d16, GPT-B plain and GPT-B SJD at batch 1, 16, 64 (bf16, eager)
#   5. the batch-1 GPT-B decode step against the memory-bandwidth roofline, eager and compiled (CUDA graphs)
# Usage: bash benchmarks/gpu_check.sh [--compile-speed]      (from anywhere; writes runs/gpu_check.jsonl)
# --compile-speed also times step 4 with the compiled steps (adds the compilation, several minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p runs
out=runs/gpu_check.jsonl
: > "$out"
status=0
step() {  # step <seconds> <description> <command...>
  local limit=$1 what=$2; shift 2
  echo "== $what (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$out"
  local rc=${PIPESTATUS[0]}
  echo "== $what: exit $rc after $((SECONDS - t0))s"
  [ "$rc" -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no GPU"; exit 1; }
step 90  "parity suite (exact mode, CPU)" python -m pytest -q -m parity tests/
step 60  "parity on CUDA" python benchmarks/gpu_check.py --sections parity
step 60  "Triton SJD kernel vs torch" python benchmarks/gpu_check.py --sections kernel
step 120 "throughput (bf16, eager)" python benchmarks/gpu_check.py --sections speed --batch 1 16 64 --precision bf16
step 150 "batch-1 decode roofline" python benchmarks/gpu_check.py --sections roofline --precision bf16
if [ "${1:-}" = "--compile-speed" ]; then
  step 600 "throughput (bf16, compiled)" python benchmarks/gpu_check.py --sections speed --batch 1 16 64 \
    --precision bf16 --compile reduce-overhead
fi
echo "results: $out (exit $status)"
exit $status
