"""Real PPG over several seeds: how often does reconstructed lead II miss the PPG's pulse rate?

    python bench/real_ppg.py [--seeds 10] [--k 4] [--steps 10] [--model p2es]

The acceptance test (tests/test_reconstruct.py) runs ``engine.model.realppg.hr_table`` once, with
seed 0.  The sampler is stochastic, so this script runs the same table for seeds 0..N-1 and
reports, per seed, the kept 8 s windows (PPG SQI rule of engine.model.realppg) whose lead-II HR is
more than 3 bpm off the pulse rate, and over all seeds the fraction of such windows.
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--hop-s", type=float, default=4.0)
    ap.add_argument("--model", default="p2es")
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    from engine.model.checkpoint import DEFAULT_CHECKPOINT, load_model
    from engine.model.realppg import HR_TOL_BPM, hr_table, off_windows

    torch.set_num_threads(2)
    entry = load_model(args.checkpoint or DEFAULT_CHECKPOINT, args.model)
    kept = off = 0
    lines = []
    for seed in tqdm(range(args.seeds), desc="seeds", leave=False):
        rows = hr_table(entry, k=args.k, steps=args.steps, seed=seed, hop_s=args.hop_s)
        bad = off_windows(rows)
        n = sum(r["keep"] for r in rows)
        kept, off = kept + n, off + len(bad)
        what = ", ".join(f"{r['rec']} {r['t0']:.0f} s ({r['d']:+.1f} bpm)" for r in bad) or "none"
        lines.append(f"| {seed} | {n} | {len(bad)} | {what} |")
    print(
        f"model {args.model}, K = {args.k}, {args.steps} steps, hop {args.hop_s:g} s; "
        f"windows off = lead-II HR more than {HR_TOL_BPM:g} bpm from the PPG pulse rate"
    )
    print("| seed | kept windows | off | which |")
    print("| ---: | ---: | ---: | --- |")
    print("\n".join(lines))
    print(f"\n{off}/{kept} kept windows off over {args.seeds} seeds ({100 * off / max(kept, 1):.1f} %)")


if __name__ == "__main__":
    main()
