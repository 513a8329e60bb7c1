"""Where the reconstructed beats sit relative to the annotated R peaks (validation split).

For every annotated R peak of the sinus windows (sinus, bradycardia, tachycardia; peaks within
0.3 s of a window edge skipped) the nearest R peak the detector finds on reconstructed lead II:
the share with none within 150 ms, the share more than 50 ms off (the beat-F1 tolerance), and
the offsets split into a per-window part (sd of each window's median offset -- a delay the
model got wrong for the whole window, e.g. the pulse arrival time) and a beat-to-beat part (sd
of the offsets around their window's median).  Diagnostic for the model issue; nothing is
chosen with it.

    python bench/beat_offsets.py --records 256 --candidate runs/pilot_wide/set.pt:p2es \
        --candidate runs/pilot_pat/set.pt:p2es [--noise-seeds 3]

``--noise-seeds N`` samples every window N times (initial-noise seeds ``seed`` .. ``seed+N-1``)
and splits the per-window offset further: the correlation of a window's median offset between
two noise seeds is the share of its variance that the window itself fixes (the inputs), the rest
is the sampler's draw; the correlation with the simulator's ``pat_ms`` says how much of it is
the pulse arrival time.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

SINUS = ("sinus", "sinus_brady", "sinus_tachy")


def offsets(
    ann: list[np.ndarray], det: list[np.ndarray], fs: float, T: int
) -> tuple[dict[str, float], np.ndarray]:
    """Summary of nearest-detection offsets (ms) of the annotated beats (see the docstring), and
    every window's median offset (NaN where no beat was matched)."""
    edge = 0.3 * fs
    per_window: list[float] = []
    within: list[float] = []
    allo: list[float] = []
    miss = tot = 0
    for a, d in zip(ann, det, strict=True):
        a = a[(a > edge) & (a < T - edge)]
        offs = []
        for r in a:
            tot += 1
            k = int(np.argmin(np.abs(d - r))) if len(d) else -1
            o = (d[k] - r) / fs * 1000.0 if k >= 0 else np.inf
            if abs(o) > 150.0:
                miss += 1
            else:
                offs.append(o)
        per_window.append(float(np.median(offs)) if offs else float("nan"))
        if offs:
            v = np.asarray(offs)
            within.extend(v - np.median(v))
            allo.extend(v)
    o = np.asarray(allo)
    wmed = np.asarray(per_window)[np.isfinite(per_window)]
    return {
        "beats": tot,
        "no_detection_150ms": miss / max(tot, 1),
        "off_over_50ms": float(np.mean(np.abs(o) > 50.0)) if o.size else float("nan"),
        "median_offset_ms": float(np.median(o)) if o.size else float("nan"),
        "per_window_sd_ms": float(np.std(wmed)) if wmed.size else float("nan"),
        "within_window_sd_ms": float(np.std(within)) if within else float("nan"),
    }, np.asarray(per_window)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidate", action="append", required=True, metavar="CKPT:MODEL")
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rate-profile", default="wide")
    ap.add_argument(
        "--noise-seeds",
        type=int,
        default=1,
        help="sample each window with this many initial-noise seeds (seed, seed+1, ...): adds the "
        "correlation of a window's median offset between seeds and with the simulator's PAT",
    )
    args = ap.parse_args()

    import torch

    from engine.model import metrics as M
    from engine.model.checkpoint import load_model
    from engine.model.data import fixed_set, prepare
    from engine.model.evaluate import sample_windows
    from p2es.errors import P2esError

    torch.set_num_threads(args.threads)
    raw = prep = None
    print("| candidate | beats | none within 150 ms | > 50 ms off | per-window sd ms | within-window sd ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in args.candidate:
        path, _, model = c.rpartition(":")
        try:
            e = load_model(path, model)
        except P2esError as err:
            sys.exit(f"beat_offsets: {err}")
        fs, T = float(e.model_config.fs), int(e.model_config.T)
        if raw is None:
            raw = fixed_set(
                "val", args.records, args.seed, duration_s=T / fs, fs=fs, noisy_ecg=False,
                rate_profile=args.rate_profile,
            )  # fmt: skip
            prep = prepare(raw)
            labels = np.asarray(raw["rhythm"]).astype(str)
            sel = np.flatnonzero(np.isin(labels, SINUS))
            ann_all = M.annotated_beats(raw["r_peaks"], args.records)
            ann = [ann_all[i] for i in sel]
        assert prep is not None
        meds = []
        for j in range(max(1, args.noise_seeds)):
            recon, _, _ = sample_windows(
                e, prep["ppg"][sel], prep["demo"][sel], prep["demo_mask"][sel], steps=args.steps, k=1,
                batch=64, seed=args.seed + j, desc=c, progress=True,
            )  # fmt: skip
            r, wm = offsets(ann, M.detect_windows(recon, fs), fs, T)
            if j == 0:
                print(
                    f"| {c} | {r['beats']} | {r['no_detection_150ms']:.3f} | {r['off_over_50ms']:.3f} "
                    f"| {r['per_window_sd_ms']:.1f} | {r['within_window_sd_ms']:.1f} |"
                )
            meds.append(wm)
        if len(meds) > 1:
            pat = np.asarray(raw["pat_ms"], dtype=np.float64)[sel]
            ok = np.all(np.isfinite(np.stack(meds)), axis=0)
            m = np.stack(meds)[:, ok]
            between = [np.corrcoef(m[a], m[b])[0, 1] for a in range(len(m)) for b in range(a + 1, len(m))]
            print(
                f"  {c}: {ok.sum()} windows, {len(m)} noise seeds: a window's median offset correlates "
                f"{np.mean(between):.2f} between seeds (the share of its variance the window fixes) and "
                f"{np.mean([np.corrcoef(x, pat[ok])[0, 1] for x in m]):.2f} with the simulator's PAT; "
                f"sd of the seed-mean offset {np.std(m.mean(0)):.1f} ms"
            )


if __name__ == "__main__":
    main()
