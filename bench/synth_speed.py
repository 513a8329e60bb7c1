"""Simulator throughput on ONE core: records per second for 8 s records at 128 Hz.

Usage:  .venv/bin/python bench/synth_speed.py [--records 2000] [--repeats 5] [--json OUT.json]

The process pins itself to a single CPU and single-threaded BLAS/FFT before numpy is imported,
generates ``--records`` records ``--repeats`` times per configuration and reports the median
rate (the machine is shared, so the median of repeats is the figure to quote).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

from wearable.sim import synthesize  # noqa: E402 - numpy must see the thread settings first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    synthesize(64, seed=0)  # warm-up (imports, allocator)
    configs = {
        "default (noisy + clean ECG, noisy + clean PPG)": dict(),
        "training (clean ECG target, noisy PPG)": dict(noisy_ecg=False),
    }
    result = {
        "records": args.records,
        "repeats": args.repeats,
        "duration_s": 8.0,
        "fs": 128.0,
        "cpu": platform.processor() or platform.machine(),
        "cores_used": 1,
        "rates": {},
    }
    for name, kw in configs.items():
        rates = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            synthesize(args.records, seed=100 + r, **kw)
            rates.append(args.records / (time.perf_counter() - t0))
        result["rates"][name] = {"median_records_per_s": statistics.median(rates), "all": rates}
        print(
            f"{name:50s} median {statistics.median(rates):7.0f} records/s  "
            f"(min {min(rates):.0f}, max {max(rates):.0f}, {args.repeats} x {args.records} records, 1 core)"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
