#!/usr/bin/env bash
# The GPU checks, prepared as one script that ends in under 5 minutes on one CUDA device:
# the CUDA tests (pinned memory, bf16, fp16 with GradScaler, NCCL when 2+ GPUs, no per-step
# host sync: ranking_v2 with every writer on under torch.cuda.set_sync_debug_mode("error")),
# then fp32 and bf16 step times against the hand-written loop, with the GPU's name.
#
#   bash benchmarks/gpu.sh            # on a machine with a CUDA build of torch
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
timeout 150 python -m pytest -p no:cacheprovider -q -s -m cuda tests/core
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
timeout 60 python benchmarks/overhead.py --device cuda --workloads research,ranking_v2 \
    --rounds 4 --out "$out/fp32"
timeout 60 python benchmarks/overhead.py --device cuda --precision bf16 \
    --workloads research,ranking_v2 --rounds 4 --out "$out/bf16"
