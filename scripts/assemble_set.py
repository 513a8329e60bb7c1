"""Assemble a checkpoint set from models of other sets (weights copied as stored).

    python scripts/assemble_set.py OUT SET:MODEL[=NAME] [SET:MODEL[=NAME] ...]

e.g. the shipped set (docs/training.md, "The shipped set"): the seed legs' P2Es and DDPM replicas
beside the ablations trained on the same data::

    python scripts/assemble_set.py engine/weights/p2es_set.pt \\
        runs/legs_wide/set.pt:p2es runs/legs_wide/set.pt:ddpm ... runs/ablations_wide/set.pt:cardiogan

Errors (a missing model, a name given twice, an unreadable set) are one line and write nothing.
"""

from __future__ import annotations

import sys


def parse_pick(text: str) -> tuple[str, str, str]:
    spec, _, name = text.partition("=")
    path, sep, model = spec.rpartition(":")
    if not sep or not path or not model:
        raise SystemExit(f"assemble_set: expected SET:MODEL[=NAME], got {text!r}")
    return path, model, name or model


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from engine.model.checkpoint import merge_sets
    from p2es.errors import P2esError

    try:
        origin = merge_sets(argv[0], [parse_pick(a) for a in argv[1:]])
    except P2esError as e:
        print(f"assemble_set: {e}", file=sys.stderr)
        return 1
    for name, src in origin.items():
        print(f"{name:<20} <- {src}")
    print(f"wrote {argv[0]} ({len(origin)} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
