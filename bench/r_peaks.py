"""R-peak detector against the simulator's ground-truth beats, on true and reconstructed ECG.

    python bench/r_peaks.py [--records 256] [--seed 5] [--models p2es,ddpm] [--steps 10]

Records come from the simulator's ``val`` split (subjects disjoint from training; default
rhythm mix: sinus family, AF, PVCs, ...; 8 s at 128 Hz, ECG with its noise).  For each signal
``p2es.signal.detect_r_peaks`` runs on lead II and its detections are matched one-to-one to
the annotated R peaks within +-75 ms (the usual 150 ms match window of ANSI/AAMI EC57);
annotated beats closer than 75 ms to a window edge are not counted either way.

Reported per signal kind: sensitivity (annotated beats found), positive predictivity
(detections that are beats), and the fraction of windows whose HR (60 / mean RR) is within
3 bpm of the true one.  Signal kinds: the true lead II (``true``), the true lead II with
extra white noise of 0.05 mV (``true+noise``), and lead II reconstructed by each model in
``--models`` from the shipped set (one sample per window, ``--steps`` reverse steps).

For reconstructions the annotation is the heart's true beats: a missed beat there is either
a beat the model did not draw or one the detector did not see; the picture of each kind of
failure is what tells them apart.
"""

from __future__ import annotations

import argparse

import numpy as np

TOL_S = 0.075


def match(det: np.ndarray, ann: np.ndarray, fs: float, n: int) -> tuple[int, int, int]:
    """(true positives, false negatives, false positives) with edge beats excluded."""
    tol = int(round(TOL_S * fs))
    inner = (ann >= tol) & (ann < n - tol)
    used = np.zeros(det.size, dtype=bool)
    tp = fn = 0
    for a, keep in zip(ann, inner):
        j = np.flatnonzero(~used & (np.abs(det - a) <= tol))
        if j.size:
            used[j[np.argmin(np.abs(det[j] - a))]] = True
            tp += int(keep)
        elif keep:
            fn += 1
    edge = (det < tol) | (det >= n - tol)
    fp = int(np.sum(~used & ~edge))
    return tp, fn, fp


def score(signals: np.ndarray, r_peaks: np.ndarray, fs: float) -> dict[str, float]:
    from p2es.signal import detect_r_peaks, heart_rate_bpm

    tp = fn = fp = 0
    hr_ok = 0
    for x, ann in zip(signals, r_peaks):
        ann = ann[ann >= 0].astype(np.int64)
        det = detect_r_peaks(x, fs)
        a, b, c = match(det, ann, fs, x.shape[-1])
        tp, fn, fp = tp + a, fn + b, fp + c
        hr_ok += int(abs(heart_rate_bpm(det, fs) - heart_rate_bpm(ann, fs)) <= 3.0)
    return {
        "se": tp / max(tp + fn, 1),
        "ppv": tp / max(tp + fp, 1),
        "fn": fn,
        "fp": fp,
        "hr_within_3": hr_ok / len(signals),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument(
        "--models", default="p2es,ddpm", help="comma list of models of the shipped set ('' = none)"
    )
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()

    import torch

    from engine.model.checkpoint import DEFAULT_CHECKPOINT, load_model
    from engine.model.data import fixed_set
    from engine.model.preprocess import ppg_features
    from engine.model.sampler import sample
    from p2es.leads import LEADS

    torch.manual_seed(0)
    d = fixed_set("val", args.records, args.seed)
    fs = float(d["fs"])
    ii = LEADS.index("II")
    rows = [("true", d["ecg"][:, ii])]
    rng = np.random.default_rng(args.seed)
    rows.append(("true+noise", d["ecg"][:, ii] + 0.05 * rng.standard_normal(d["ecg"][:, ii].shape)))
    feats = torch.from_numpy(ppg_features(d["ppg"], fs))
    for name in filter(None, args.models.split(",")):
        e = load_model(DEFAULT_CHECKPOINT, name)
        g = torch.Generator().manual_seed(args.seed)
        out = [
            sample(
                e.model,
                e.schedule,
                feats[i : i + 64],
                None,
                steps=args.steps,
                k=1,
                generator=g,
                keep_samples=False,
            )
            .mean[:, ii]
            .numpy()
            for i in range(0, len(feats), 64)
        ]
        rows.append((f"{name} reconstruction", np.concatenate(out)))
    rhythms = np.asarray(d["rhythm"])
    print(
        f"{args.records} records (val split, seed {args.seed}), lead II, match window +-{1e3 * TOL_S:.0f} ms"
    )
    print("| signal | rhythm | Se % | +P % | missed | extra | windows with HR within 3 bpm % |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for label, sig in rows:
        for rh in ["all"] + sorted(set(rhythms.tolist())):
            sel = np.ones(len(rhythms), bool) if rh == "all" else rhythms == rh
            s = score(sig[sel], d["r_peaks"][sel], fs)
            print(
                f"| {label} | {rh} ({sel.sum()}) | {100 * s['se']:.2f} | {100 * s['ppv']:.2f} | "
                f"{s['fn']} | {s['fp']} | {100 * s['hr_within_3']:.1f} |"
            )


if __name__ == "__main__":
    main()
