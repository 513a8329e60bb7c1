#!/usr/bin/env bash
# torch-CUDA backend on this machine's GPU: eager vs CUDA graphs vs bf16 at several batch sizes.
# Needs only torch (CUDA build) + this repository's dependencies; no ONNX Runtime, no TensorRT.
# Sized to finish within 5 minutes on one GPU (hard limit: TIMEOUT, default 290 s).
#
#   bench/gpu.sh                                   # batch sizes 1,8,32,128; 10 steps; k 2
#   BATCH_SIZES=1,16,64 STEPS=10 K=4 bench/gpu.sh  # other sizes
#   PYTHON=/path/to/python JSON=out.json bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "bench/gpu.sh: torch sees no CUDA GPU (install a CUDA build of torch)" >&2
  exit 2
fi
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'
args=(--batch-sizes "${BATCH_SIZES:-1,8,32,128}" --steps "${STEPS:-10}" --k "${K:-2}" --repeats "${REPEATS:-5}")
[ -n "${JSON:-}" ] && args+=(--json "$JSON")
[ -n "${CHECKPOINT:-}" ] && args+=(--checkpoint "$CHECKPOINT")
exec timeout "${TIMEOUT:-290}" "$PY" bench/gpu_bench.py "${args[@]}"
