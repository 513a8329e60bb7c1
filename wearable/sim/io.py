"""The simulator's ``.npz`` file: write, read and validate the output contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from p2es.errors import InputError

REQUIRED = ("ppg", "ecg", "fs", "subject", "age", "sex", "height_cm", "weight_kg", "rhythm", "r_peaks")


def save_npz(path: str | Path, data: dict[str, np.ndarray]) -> Path:
    """Write ``data`` (the dict from ``synthesize``) to ``path`` (uncompressed ``.npz``)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        np.savez(fh, **data)  # type: ignore[arg-type]  # mypy matches **data against savez's allow_pickle: bool
    tmp.replace(path)
    return path


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read and validate a simulator/contract ``.npz``; one-line ``InputError`` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy errors vary
        raise InputError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise InputError(f"{path}: missing arrays {', '.join(missing)} (see README, simulator output)")
    n, t = data["ppg"].shape if data["ppg"].ndim == 2 else (-1, -1)
    if data["ecg"].shape != (n, 12, t):
        raise InputError(f"{path}: ecg must be [N, 12, T] matching ppg [N, T], got {data['ecg'].shape}")
    return data
