"""How often the shipped ST rules' thresholds are crossed on simulated records (true ECG).

    python bench/st_rules.py [--records 60] [--seed 11]

For each case (normal-ST sinus rhythm at several rates, simulated ST elevation / depression)
it measures the ST deviation per lead group (``p2es.leads.st_group_deviation`` on
``p2es.signal.delineate`` of the clean 8 s record) and reports the fraction of records whose
groups cross (a) one 0.1 mV limit for every group and (b) the shipped limits of
``alerts/default_rules.yaml`` (0.2 mV elevation for the V2-V3 groups).  The HR gate of the ST
rules (evaluation held above 120 bpm) is not part of this count.  Numbers quoted in the rules
file come from this script with its defaults.
"""

from __future__ import annotations

import argparse
import math


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=60)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    from alerts.rules import DEFAULT_RULES_PATH, load_rules
    from p2es.leads import st_group_deviation
    from p2es.signal import delineate
    from wearable.sim import synthesize

    rules = [r for r in load_rules(DEFAULT_RULES_PATH).rules if r.metric.startswith("st_")]
    cases = [
        ("sinus", 70.0),
        ("sinus", 100.0),
        ("sinus", 118.0),
        ("st_elevation", None),
        ("st_depression", None),
    ]
    print("| rhythm | HR | records crossing 0.1 mV anywhere | records crossing the shipped ST limits |")
    print("| --- | ---: | ---: | ---: |")
    for rhythm, hr in cases:
        d = synthesize(
            args.records, args.seed, duration_s=8.0, fs=128.0, rhythm_mix=rhythm, hr_bpm=hr, noise=0.0
        )
        flat = shipped = 0
        for i in range(args.records):
            g = st_group_deviation(delineate(d["ecg"][i], 128.0).st_mv)
            vals = {f"st_{k}_mv": v for k, v in g.items() if math.isfinite(v)}
            flat += any(abs(v) >= 0.1 for v in vals.values())
            shipped += any(r.metric in vals and _crosses(vals[r.metric], r.op, r.threshold) for r in rules)
        hr_txt = f"{hr:.0f}" if hr else "sim"
        print(f"| {rhythm} | {hr_txt} | {flat / args.records:.0%} | {shipped / args.records:.0%} |")


def _crosses(v: float, op: str, thr: float) -> bool:
    return {">": v > thr, ">=": v >= thr, "<": v < thr, "<=": v <= thr}[op]


if __name__ == "__main__":
    main()
