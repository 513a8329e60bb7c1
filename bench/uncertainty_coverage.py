"""Coverage of the uncertainty band: how often does the true ECG lie inside mean +- c * spread?

    python bench/uncertainty_coverage.py [--records 96] [--seed 3] [--k 4,8] [--split test|val]
        [--temperature T] [--gate 0.05]

K samples per window give a mean and a sample standard deviation s.  Even for a perfectly
calibrated sampler, mean +- 2 s is not a 95 % band when K is small: a new draw from the same
predictive distribution falls within mean +- t(0.975, K-1) * sqrt(1 + 1/K) * s with 95 %
probability (Student t).  This script reports, on held-out simulated records (test split, all
12 leads, every sample point), the coverage of both bands for each K: the t band shows how far
the model itself is from calibrated.  The sampler runs at the model's saved temperature unless
``--temperature`` says otherwise; ``--gate`` also reports the share of windows whose
uncertainty (median spread over leads and samples, as the live engine computes it) passes the
morphology gate's ``max_uncertainty_mv``.  Choices (e.g. a temperature) are made on
``--split val``.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=96)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--k", default="4,8")
    ap.add_argument("--model", default="p2es")
    ap.add_argument("--split", choices=("test", "val"), default="test")
    ap.add_argument("--temperature", type=float, default=None, help="default: the model's saved one")
    ap.add_argument("--gate", type=float, default=0.05, help="max_uncertainty_mv of the morphology gate")
    args = ap.parse_args()

    import torch
    from scipy import stats

    from engine.model.checkpoint import DEFAULT_CHECKPOINT, load_model
    from engine.model.data import fixed_set, prepare
    from engine.model.evaluate import trained_rate_profile
    from engine.model.sampler import sample

    torch.set_num_threads(2)
    e = load_model(DEFAULT_CHECKPOINT, args.model)
    profile = trained_rate_profile({args.model: e})  # the data the model was trained on
    d = fixed_set(args.split, args.records, args.seed, rate_profile=profile)
    prep = prepare(d)  # features and demographics exactly as in training and `p2es eval`
    feats, demo = prep["ppg"], (prep["demo"], prep["demo_mask"])
    y = np.asarray(d["ecg"], dtype=np.float64)
    temp = e.sampler_config.temperature if args.temperature is None else args.temperature
    print(
        f"{args.records} held-out records ({args.split} split, seed {args.seed}, rate profile {profile}), "
        f"model {args.model}, 10 steps, temperature {temp:g}"
    )
    print(f"| K | band | factor | coverage of the true ECG | windows passing the {args.gate:g} mV gate |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for k in (int(v) for v in args.k.split(",")):
        g = torch.Generator().manual_seed(args.seed)
        r = sample(
            e.model, e.schedule, feats, demo, steps=10, k=k, generator=g, keep_samples=False, temperature=temp
        )
        m, s = r.mean.double().numpy(), r.std.double().numpy()
        unc = np.median(s.reshape(s.shape[0], -1), axis=1)  # per window, as the engine's vitals
        passing = 100 * float(np.mean(unc <= args.gate))
        c_t = float(stats.t.ppf(0.975, k - 1) * np.sqrt(1 + 1 / k))
        for label, c in (("mean +- 2 s", 2.0), ("95 % prediction band (t)", c_t)):
            cov = float(np.mean(np.abs(y - m) <= c * s))
            print(f"| {k} | {label} | {c:.2f} | {100 * cov:.1f} % | {passing:.0f} % |")


if __name__ == "__main__":
    main()
