"""Compare candidate models on the validation split (never the test split of ``p2es eval``).

    python bench/validation.py --candidate s20=/tmp/pilot/s20/set.pt:p2es \
        --candidate s10=/tmp/pilot/s10/set.pt:p2es [--records 512] [--seed 0] [--json OUT.json]

Used to choose settings that are not learned (e.g. the blur width of a training leg)
without looking at the test records that the README's table comes from.  Every
candidate sees the same ``records`` windows of ``fixed_set("val", records, seed)`` (simulator
seeds disjoint from the training and test seeds), the same initial noise (generator seeded with
``seed``), one sample per window, ``--steps`` reverse steps.  Printed: the headline metrics of
``p2es eval`` that the selection uses (FD, HR MAE, QRS and QT MAE) plus RMSE, the HR MAE per
rhythm group, the standard error of the HR MAE (over windows) and each candidate's mean rank
over the four selection metrics (1 = best).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

SELECT = ("fd", "hr_mae_bpm", "qrs_ms_mae", "qt_ms_mae")


def parse_candidate(text: str) -> tuple[str, str, str]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"validation: --candidate must be NAME=PATH[:MODEL], got {text!r}")
    path, _, model = rest.rpartition(":") if ":" in rest else (rest, "", "p2es")
    return name, path or rest, model or "p2es"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", action="append", required=True, metavar="NAME=PATH[:MODEL]")
    ap.add_argument("--records", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from engine.model import metrics as M
    from engine.model.checkpoint import load_model
    from engine.model.data import fixed_set, prepare
    from engine.model.evaluate import GROUP_ORDER, rhythm_group, sample_windows, score
    from p2es.errors import P2esError

    torch.set_num_threads(args.threads)
    cands = [parse_candidate(c) for c in args.candidate]
    try:
        entries = {name: load_model(path, model) for name, path, model in cands}
    except P2esError as e:
        sys.exit(f"validation: {e}")
    mc = next(iter(entries.values())).model_config
    fs, T = float(mc.fs), int(mc.T)
    raw = fixed_set("val", args.records, args.seed, duration_s=T / fs, fs=fs, noisy_ecg=False)
    prep = prepare(raw)
    true = np.asarray(raw["ecg"], dtype=np.float64)
    groups = np.array([rhythm_group(s) for s in np.asarray(raw["rhythm"]).astype(str)])
    tc = M.measure(true, fs)

    rows: dict[str, dict] = {}
    for name, e in entries.items():  # sampled and scored exactly as `p2es eval` does, k = 1
        recon, _, _ = sample_windows(
            e,
            prep["ppg"],
            prep["demo"],
            prep["demo_mask"],
            steps=args.steps,
            k=1,
            batch=64,
            seed=args.seed,
            desc=name,
            progress=True,
        )
        row, werr = score(true, recon, fs, tc, groups)
        d = werr["hr_mae_bpm"][np.isfinite(werr["hr_mae_bpm"])]
        row["hr_se"] = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
        row["hr_by_rhythm"] = {g: v["hr_mae_bpm"] for g, v in row.pop("per_rhythm").items()}
        row.pop("per_lead", None)
        rows[name] = row

    names = list(rows)
    ranks = {n: [] for n in names}
    for m in SELECT:
        order = sorted(names, key=lambda n: rows[n][m])
        for r, n in enumerate(order, 1):
            ranks[n].append(r)
    print(f"{args.records} validation records (val split, seed {args.seed}), {args.steps} steps, 1 sample")
    print(
        "| candidate | FD | HR MAE bpm (SE) | QRS MAE ms | QT MAE ms | RMSE mV | HR sinus / AF / PVC / other | mean rank |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for n in names:
        r = rows[n]
        hb = " / ".join(f"{r['hr_by_rhythm'].get(g, float('nan')):.2f}" for g in GROUP_ORDER)
        r["mean_rank"] = float(np.mean(ranks[n]))
        print(
            f"| {n} | {r['fd']:.2f} | {r['hr_mae_bpm']:.2f} ({r['hr_se']:.2f}) | {r['qrs_ms_mae']:.1f} | "
            f"{r['qt_ms_mae']:.1f} | {r['rmse']:.4f} | {hb} | {r['mean_rank']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "records": args.records,
                    "seed": args.seed,
                    "steps": args.steps,
                    "candidates": {n: {"path": p, "model": m} for n, p, m in cands},
                    "rows": rows,
                },
                fh,
                indent=1,
                default=float,
            )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
