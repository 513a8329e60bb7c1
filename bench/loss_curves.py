"""Plot training loss curves from `p2es train` logs (the `NAME step S/N loss L (mse ..., ...)`
lines that `--log-every` prints).

    python bench/loss_curves.py --out docs/img/pilot_loss.png \
        sin4=runs/pilot_sin4/log/p2es.steps1500.log sin2=runs/pilot_sin2/log/p2es.steps1500.log

Each curve is LABEL=LOGFILE; the total loss and its MSE term are drawn per step.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

LINE = re.compile(r"step (\d+)/\d+ loss ([-\d.eE+]+) \(mse ([-\d.eE+]+)")


def read_log(path: Path) -> tuple[list[int], list[float], list[float]]:
    steps: list[int] = []
    loss: list[float] = []
    mse: list[float] = []
    for ln in path.read_text().splitlines():
        m = LINE.search(ln)
        if m:
            steps.append(int(m[1]))
            loss.append(float(m[2]))
            mse.append(float(m[3]))
    return steps, loss, mse


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("curves", nargs="+", metavar="LABEL=LOGFILE")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="training loss (p2es train logs)")
    a = ap.parse_args()
    import matplotlib  # lazy: plotting only when the script runs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: plotting only when the script runs

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for spec in a.curves:
        label, sep, path = spec.partition("=")
        if not sep:
            sys.exit(f"loss_curves: expected LABEL=LOGFILE, got {spec!r}")
        s, loss, mse = read_log(Path(path))
        if not s:
            sys.exit(f"loss_curves: no step lines in {path}")
        axes[0].plot(s, loss, label=label)
        axes[1].plot(s, mse, label=label)
    for ax, name in zip(axes, ("total loss", "MSE term")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(a.title)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
