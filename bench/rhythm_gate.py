"""How often the shipped irregular-rhythm rule's condition holds, with and without its rate check.

    python bench/rhythm_gate.py [--records 64] [--seed 77] [--k 4]

``rr_irregular`` (alerts/default_rules.yaml) compares nRMSSD of the R peaks of reconstructed
lead II with 0.10.  A reconstruction that misses or adds one beat makes a regular rhythm look
irregular, so the rule only evaluates windows whose reconstructed rate agrees with the PPG's own
pulse rate (``rate_agreement``).  This script reconstructs simulated 8 s windows the way the
live engine does for a registered patient -- PPG band-passed causally as ingest does, features
and demographics from ``engine.serve.runtime.prepare_batch``, K samples and their mean, vitals from
``engine.serve.runtime.window_vitals`` -- and reports per rhythm: the fraction of windows over 0.10,
the fraction whose rates agree within 5 / 10 %, and the fraction that are both (what the rule
acts on).  The truth column is nRMSSD of the simulator's own beats.
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

    from engine.model.checkpoint import DEFAULT_CHECKPOINT, load_model
    from engine.model.sampler import sample
    from engine.serve.runtime import WindowRequest, WindowResult, prepare_batch, window_vitals
    from p2es.signal import rr_irregularity
    from wearable.sim import record_profile, synthesize

    torch.set_num_threads(2)
    e = load_model(DEFAULT_CHECKPOINT, "p2es")
    fs, thr = 128.0, args.threshold
    print(
        f"{args.records} records per row (seed {args.seed}), model p2es, K = {args.k}, 10 steps; "
        f"irregular = nRMSSD > {thr:g}"
    )
    print(
        "| rhythm | truly irregular | irregular (reconstruction) | rates agree 5 % | irregular and agree 5 % "
        "| rates agree 10 % | irregular and agree 10 % |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rhythm, hr in [
        ("sinus", None),
        ("sinus_tachy", 135.0),
        ("sinus_brady", None),
        ("af", None),
        ("pvc", None),
    ]:
        d = synthesize(args.records, args.seed, duration_s=8.0, fs=fs, rhythm_mix=rhythm, hr_bpm=hr)
        ppg = d["ppg"]  # what ingest hands the engine: the resampled, unfiltered window
        t0 = 1.7e9  # any Unix time: the vitals contract refuses clocks outside 2000-2100
        reqs = [
            WindowRequest(f"sim-{i}", t0, fs, ppg[i], demographics=record_profile(d, i))
            for i in range(len(ppg))
        ]
        feats, demo, mask = prepare_batch(reqs)
        g = torch.Generator().manual_seed(args.seed)
        r = sample(
            e.model,
            e.schedule,
            torch.from_numpy(feats),
            (torch.from_numpy(demo), torch.from_numpy(mask)),
            steps=10,
            k=args.k,
            generator=g,
            keep_samples=False,
        )
        irr, mis, true_irr = [], [], []
        for i, req in enumerate(reqs):
            v = window_vitals(WindowResult(req, r.mean[i].numpy(), r.std[i].numpy(), len(reqs), 0.0, 0.0))
            irr.append(v.rr_irregularity > thr)
            ok = np.isfinite(v.hr_bpm) and np.isfinite(v.hr_ppg_bpm) and v.hr_ppg_bpm > 0
            mis.append(abs(v.hr_bpm - v.hr_ppg_bpm) / v.hr_ppg_bpm if ok else np.inf)
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
