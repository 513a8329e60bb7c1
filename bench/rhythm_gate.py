"""How often the shipped irregular-rhythm rule's condition holds, with and without its rate check.

    python bench/rhythm_gate.py [--records 64] [--seed 77] [--k 4]

``rr_irregular`` (alerts/default_rules.yaml) compares nRMSSD of the R peaks of reconstructed
lead II with 0.10.  A reconstruction that misses or adds one beat makes a regular rhythm look
irregular, so the rule only evaluates windows whose reconstructed rate agrees with the PPG's own
pulse rate (``rate_agreement``).  This script reconstructs simulated 8 s windows the way the live
engine does (PPG band-passed causally as ingest does, features as ``engine.runtime.prepare_batch``
makes them, K samples, their mean; vitals as in
``engine.runtime.window_vitals``) and reports per rhythm: the fraction of windows over 0.10, the
fraction whose rates agree within 5 / 10 %, and the fraction that are both (what the rule acts
on).  The truth column is nRMSSD of the simulator's own beats.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.10)
    args = ap.parse_args()

    import torch

    from engine.checkpoint import load_model
    from engine.data import bandpass, ppg_features
    from engine.reconstruct import DEFAULT_CHECKPOINT
    from engine.sampler import sample
    from p2es.signal import detect_ppg_beats, detect_r_peaks, heart_rate_bpm, rr_irregularity
    from wearable.sim import synthesize

    torch.set_num_threads(2)
    e = load_model(DEFAULT_CHECKPOINT, "p2es")
    fs, thr = 128.0, args.threshold
    print(f"{args.records} records per row (seed {args.seed}), model p2es, K = {args.k}, 10 steps; "
          f"irregular = nRMSSD > {thr:g}")
    print("| rhythm | truly irregular | irregular (reconstruction) | rates agree 5 % | irregular and agree 5 % "
          "| rates agree 10 % | irregular and agree 10 % |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rhythm, hr in [("sinus", None), ("sinus_tachy", 135.0), ("sinus_brady", None), ("af", None),
                       ("pvc", None)]:
        d = synthesize(args.records, args.seed, duration_s=8.0, fs=fs, rhythm_mix=rhythm, hr_bpm=hr)
        ppg = bandpass(d["ppg"], fs, zero_phase=False)          # what ingest hands the engine
        feats = torch.from_numpy(ppg_features(ppg, fs, zero_phase=True))  # engine.runtime.prepare_batch
        g = torch.Generator().manual_seed(args.seed)
        r = sample(e.model, e.schedule, feats, None, steps=10, k=args.k, generator=g, keep_samples=False)
        ii = r.mean[:, 1].numpy()
        irr, mis, true_irr = [], [], []
        for i in range(len(ii)):
            rp = detect_r_peaks(ii[i], fs)
            feet = detect_ppg_beats(ppg[i], fs)["feet"]
            hr_e, hr_p = heart_rate_bpm(rp, fs), heart_rate_bpm(feet, fs)
            irr.append(rr_irregularity(rp, fs) > thr)
            mis.append(abs(hr_e - hr_p) / hr_p if np.isfinite(hr_e) and np.isfinite(hr_p) and hr_p > 0 else np.inf)
            tb = d["r_peaks"][i]
            true_irr.append(rr_irregularity(tb[tb >= 0], fs) > thr)
        irr, mis, true_irr = np.array(irr), np.array(mis), np.array(true_irr)
        label = rhythm + (f" {hr:g} bpm" if hr else "")
        cells = [f"{100 * true_irr.mean():.0f} %", f"{100 * irr.mean():.0f} %"]
        for tol in (0.05, 0.10):
            ok = mis <= tol
            cells += [f"{100 * ok.mean():.0f} %", f"{100 * (irr & ok).mean():.0f} %"]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
