"""RMSE of the multi-sample mean against the number of samples K (validation split).

    python bench/mean_of_k.py [--candidate NAME=SET[:MODEL] ...] [--records 256] [--k-max 16]

The model issue asks that the *multi-sample mean* of P2Es reach RMSE <= 0.80 x the all-zero
output; ``p2es eval`` reports it for K = 4.  The mean of K samples tends to the model's
conditional mean as K grows (its RMSE falls roughly as sqrt(MSE_inf + var / K)), at K times
the sampling cost.  This script samples every window of ``fixed_set("val", records, seed)``
(the rate profile the model was trained on; demographics given) ``--k-max`` times in one call
(live 10-step DDIM, the same noise generator for every candidate) and reports, for K = 1, 2, 4,
... k-max, the RMSE of the mean of the first K samples, its ratio to the all-zero output's RMSE
on the same windows, and the beat F1 of the mean (lead II, +-50 ms): averaging samples whose
beats disagree flattens the QRS.  Diagnostic for choosing K on validation; nothing is chosen here.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", action="append", default=None, metavar="NAME=SET[:MODEL]")
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k-max", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from validation import parse_candidate  # bench/validation.py: the same NAME=SET[:MODEL] syntax

    from engine.model import metrics as M
    from engine.model.checkpoint import DEFAULT_CHECKPOINT, load_model
    from engine.model.data import fixed_set, prepare
    from engine.model.evaluate import trained_rate_profile
    from engine.model.sampler import sample
    from p2es.errors import P2esError

    torch.set_num_threads(args.threads)
    cands = args.candidate or [f"p2es={DEFAULT_CHECKPOINT}:p2es", f"ddpm={DEFAULT_CHECKPOINT}:ddpm"]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= args.k_max]
    raw = None
    print("| candidate | " + " | ".join(f"K = {k}" for k in ks) + " |")
    print("|---|" + "---:|" * len(ks))
    for c in cands:
        name, path, model = parse_candidate(c)
        try:
            e = load_model(path, model)
        except P2esError as err:
            sys.exit(f"mean_of_k: {err}")
        fs, T = float(e.model_config.fs), int(e.model_config.T)
        if raw is None:
            profile = trained_rate_profile({model: e})
            raw = fixed_set("val", args.records, args.seed, duration_s=T / fs, fs=fs, noisy_ecg=False,
                            rate_profile=profile)  # fmt: skip
            prep = prepare(raw)
            true = np.asarray(raw["ecg"], dtype=np.float64)
            zero_rmse = float(np.sqrt(np.mean(true**2)))
            ann = M.annotated_beats(raw["r_peaks"], true.shape[0])
        gen = torch.Generator().manual_seed(args.seed)
        outs = []
        for s in range(0, true.shape[0], 16):
            sl = slice(s, min(true.shape[0], s + 16))
            r = sample(e.model, e.schedule, prep["ppg"][sl], (prep["demo"][sl], prep["demo_mask"][sl]),
                       steps=10, k=args.k_max, generator=gen)  # fmt: skip
            assert r.samples is not None
            outs.append(r.samples.double().numpy())
        smp = np.concatenate(outs)  # [N, K, 12, T]
        cells = []
        for k in ks:
            m = smp[:, :k].mean(axis=1)
            rmse = float(np.sqrt(np.mean((m - true) ** 2)))
            f1 = M.beat_metrics(ann, M.detect_windows(m, fs), T, fs)["beat_f1"]
            cells.append(f"{rmse:.4f} ({rmse / zero_rmse:.2f} x zero; F1 {f1:.3f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{args.records} validation records (seed {args.seed}); all-zero output RMSE {zero_rmse:.4f} mV")


if __name__ == "__main__":
    main()
