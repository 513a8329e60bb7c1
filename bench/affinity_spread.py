"""How much the demographic affinity actually varies (the model issue's item 3).

    python bench/affinity_spread.py [--checkpoint SET] [--model p2es] [--records 512] [--json OUT]

On ``--records`` windows of the VALIDATION split (``fixed_set("val", ...)``, never the test
split; the simulator rate profile the model was trained on) it encodes every window and reports:

* per group g: ``||A_g - I||_F`` (how far each group's 8x8 lead-affinity matrix is from the
  identity it starts at) and the largest off-diagonal entry;
* between groups: the mean and max ``||A_g - A_h||_F``;
* per patient: the element-wise std of the mixed matrix ``A = sum_g w_g A_g`` across patients
  (mean and max over the 64 entries) and ``||A - mean(A)||_F`` (mean, max);
* the soft assignment: its mean entropy (log G = uniform), how many windows each group wins,
  and how the winning group differs by sex and age (mean age per group).

Nothing here is learned or tuned; it describes the shipped weights.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from engine.model.checkpoint import DEFAULT_CHECKPOINT, load_model
from engine.model.data import fixed_set, prepare
from engine.model.evaluate import trained_rate_profile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--model", default="p2es")
    ap.add_argument("--records", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    e = load_model(a.checkpoint, a.model)
    if e.model.groups is None:
        raise SystemExit(f"affinity_spread: {a.model} has no demographic groups")
    profile = trained_rate_profile({a.model: e})  # the data the model was trained on
    raw = fixed_set("val", a.records, a.seed, rate_profile=profile)
    d = prepare(raw, e.model_config.ecg_scale)
    with torch.no_grad():
        cond = e.model.encode(d["ppg"], d["demo"], d["demo_mask"])
    assert cond.A is not None and cond.w is not None
    A = cond.A.numpy().astype(np.float64)  # [N, 8, 8]
    w = cond.w.numpy().astype(np.float64)  # [N, G]
    Ag = e.model.groups.affinity.detach().numpy().astype(np.float64)  # [G, 8, 8]
    G, L, _ = Ag.shape
    eye = np.eye(L)
    off = ~np.eye(L, dtype=bool)
    per_group = [
        {
            "g": g,
            "fro_from_identity": float(np.linalg.norm(Ag[g] - eye)),
            "max_abs_offdiag": float(np.abs(Ag[g][off]).max()),
        }
        for g in range(G)
    ]
    pair = [float(np.linalg.norm(Ag[i] - Ag[j])) for i in range(G) for j in range(i + 1, G)]
    mean_A = A.mean(axis=0)
    dev = np.linalg.norm((A - mean_A).reshape(len(A), -1), axis=1)
    std_e = A.std(axis=0)
    ent = -(w * np.log(np.clip(w, 1e-12, None))).sum(axis=1)
    win = w.argmax(axis=1)
    age = np.asarray(raw["age"], dtype=float)
    sex = np.asarray(raw["sex"], dtype=float)
    groups = []
    for g in range(G):
        m = win == g
        groups.append(
            {
                "g": g,
                "windows": int(m.sum()),
                "mean_age": float(age[m].mean()) if m.any() else None,
                "frac_male": float(sex[m].mean()) if m.any() else None,
            }
        )
    out = {
        "checkpoint": a.checkpoint,
        "model": a.model,
        "records": a.records,
        "rate_profile": profile,
        "split": "val",
        "seed": a.seed,
        "per_group": per_group,
        "between_groups_fro": {"mean": float(np.mean(pair)), "max": float(np.max(pair))},
        "per_patient": {
            "elementwise_std_mean": float(std_e.mean()),
            "elementwise_std_max": float(std_e.max()),
            "fro_from_mean_mean": float(dev.mean()),
            "fro_from_mean_max": float(dev.max()),
            "mean_A_fro_from_identity": float(np.linalg.norm(mean_A - eye)),
        },
        "assignment": {"entropy_mean": float(ent.mean()), "entropy_uniform": math.log(G), "groups": groups},
    }
    print(f"{a.model}: {a.records} validation windows, {G} groups")
    print("  ||A_g - I||_F per group: " + ", ".join(f"{p['fro_from_identity']:.3f}" for p in per_group))
    print(f"  ||A_g - A_h||_F between groups: mean {np.mean(pair):.3f}, max {np.max(pair):.3f}")
    print(
        f"  per patient: element-wise std mean {std_e.mean():.4f} / max {std_e.max():.4f}; "
        f"||A - mean A||_F mean {dev.mean():.4f} / max {dev.max():.4f}; ||mean A - I||_F "
        f"{np.linalg.norm(mean_A - eye):.3f}"
    )
    print(
        f"  assignment entropy {ent.mean():.3f} (uniform {math.log(G):.3f}); windows won per group: "
        + ", ".join(str(x["windows"]) for x in groups)
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
