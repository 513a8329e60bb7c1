#!/usr/bin/env python3
"""Draw docs/img/architecture.png from the layer definitions in p2es/architecture.py.

python scripts/architecture.py [--out docs/img/architecture.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402 - after the path setup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend choice
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402 - after the backend choice

from p2es.architecture import LAYERS  # noqa: E402 - after the path setup

COLORS = ["#f4d6cc", "#f7e7c6", "#d9ead3", "#e2ecd9", "#d0e0f0", "#dcd3ec", "#e6e6e6"]


def draw(out: Path) -> None:
    n = len(LAYERS)
    fig, ax = plt.subplots(figsize=(11, 1.05 * n + 0.6), dpi=110)
    ax.set_xlim(0, 11)
    ax.set_ylim(0, n * 1.05 + 0.3)
    ax.axis("off")
    for i, layer in enumerate(LAYERS):
        y = (n - 1 - i) * 1.05 + 0.2
        ax.add_patch(
            FancyBboxPatch(
                (0.2, y),
                10.6,
                0.8,
                boxstyle="round,pad=0.02,rounding_size=0.08",
                fc=COLORS[i % len(COLORS)],
                ec="#555555",
                lw=1,
            )
        )
        ax.text(0.4, y + 0.55, layer.name, fontsize=11, weight="bold", va="center")
        units = [u for u in layer.units if not (layer.name == "core" and u in ("p2es", "engine", "wearable"))]
        ax.text(2.3, y + 0.55, "   ".join(units), fontsize=9, family="monospace", va="center")
        ax.text(2.3, y + 0.22, layer.description, fontsize=8.5, style="italic", color="#333333", va="center")
        if i < n - 1:
            ax.add_patch(
                FancyArrowPatch(
                    (10.45, y + 0.02), (10.45, y - 0.23), arrowstyle="-|>", mutation_scale=12, color="#444444"
                )
            )
    ax.set_title(
        "p2es layers: imports point down only (model, data and transport never import each other's side: see p2es/architecture.py); units of one layer are independent",
        fontsize=10,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "img" / "architecture.png"))
    a = ap.parse_args()
    draw(Path(a.out))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
