"""Compare candidate models on the validation split (never the test split of ``p2es eval``).

    python bench/validation.py --candidate s20=/tmp/pilot/s20/set.pt:p2es \
        --candidate s10=/tmp/pilot/s10/set.pt:p2es [--records 512] [--seed 0] [--json OUT.json]

Used to choose settings that are not learned (e.g. the blur width of a training leg)
without looking at the test records that the README's table comes from.  Every
candidate sees the same ``records`` windows of ``fixed_set("val", records, seed)`` (simulator
seeds disjoint from the training and test seeds), the same initial noise (generator seeded with
``seed``), one sample per window, ``--steps`` reverse steps.  Printed: the headline metrics of
``p2es eval`` that the selection uses plus RMSE, the HR MAE per rhythm group, the standard error
of the HR MAE (over windows), beat F1 of lead II against the simulator's annotated R peaks per
rhythm label next to the same detector on the true ECG (the ceiling), and each candidate's mean
rank over the selection metrics (1 = best).

``--sampler STEPS[:ETA[:SPACING[:TEMPERATURE]]]`` (repeatable) scores every candidate under each
sampler setting (reverse steps; eta 0 = DDIM, 1 = ancestral; time-grid spacing 1 = uniform, > 1
denser at low t; temperature scales the initial noise, 1 = the learned distribution) and adds the sampling time per window: the quality/speed frontier.  Without it every
candidate runs ``--steps`` DDIM steps on the uniform grid, as ``p2es eval`` does.

``--shuffled`` adds, for every candidate, a row with each record's demographics replaced by
another record's (``engine.model.evaluate.derangement``, as ``p2es eval``'s
``p2es_shuffled_demographics``): how much the model uses them.

``--select`` names the selection metrics, fixed before a comparison is scored.  The default,
``fd,hr_mae_ann_bpm,beat_f1,qrs_ms_mae,qt_ms_mae``, follows the model issue's headline metrics
(HR against annotations, beat F1); the first pilots (docs/training.md) used the earlier rule
``fd,hr_mae_bpm,qrs_ms_mae,qt_ms_mae``.  ``--rate-profile wide`` scores on the simulator's wide
heart-rate profile (sinus 35-180 bpm), the data of the legs trained with it.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

SELECT = "fd,hr_mae_ann_bpm,beat_f1,qrs_ms_mae,qt_ms_mae"
HIGHER_IS_BETTER = {"beat_f1", "beat_sensitivity", "beat_ppv", "pearson"}
RHYTHM_ORDER = (
    "sinus",
    "sinus_brady",
    "sinus_tachy",
    "af",
    "pvc",
    "long_qt",
    "st_elevation",
    "st_depression",
)


def parse_candidate(text: str) -> tuple[str, str, str]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"validation: --candidate must be NAME=PATH[:MODEL], got {text!r}")
    path, _, model = rest.rpartition(":") if ":" in rest else (rest, "", "p2es")
    return name, path or rest, model or "p2es"


def parse_sampler(text: str) -> tuple[int, float, float, float]:
    parts = text.split(":")
    usage = f"validation: --sampler must be STEPS[:ETA[:SPACING[:TEMPERATURE]]], got {text!r}"
    try:
        steps = int(parts[0])
        eta = float(parts[1]) if len(parts) > 1 else 0.0
        spacing = float(parts[2]) if len(parts) > 2 else 1.0
        temp = float(parts[3]) if len(parts) > 3 else 1.0
    except ValueError:
        raise SystemExit(usage) from None
    if len(parts) > 4 or steps < 1 or not 0.0 <= eta <= 1.0 or not spacing > 0 or not 0.0 <= temp <= 1.0:
        raise SystemExit(usage)
    return steps, eta, spacing, temp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", action="append", required=True, metavar="NAME=PATH[:MODEL]")
    ap.add_argument("--records", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--sampler", action="append", default=None, metavar="STEPS[:ETA[:SPACING[:TEMPERATURE]]]")
    ap.add_argument(
        "--shuffled", action="store_true", help="also score each candidate with deranged demographics"
    )
    ap.add_argument("--rate-profile", default="v1", choices=("v1", "wide"))
    ap.add_argument(
        "--select", default=SELECT, help="comma-separated selection metrics (default: %(default)s)"
    )
    args = ap.parse_args()
    select = [m.strip() for m in args.select.split(",") if m.strip()]
    samplers = [parse_sampler(x) for x in (args.sampler or [str(args.steps)])]

    import torch

    from engine.model import metrics as M
    from engine.model.checkpoint import load_model
    from engine.model.data import fixed_set, prepare
    from engine.model.evaluate import (
        GROUP_ORDER,
        beat_scores,
        derangement,
        rhythm_group,
        sample_windows,
        score,
    )
    from p2es.errors import P2esError

    torch.set_num_threads(args.threads)
    cands = [parse_candidate(c) for c in args.candidate]
    try:
        entries = {name: load_model(path, model) for name, path, model in cands}
    except P2esError as e:
        sys.exit(f"validation: {e}")
    mc = next(iter(entries.values())).model_config
    fs, T = float(mc.fs), int(mc.T)
    raw = fixed_set(
        "val",
        args.records,
        args.seed,
        duration_s=T / fs,
        fs=fs,
        noisy_ecg=False,
        rate_profile=args.rate_profile,
    )
    prep = prepare(raw)
    true = np.asarray(raw["ecg"], dtype=np.float64)
    labels = np.asarray(raw["rhythm"]).astype(str)
    groups = np.array([rhythm_group(s) for s in labels])
    ann = M.annotated_beats(raw["r_peaks"], true.shape[0])
    tc = M.measure(true, fs)

    def f1_by_label(ecg: np.ndarray) -> dict[str, float]:
        # beat F1 per rhythm label (not group): the gates name sinus, brady and tachy apart
        det = M.detect_windows(ecg, fs)
        out = {}
        for lab in RHYTHM_ORDER:
            idx = np.flatnonzero(labels == lab)
            if idx.size:
                out[lab] = M.beat_metrics([ann[i] for i in idx], [det[i] for i in idx], T, fs)["beat_f1"]
        return out

    ceiling = beat_scores(true, ann, groups, fs)
    ceiling.pop("per_rhythm")
    ceiling["f1_by_rhythm"] = f1_by_label(true)

    rows: dict[str, dict] = {}
    perm = derangement(true.shape[0], args.seed)
    runs = [
        (name if len(samplers) == 1 else f"{name} {st}/{eta:g}/{sp:g}/{tp:g}", e, st, eta, sp, tp, False)
        for name, e in entries.items()
        for st, eta, sp, tp in samplers
    ]
    if args.shuffled:
        runs += [
            (f"{n} shuffled demographics", e, st, eta, sp, tp, True) for n, e, st, eta, sp, tp, _ in runs
        ]
    for name, e, st, eta, sp, tp, shuffled in runs:  # sampled and scored as `p2es eval` does, k = 1
        demo, mask = (
            (prep["demo"][perm], prep["demo_mask"][perm]) if shuffled else (prep["demo"], prep["demo_mask"])
        )
        recon, _, secs = sample_windows(
            e,
            prep["ppg"],
            demo,
            mask,
            steps=st,
            k=1,
            batch=64,
            seed=args.seed,
            desc=name,
            progress=True,
            eta=eta,
            spacing=sp,
            temperature=tp,
        )
        row, werr = score(true, recon, fs, tc, groups, ann=ann)
        row["f1_by_rhythm"] = f1_by_label(recon)
        d = werr["hr_mae_bpm"][np.isfinite(werr["hr_mae_bpm"])]
        row["hr_se"] = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
        row["hr_by_rhythm"] = {g: v["hr_mae_bpm"] for g, v in row.pop("per_rhythm").items()}
        row.pop("per_lead", None)
        row["sampler"] = {"steps": st, "eta": eta, "spacing": sp, "temperature": tp}
        row["shuffled_demographics"] = shuffled
        row["ms_per_window"] = 1000.0 * secs / true.shape[0]
        rows[name] = row

    names = list(rows)
    ranked = [n for n in names if not rows[n]["shuffled_demographics"]]  # diagnostics are not candidates
    ranks: dict[str, list[int]] = {n: [] for n in ranked}
    for m in select:
        sign = -1.0 if m in HIGHER_IS_BETTER else 1.0
        order = sorted(ranked, key=lambda n: sign * rows[n][m])
        for r, n in enumerate(order, 1):
            ranks[n].append(r)
    print(
        f"{args.records} validation records (val split, seed {args.seed}, rate profile {args.rate_profile}), "
        f"{args.threads} thread(s), 1 sample; selection: mean rank over {', '.join(select)}"
    )
    print(
        "| candidate | FD | HR MAE ann bpm | HR MAE bpm (SE) | beat F1 | QRS MAE ms | QT MAE ms | RMSE mV "
        "| HR sinus / AF / PVC / other | ms/window | mean rank |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for n in names:
        r = rows[n]
        hb = " / ".join(f"{r['hr_by_rhythm'].get(g, float('nan')):.2f}" for g in GROUP_ORDER)
        r["mean_rank"] = float(np.mean(ranks[n])) if n in ranks else float("nan")
        print(
            f"| {n} | {r['fd']:.2f} | {r['hr_mae_ann_bpm']:.2f} | {r['hr_mae_bpm']:.2f} ({r['hr_se']:.2f}) | "
            f"{r['beat_f1']:.3f} | {r['qrs_ms_mae']:.1f} | {r['qt_ms_mae']:.1f} | {r['rmse']:.4f} | {hb} | "
            f"{r['ms_per_window']:.0f} | {r['mean_rank']:.2f} |"
        )
    labs = [lab for lab in RHYTHM_ORDER if lab in ceiling["f1_by_rhythm"]]
    print()
    print(
        "Beat F1 of lead II vs annotated R peaks (+-50 ms), per rhythm; `true ECG` = the detector's ceiling"
    )
    print("| rhythm | " + " | ".join(names) + " | true ECG |")
    print("|---|" + "---:|" * (len(names) + 1))
    for lab in labs:
        cells = [f"{rows[n]['f1_by_rhythm'].get(lab, float('nan')):.3f}" for n in names]
        print(f"| {lab} | " + " | ".join(cells) + f" | {ceiling['f1_by_rhythm'][lab]:.3f} |")
    print(f"Detector on the true ECG: HR MAE vs annotations {ceiling['hr_mae_ann_bpm']:.2f} bpm")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "records": args.records,
                    "seed": args.seed,
                    "samplers": [
                        {"steps": st, "eta": eta, "spacing": sp, "temperature": tp}
                        for st, eta, sp, tp in samplers
                    ],
                    "rate_profile": args.rate_profile,
                    "select": select,
                    "ceiling_true_ecg": ceiling,
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
