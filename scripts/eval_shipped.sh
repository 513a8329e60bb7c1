#!/usr/bin/env bash
# Evaluate the shipped checkpoint set and redraw the README's model figures.
#   scripts/eval_shipped.sh            (about 70 min on 2 CPU cores; ONLY=figures: the figures alone)
#
# 1. P2Es and the DDPM (three training seeds each: the 3 x 3 paired test), the shuffled-
#    demographics and mean-of-K rows and the floor rows, on the test split of the simulator
#    profile the set was trained on (wide: sinus 35-180 bpm)       -> docs/eval_legs_wide.{md,json}
# 2. The ablations and baselines against the P2Es of their own 1,500-step budget
#    (runs/ablations_wide/set.pt; the issue lets ablations train shorter) -> docs/eval_ablations_wide.{md,json}
# 3. The held-out record on ECG paper, and heartpy's real finger PPG through `p2es reconstruct`.
set -euo pipefail
cd "$(dirname "$0")/.."
P2ES=${P2ES:-.venv/bin/p2es}
RECORDS=${RECORDS:-512}
SEED=${SEED:-1}
THREADS=${THREADS:-2}
mkdir -p docs/img out
if [[ "${ONLY:-}" != figures ]]; then
  "$P2ES" eval --records "$RECORDS" --seed "$SEED" --threads "$THREADS" --no-uncertainty --fd-interval \
    --models p2es,ddpm,p2es_shuffled_demographics,p2es_mean_of_k,zero,template \
    --json docs/eval_legs_wide.json --no-progress | tee docs/eval_legs_wide.md
  "$P2ES" eval --checkpoint runs/ablations_wide/set.pt --records "$RECORDS" --seed "$SEED" --threads "$THREADS" \
    --models p2es,p2es_no_blur,p2es_no_groups,p2es_no_deblur,unet_regression,cardiogan \
    --no-uncertainty --fd-interval --json docs/eval_ablations_wide.json --no-progress | tee docs/eval_ablations_wide.md
fi
"$P2ES" eval --records 4 --seed "$SEED" --threads "$THREADS" --models zero --no-progress \
  --figure docs/img/eval_p2es.png > /dev/null
HEARTPY_DATA=$(.venv/bin/python -c "import importlib.util, pathlib; s = importlib.util.find_spec('heartpy'); print(pathlib.Path(list(s.submodule_search_locations)[0]) / 'data')")
"$P2ES" reconstruct --ppg "$HEARTPY_DATA/data.csv" --fs 100 --out out/real_data_csv.csv \
  --plot docs/img/real_ppg_heartpy_data.png --threads "$THREADS" --no-progress
