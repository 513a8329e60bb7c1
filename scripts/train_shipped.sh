#!/usr/bin/env bash
# Reproduce the shipped checkpoint set engine/weights/p2es_set.pt: the P2Es model, its
# baselines and its ablations, all with the same data stream (simulator, train-split seed 0),
# the same number of steps, batch size and optimiser: the same budget.
#
# On this project's 2-core CPU machines it trains two variants at a time, one thread each
# (about 0.6 s per step each), so the whole set takes ~1.5 h for the default STEPS=2500.
# On a CUDA machine: DEVICE=cuda PARALLEL=1 STEPS=20000 BATCH=64 scripts/train_shipped.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-2500}
BATCH=${BATCH:-16}
DEVICE=${DEVICE:-cpu}
PARALLEL=${PARALLEL:-2}
OUT=${OUT:-engine/weights/p2es_set.pt}
P2ES=${P2ES:-.venv/bin/p2es}
VARIANTS=(${VARIANTS:-p2es ddpm unet_regression p2es_no_blur p2es_no_groups p2es_no_deblur})
mkdir -p "$(dirname "$OUT")" out/train
run() {
  "$P2ES" train --variant "$1" --steps "$STEPS" --batch-size "$BATCH" --lr 1e-3 --warmup 200 \
    --seed 0 --device "$DEVICE" --num-threads 1 --ckpt-every 250 --half-weights true \
    --progress false --log-every 50 --out "$OUT" --resume > "out/train/$1.log" 2>&1
}
i=0
for v in "${VARIANTS[@]}"; do
  run "$v" &
  i=$((i + 1))
  if (( i % PARALLEL == 0 )); then wait; fi
done
wait
echo "trained ${VARIANTS[*]} -> $OUT"
