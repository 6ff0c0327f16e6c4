#!/usr/bin/env bash
# The GPU checks, prepared as one script that ends in under 5 minutes on one CUDA device:
# the CUDA tests (pinned memory, bf16, fp16 with GradScaler, NCCL when 2+ GPUs, no per-step
# host sync: ranking_v2 with every writer on under torch.cuda.set_sync_debug_mode("error")),
# then fp32 and bf16 step times against the hand-written loop, with the GPU's name.
#
#   bash benchmarks/gpu.sh            # on a machine with a CUDA build of torch
#
# The lent H200 machines hold torch, attrs, tqdm, matplotlib, pytest and hypothesis but not
# cattrs, tomli-w or beautilog, and fetch nothing: download those wheels here first
# (`bash benchmarks/gpu_wheels.sh`, into benchmarks/.wheels, ignored by git) and carry them:
# the device tool's run with command "bash benchmarks/gpu.sh", carry ["benchmarks/.wheels"],
# timeout_s 420. Results land in $OUT (the tool's folder that comes back).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
PY=${PYTHON:-python3}   # the lent machines' python3 is the one that holds torch
if compgen -G "benchmarks/.wheels/*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --find-links benchmarks/.wheels \
        cattrs tomli-w beautilog
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
timeout 150 "$PY" -m pytest -p no:cacheprovider -q -s -m cuda tests/core
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
timeout 60 "$PY" benchmarks/overhead.py --device cuda --workloads research,ranking_v2 \
    --rounds 4 --out "$out/fp32"
timeout 60 "$PY" benchmarks/overhead.py --device cuda --precision bf16 \
    --workloads research,ranking_v2 --rounds 4 --out "$out/bf16"
