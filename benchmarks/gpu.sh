#!/usr/bin/env bash
# GPU readiness of issue 11 (item 6): one command, under 5 minutes on one CUDA device (an H200).
#
# Records, into $OUT (or ./gpu-results when OUT is unset):
#   gpu_checks.json / gpu_checks.md   bf16 / fp16 autocast against fp32 (time, λ̂ ± se), chain_batch 32/16/8 with
#                                     32 chains, peak memory (torch.cuda.max_memory_allocated) against the floor's,
#                                     compiled chunks of 8 steps against single steps (benchmarks/gpu_checks.py)
#   estimator_speed_cuda.md           the four workloads against the compiled floor (estimator_speed.py, 2 repeats)
#
# Run from anywhere (it changes to the repository root):
#   bash benchmarks/gpu.sh               # on the CUDA machine; exits with an error when CUDA is absent
#   bash benchmarks/gpu.sh --cpu-check   # no CUDA: tiny sizes on the CPU, to check the plumbing
#
# Nothing beyond the device image's packages is needed (lambdahat's diagnostics no longer import arviz).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
CPU_CHECK=0
if [[ "${1:-}" == "--cpu-check" ]]; then
    CPU_CHECK=1
elif [[ $# -gt 0 ]]; then
    echo "usage: bash benchmarks/gpu.sh [--cpu-check]" >&2
    exit 2
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-gpu-results}
mkdir -p "$OUT_DIR"
export OUT="$OUT_DIR"

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    DEVICE=cuda
    SIZE=()
    SPEED=(--repeats 2 --no-oneoff --workloads transformer,mlp,modadd,dln)
elif [[ $CPU_CHECK == 1 ]]; then
    DEVICE=cpu
    SIZE=(--small)
    SPEED=(--repeats 1 --no-oneoff --workloads modadd --threads 1)
else
    echo "gpu.sh: torch sees no CUDA device here; this script is for a CUDA machine." >&2
    echo "        (bash benchmarks/gpu.sh --cpu-check runs tiny sizes on the CPU to check the script)" >&2
    exit 3
fi

echo "== $(date -u +%FT%TZ) device $DEVICE, load $(cut -d' ' -f1-3 /proc/loadavg), results in $OUT_DIR"
"$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv 2>/dev/null || true

status=0
# 1. dtype, chain_batch, memory, chunk (about 2-3 minutes on an H200, mostly the two compiles of the chunk check)
timeout 170 "$PY" benchmarks/gpu_checks.py --device "$DEVICE" "${SIZE[@]}" || {
    status=$?
    echo "gpu.sh: gpu_checks.py ended with status $status (124: timed out)" >&2
}
# 2. the workloads against the compiled floor; rows are printed as each workload finishes, so a timeout keeps
#    the finished ones (most important first)
timeout 110 "$PY" benchmarks/estimator_speed.py --device "$DEVICE" "${SPEED[@]}" |
    tee "$OUT_DIR/estimator_speed_$DEVICE.md" || {
    status=$?
    echo "gpu.sh: estimator_speed.py ended with status $status (124: timed out)" >&2
}
echo "== $(date -u +%FT%TZ) done (status $status); load $(cut -d' ' -f1-3 /proc/loadavg)"
ls -l "$OUT_DIR"
exit "$status"
