#!/usr/bin/env bash
# Evaluate the shipped checkpoint set and redraw the README's model figures.
#   scripts/eval_shipped.sh            (about 8 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
P2ES=${P2ES:-.venv/bin/p2es}
RECORDS=${RECORDS:-512}
SEED=${SEED:-1}
THREADS=${THREADS:-2}
mkdir -p docs/img out
"$P2ES" eval --records "$RECORDS" --seed "$SEED" --threads "$THREADS" --json docs/eval.json \
  --figure docs/img/eval_p2es.png --no-uncertainty --no-progress | tee docs/eval.md
HEARTPY_DATA=$(.venv/bin/python -c "import importlib.util, pathlib; s = importlib.util.find_spec('heartpy'); print(pathlib.Path(list(s.submodule_search_locations)[0]) / 'data')")
"$P2ES" reconstruct --ppg "$HEARTPY_DATA/data.csv" --fs 100 --out out/real_data_csv.csv \
  --plot docs/img/real_ppg_heartpy_data.png --threads "$THREADS" --no-progress
