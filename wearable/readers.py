"""Readers for real recordings: WFDB (PhysioNet / MIMIC), DICOM 12-lead ECG, plain CSV.

Every reader returns one :class:`Recording`:

* ``ppg``  -- float64 ``[T]`` in the file's own (arbitrary) units, or ``None``;
* ``ecg``  -- float64 ``[12, T]`` in **mV**, rows in :data:`p2es.leads.LEADS` order, rows of
  leads that were not recorded (and could not be derived) are NaN; or ``None``;
* ``ecg_present`` -- the leads that hold data, recorded or derived.

Limb leads: any two of the six limb leads fix the other four (Einthoven/Goldberger), so
missing limb leads are derived *exactly* from the recorded ones (preferring I and II, then
pairs within I/II/III).  Recorded leads are never overwritten; ``meta["ecg_derived"]``
lists what was derived.

NaN samples (WFDB invalid samples, empty CSV cells) are kept; a signal that is empty or
entirely NaN is an error.  Every failure raises :class:`p2es.errors.InputError` with one
line naming the file and the problem; library exceptions (wfdb, pydicom, OS) are wrapped.

Format notes
------------
WFDB
    Read with ``wfdb.rdrecord`` (physical units, invalid samples -> NaN).  Multi-segment
    records (MIMIC-III style) are accepted when ``rdrecord(m2s=True)`` merges them into one
    frame; records whose channels have different sampling rates (samples-per-frame > 1,
    e.g. MIMIC-IV waveform records) are rejected for now.  ECG units mV / uV / V are
    converted to mV; any other unit on an ECG channel is an error.
DICOM
    ``Dataset.waveform_array(i)`` already applies ChannelSensitivity x correction factor
    + baseline, so its values are in ChannelSensitivityUnits (checked on pydicom's
    ``waveform_ecg.dcm``: units ``uV``, sensitivity 1.25, values up to ~1960 -> ~2 mV
    after the /1000).  Only the unit conversion to mV is done here.  The first waveform
    group with ECG lead channels is used (``RHYTHM`` before ``MEDIAN BEAT`` in that file).
CSV
    Delimiter sniffed from the first line (``,`` ``;`` tab, else whitespace); ``#`` lines
    are skipped.  Either a single numeric column (PPG, ``fs`` required), or a header with a
    time column (``time``/``t``/``timestamp``/``time_s`` in s, ``timer``/``time_ms`` in ms,
    ``datetime`` ISO strings), a PPG column (``ppg``/``pleth``/``hart``, names starting with
    those, or ``column=``) and/or ECG lead columns in mV named as in LEADS.  With no named
    PPG/ECG column and exactly one other numeric column, that column is the PPG (heartpy's
    example files call it ``hr``).  fs from a time column must be regular within 1 %;
    an explicit ``fs`` overrides it but must agree with the time column's mean rate within 1 %.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from p2es.errors import InputError
from p2es.leads import LEAD_INDEX, LEADS

__all__ = ["Recording", "read_wfdb", "read_dicom", "read_csv", "read_any"]

#: a file path as the readers accept it
StrPath = str | os.PathLike[str]

LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")
# Each limb lead as a * I + b * II (rows of p2es.leads.DERIVE).
_LIMB_COEF = {
    "I": (1.0, 0.0),
    "II": (0.0, 1.0),
    "III": (-1.0, 1.0),
    "aVR": (-0.5, -0.5),
    "aVL": (1.0, -0.5),
    "aVF": (-0.5, 1.0),
}
_PAIR_ORDER = [("I", "II"), ("I", "III"), ("II", "III")] + [
    (a, b)
    for i, a in enumerate(LIMB)
    for b in LIMB[i + 1 :]
    if (a, b) not in {("I", "II"), ("I", "III"), ("II", "III")}
]
_REL_TOL = 0.01  # regularity / agreement tolerance for sampling rates


@dataclass
class Recording:
    fs: float  # Hz
    ppg: np.ndarray | None  # float64 [T], arbitrary units
    ecg: np.ndarray | None  # float64 [12, T] in mV, LEADS order; absent leads are NaN rows
    ecg_present: tuple[str, ...]  # leads holding data (recorded or derived)
    source: str  # path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        if self.ppg is not None:
            return int(self.ppg.shape[0])
        return int(self.ecg.shape[1]) if self.ecg is not None else 0

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


# --------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _err(path: StrPath, problem: str) -> InputError:
    return InputError(" ".join(f"{path}: {problem}".split()))


_PREFIX = re.compile(r"^(?:ecg|ekg|lead)(?:[\s_:]+|-(?=\S))?")
_LEAD_TABLE = {
    "i": "I",
    "ii": "II",
    "iii": "III",
    "avr": "aVR",
    "avl": "aVL",
    "avf": "aVF",
    "v1": "V1",
    "v2": "V2",
    "v3": "V3",
    "v4": "V4",
    "v5": "V5",
    "v6": "V6",
    "mli": "I",
    "mlii": "II",
    "mliii": "III",
    "di": "I",
    "dii": "II",
    "diii": "III",
}


def lead_from_label(label: str) -> tuple[str, float] | None:
    """Map a channel label to ``(lead, sign)``; ``None`` when it is not a standard lead.

    Handles ``II``, ``AVR``, ``MLII``, ``ECG I``, ``ECG-II``, ``Lead I (Einthoven)``,
    ``Lead -aVR`` (inverted aVR, sign -1).
    """
    s = re.sub(r"\(.*?\)", "", str(label)).strip().lower()
    prev = None
    while s and s != prev:
        prev = s
        s = _PREFIX.sub("", s, count=1).strip()
    sign = 1.0
    if s.startswith("-"):
        sign, s = -1.0, s[1:]
    s = s.replace(" ", "")
    lead = _LEAD_TABLE.get(s)
    return (lead, sign) if lead else None


_PPG_NAME = re.compile(r"^(?:pleth|ppg)", re.IGNORECASE)


def _is_ppg_label(label: str) -> bool:
    s = str(label).strip()
    return bool(_PPG_NAME.match(s)) or s.lower() == "hart"


_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "v": 1e3, "nv": 1e-6}


def _unit_scale(path: StrPath, channel: str, unit: str | None) -> float:
    key = (unit or "").strip().lower()
    if key not in _UNIT_TO_MV:
        raise _err(path, f"ECG channel {channel!r} has units {unit!r}; expected mV, uV or V")
    return _UNIT_TO_MV[key]


def _derive_limb(ecg: np.ndarray, present: list[str]) -> list[str]:
    """Fill missing limb-lead rows of ``ecg`` in place from two recorded ones; return derived."""
    have = [n for n in LIMB if n in present]
    missing = [n for n in LIMB if n not in present]
    if len(have) < 2 or not missing:
        return []
    a, b = next(p for p in _PAIR_ORDER if p[0] in have and p[1] in have)
    if (a, b) == ("I", "II"):
        lead_i, lead_ii = ecg[LEAD_INDEX["I"]], ecg[LEAD_INDEX["II"]]
    else:
        # Solve [xa; xb] = M @ [I; II] for I and II (exact: the 2x2 matrix is well conditioned).
        m = np.array([_LIMB_COEF[a], _LIMB_COEF[b]])
        inv = np.linalg.inv(m)
        xa, xb = ecg[LEAD_INDEX[a]], ecg[LEAD_INDEX[b]]
        # Use the exact Einthoven forms where they exist so I/II/III stay bit-consistent.
        if (a, b) == ("I", "III"):
            lead_i, lead_ii = xa, xa + xb
        elif (a, b) == ("II", "III"):
            lead_i, lead_ii = xa - xb, xa
        else:
            lead_i = inv[0, 0] * xa + inv[0, 1] * xb
            lead_ii = inv[1, 0] * xa + inv[1, 1] * xb
    full = {
        "I": lead_i,
        "II": lead_ii,
        "III": lead_ii - lead_i,
        "aVR": -(lead_i + lead_ii) / 2,
        "aVL": lead_i - lead_ii / 2,
        "aVF": lead_ii - lead_i / 2,
    }
    for n in missing:
        ecg[LEAD_INDEX[n]] = full[n]
    return missing


def _check_fs(path: StrPath, fs: Any) -> float:  # anything: a non-number is an input error
    try:
        f = float(fs)
    except (TypeError, ValueError):
        raise _err(path, f"sampling frequency {fs!r} is not a number") from None
    if not math.isfinite(f) or f <= 0:
        raise _err(path, f"sampling frequency must be > 0 Hz, got {fs!r}")
    return f


def _check_signal(path: StrPath, name: str | None, x: np.ndarray) -> None:
    if x.size == 0:
        raise _err(path, f"signal {name!r} is empty")
    if not np.isfinite(x).any():
        raise _err(path, f"signal {name!r} has no valid samples (all NaN)")


def _build(
    path: StrPath,
    fs: object,
    ppg: npt.ArrayLike | None,
    ppg_name: str | None,
    leads: dict[str, np.ndarray],
    meta: dict[str, Any],
) -> Recording:
    """Common tail: validate, assemble the 12-row ECG, derive limb leads."""
    fs = _check_fs(path, fs)
    if ppg is None and not leads:
        raise _err(
            path,
            "no PPG channel and no ECG lead channel found"
            + (f" (channels: {', '.join(map(str, meta['channels']))})" if meta.get("channels") else ""),
        )
    if ppg is not None:
        ppg = np.asarray(ppg, dtype=np.float64).reshape(-1)
        ppg[~np.isfinite(ppg)] = np.nan
        _check_signal(path, ppg_name, ppg)
        meta["ppg_nan_fraction"] = float(np.isnan(ppg).mean())
    ecg = None
    present: list[str] = []
    if leads:
        lengths = {len(v) for v in leads.values()} | ({len(ppg)} if ppg is not None else set())
        if len(lengths) != 1:
            raise _err(path, f"signals have different lengths {sorted(lengths)}")
        t = lengths.pop()
        ecg = np.full((12, t), np.nan, dtype=np.float64)
        for name, x in leads.items():
            x = np.asarray(x, dtype=np.float64)
            x = np.where(np.isfinite(x), x, np.nan)
            _check_signal(path, name, x)
            ecg[LEAD_INDEX[name]] = x
            present.append(name)
        derived = _derive_limb(ecg, present)
        meta["ecg_recorded"] = tuple(n for n in LEADS if n in present)
        meta["ecg_derived"] = tuple(n for n in LEADS if n in derived)
        present += derived
        meta["ecg_nan_fraction"] = float(np.isnan(ecg[[LEAD_INDEX[n] for n in present]]).mean())
    return Recording(
        fs=fs,
        ppg=ppg,
        ecg=ecg,
        ecg_present=tuple(n for n in LEADS if n in present),
        source=str(path),
        meta=meta,
    )


def _exists(path: StrPath) -> Path:
    p = Path(path)
    if not p.exists():
        raise _err(path, "no such file")
    if p.is_dir():
        raise _err(path, "is a directory, expected a file")
    return p


# --------------------------------------------------------------------------- WFDB


def _wfdb_base(path: StrPath) -> Path:
    p = Path(path)
    if p.suffix.lower() in (".hea", ".dat"):
        p = p.with_suffix("")
    hea = p.with_name(p.name + ".hea")
    if not hea.exists():
        raise _err(path, f"no such WFDB header {hea.name!r}")
    return p


def read_wfdb(path: StrPath) -> Recording:
    """Read a WFDB record (``rec``, ``rec.hea`` or ``rec.dat``)."""
    import wfdb  # lazy: heavy dependency, needed only for WFDB files

    base = _wfdb_base(path)
    rec_name = str(base)
    try:
        header = wfdb.rdheader(rec_name)
    except Exception as e:  # noqa: BLE001 - any wfdb failure is a bad input file
        raise _err(path, f"cannot read WFDB header: {_one_line(e)}") from None
    multi = isinstance(header, wfdb.MultiRecord)
    if not multi:
        spf = [int(s or 1) for s in (header.samps_per_frame or [])]
        if any(s != 1 for s in spf):
            raise _err(
                path,
                "multi-frequency WFDB records (channels with different sampling "
                f"rates, samples per frame {spf}) are not supported yet",
            )
    try:
        rec = wfdb.rdrecord(rec_name, physical=True, m2s=True)
    except Exception as e:  # noqa: BLE001 - any wfdb failure is a bad input file
        if multi:
            raise _err(
                path,
                "multi-segment WFDB records are not supported yet when wfdb cannot "
                f"merge the segments ({_one_line(e)})",
            ) from None
        raise _err(path, f"cannot read WFDB record: {_one_line(e)}") from None
    if multi and any(int(s or 1) != 1 for s in (rec.samps_per_frame or [])):
        raise _err(
            path,
            "multi-segment WFDB records are not supported yet when channels have different sampling rates",
        )
    sig = rec.p_signal
    names = list(rec.sig_name or [])
    units = list(rec.units or [""] * len(names))
    if sig is None or sig.ndim != 2 or sig.shape[0] == 0 or not names:
        raise _err(path, "WFDB record holds no samples")

    meta: dict[str, Any] = {
        "format": "wfdb",
        "record": rec.record_name,
        "channels": names,
        "units": units,
        "multi_segment": multi,
    }
    ppg = None
    ppg_name = None
    leads: dict[str, np.ndarray] = {}
    unmapped = []
    for j, (name, unit) in enumerate(zip(names, units)):
        x = sig[:, j].astype(np.float64)
        if ppg is None and _is_ppg_label(name):
            ppg, ppg_name = x, name
            meta["ppg_channel"], meta["ppg_units"] = name, unit
            continue
        mapped = lead_from_label(name)
        if mapped is None or mapped[0] in leads:
            unmapped.append(name)
            continue
        lead, sign = mapped
        leads[lead] = sign * x * _unit_scale(path, name, unit)
        meta.setdefault("ecg_channels", {})[lead] = name
    meta["unmapped_channels"] = unmapped
    return _build(path, rec.fs, ppg, ppg_name, leads, meta)


# --------------------------------------------------------------------------- DICOM

# SCP-ECG lead codes (CodingSchemeDesignator SCPECG) used by DICOM 12-lead ECG objects.
_SCPECG = {
    "5.6.3-9-1": "I",
    "5.6.3-9-2": "II",
    "5.6.3-9-61": "III",
    "5.6.3-9-62": "aVR",
    "5.6.3-9-63": "aVL",
    "5.6.3-9-64": "aVF",
    "5.6.3-9-3": "V1",
    "5.6.3-9-4": "V2",
    "5.6.3-9-5": "V3",
    "5.6.3-9-6": "V4",
    "5.6.3-9-7": "V5",
    "5.6.3-9-8": "V6",
}


def _dicom_channel_lead(ch: Any) -> tuple[str | None, float, str]:  # a pydicom Dataset
    try:
        src = ch.ChannelSourceSequence[0]
    except (AttributeError, IndexError, KeyError):
        return None, 1.0, ""
    label = str(src.get("CodeMeaning", "") or "")
    mapped = lead_from_label(label)
    if mapped is not None:
        return mapped[0], mapped[1], label
    code = str(src.get("CodeValue", "") or "")
    if code in _SCPECG:
        return _SCPECG[code], 1.0, label or code
    return None, 1.0, label or code


def read_dicom(path: StrPath) -> Recording:
    """Read the first waveform group holding ECG leads from a DICOM waveform object."""
    import pydicom  # lazy: heavy dependency, needed only for DICOM files

    _exists(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # noqa: BLE001 - any pydicom failure is a bad input file
        raise _err(path, f"cannot read DICOM file: {_one_line(e)}") from None
    groups = ds.get("WaveformSequence")
    if not groups:
        raise _err(path, "DICOM file holds no waveform data (no WaveformSequence)")
    labels_seen: list[str] = []
    for gi, grp in enumerate(groups):
        chans = list(grp.get("ChannelDefinitionSequence") or [])
        info = [_dicom_channel_lead(c) for c in chans]
        labels_seen += [lab for _, _, lab in info]
        if not any(lead for lead, _, _ in info):
            continue
        try:
            fs = float(grp.SamplingFrequency)
            arr = ds.waveform_array(gi)  # (samples, channels), sensitivity already applied
        except Exception as e:  # noqa: BLE001 - any pydicom failure is a bad input file
            raise _err(path, f"cannot decode DICOM waveform group {gi}: {_one_line(e)}") from None
        if arr.ndim != 2 or arr.shape[1] != len(chans):
            raise _err(path, f"waveform group {gi} has shape {arr.shape} for {len(chans)} channels")
        leads: dict[str, np.ndarray] = {}
        ppg = ppg_name = None
        unmapped, units = [], []
        for j, (ch, (lead, sign, label)) in enumerate(zip(chans, info)):
            try:
                unit = str(ch.ChannelSensitivityUnitsSequence[0].CodeValue)
            except (AttributeError, IndexError, KeyError):
                unit = ""
            units.append(unit)
            if lead is None:
                if ppg is None and ("pleth" in label.lower() or "ppg" in label.lower()):
                    ppg, ppg_name = arr[:, j].astype(np.float64), label
                else:
                    unmapped.append(label)
                continue
            if lead in leads:
                unmapped.append(label)
                continue
            if "ChannelSensitivity" not in ch:
                raise _err(
                    path, f"ECG channel {label!r} has no ChannelSensitivity; cannot convert raw values to mV"
                )
            leads[lead] = sign * arr[:, j].astype(np.float64) * _unit_scale(path, label, unit)
        meta = {
            "format": "dicom",
            "sop_class": str(ds.get("SOPClassUID", "")),
            "waveform_group": gi,
            "group_label": str(grp.get("MultiplexGroupLabel", "")),
            "channels": [lab for _, _, lab in info],
            "units": units,
            "unmapped_channels": unmapped,
            "note": "pydicom waveform_array applies ChannelSensitivity*correction+baseline",
        }
        if ppg_name is not None:
            meta["ppg_channel"] = ppg_name
        return _build(path, fs, ppg, ppg_name, leads, meta)
    raise _err(
        path,
        "no ECG lead channels in any DICOM waveform group"
        + (f" (channels: {', '.join(labels_seen)})" if labels_seen else ""),
    )


# --------------------------------------------------------------------------- CSV

_TIME_S = {"time", "t", "timestamp", "time_s", "seconds", "sec", "time (s)"}
_TIME_MS = {"timer", "time_ms", "ms", "millis", "time (ms)"}
_TIME_DT = {"datetime", "date_time", "date"}


def _to_float(s: str) -> float:
    s = s.strip()
    if s == "" or s.lower() in ("nan", "na", "null", "none"):
        return math.nan
    return float(s)


def _sniff_delimiter(line: str) -> str | None:
    for d in (",", ";", "\t"):
        if d in line:
            return d
    return None  # whitespace


def _read_table(path: StrPath) -> tuple[list[str] | None, list[list[str]]]:
    p = _exists(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            lines = [ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    except UnicodeDecodeError:
        raise _err(path, "not a text CSV file (cannot decode as UTF-8)") from None
    except OSError as e:
        raise _err(path, f"cannot read file: {_one_line(e)}") from None
    if not lines:
        raise _err(path, "file is empty")
    delim = _sniff_delimiter(lines[0])
    if delim is None:
        rows = [ln.split() for ln in lines]
    else:
        try:
            rows = list(csv.reader(lines, delimiter=delim))
        except csv.Error as e:
            raise _err(path, f"malformed CSV: {_one_line(e)}") from None
    first = [c.strip() for c in rows[0]]
    try:
        [_to_float(c) for c in first]
        header = None
    except ValueError:
        header = [c.strip().strip('"').strip() for c in first]
        rows = rows[1:]
    if not rows:
        raise _err(path, "file has a header but no data rows")
    ncol = len(header) if header is not None else len(rows[0])
    for k, r in enumerate(rows):
        if len(r) != ncol and not (len(r) == ncol + 1 and r[-1].strip() == ""):
            line_no = k + (2 if header is not None else 1)
            raise _err(path, f"data row {line_no} has {len(r)} fields, expected {ncol}")
    return header, rows


def _numeric_column(path: StrPath, rows: list[list[str]], j: int, name: str) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float64)
    for k, r in enumerate(rows):
        try:
            out[k] = _to_float(r[j])
        except ValueError:
            raise _err(
                path, f"non-numeric value {r[j].strip()!r} in column {name!r} (data row {k + 1})"
            ) from None
    return out


def _time_seconds(path: StrPath, rows: list[list[str]], j: int, name: str) -> np.ndarray:
    key = name.lower()
    if key in _TIME_DT or (key in _TIME_S and not _looks_numeric(rows[0][j])):
        t = np.empty(len(rows), dtype=np.float64)
        t0 = None
        for k, r in enumerate(rows):
            try:
                d = datetime.fromisoformat(r[j].strip())
            except ValueError:
                raise _err(
                    path,
                    f"cannot parse time {r[j].strip()!r} in column {name!r} "
                    f"(data row {k + 1}); expected ISO date-time",
                ) from None
            t0 = d if t0 is None else t0
            t[k] = (d - t0).total_seconds()
        return t
    t = _numeric_column(path, rows, j, name)
    if np.isnan(t).any():
        raise _err(path, f"time column {name!r} has missing values")
    return t / 1000.0 if key in _TIME_MS else t


def _looks_numeric(s: str) -> bool:
    try:
        _to_float(s)
        return True
    except ValueError:
        return False


def _fs_from_time(path: StrPath, t: np.ndarray, name: str, fs_given: float | None) -> tuple[float, str]:
    if len(t) < 2:
        if fs_given is None:
            raise _err(path, "cannot infer fs from a single time stamp; pass fs")
        return fs_given, "given"
    dt = np.diff(t)
    if np.any(dt < 0):
        k = int(np.argmax(dt < 0)) + 1
        raise _err(path, f"time column {name!r} goes backwards at data row {k + 1}")
    med = float(np.median(dt))
    regular = med > 0 and float(np.max(np.abs(dt - med))) <= _REL_TOL * med
    span = float(t[-1] - t[0])
    mean_fs = (len(t) - 1) / span if span > 0 else math.nan
    if fs_given is not None:
        ref = 1.0 / med if regular else mean_fs
        if not math.isfinite(ref) or abs(fs_given - ref) > _REL_TOL * ref:
            raise _err(path, f"fs={fs_given:g} Hz disagrees with time column {name!r} (about {ref:.4g} Hz)")
        return fs_given, "given (checked against time column)"
    if not regular:
        raise _err(
            path,
            f"time column {name!r} is not regular within 1% (steps "
            f"{dt.min():.4g}..{dt.max():.4g} s, mean rate {mean_fs:.4g} Hz); "
            "pass fs to use a fixed rate",
        )
    return 1.0 / med, f"median step of {name!r}"


def read_csv(path: StrPath, fs: float | None = None, column: str | int | None = None) -> Recording:
    """Read PPG and/or ECG (mV) columns from a CSV/text file; see the module docstring."""
    if fs is not None:
        fs = _check_fs(path, fs)
    header, rows = _read_table(path)
    meta: dict[str, Any] = {"format": "csv", "channels": header}
    ppg: np.ndarray | None
    ppg_name: str | None

    if header is None:
        ncol = len(rows[0])
        if isinstance(column, int):
            j = column
        elif column is not None:
            raise _err(path, f"column {column!r} given but the file has no header row")
        elif ncol == 1:
            j = 0
        else:
            raise _err(
                path,
                f"{ncol} unnamed columns; add a header row (time, ppg, I, II, ...) or pass column=<index>",
            )
        if not 0 <= j < ncol:
            raise _err(path, f"column index {j} out of range (file has {ncol} columns)")
        if fs is None:
            raise _err(path, "single-column CSV without a time column: pass fs (Hz)")
        ppg = _numeric_column(path, rows, j, f"column {j}")
        meta.update(ppg_column=j, fs_source="given")
        return _build(path, fs, ppg, f"column {j}", {}, meta)

    lower = [h.lower() for h in header]
    dupes = {h for h in lower if lower.count(h) > 1 and h}
    if dupes:
        raise _err(path, f"duplicate column names {sorted(dupes)}")

    time_j = next((k for k, h in enumerate(lower) if h in _TIME_S | _TIME_MS | _TIME_DT), None)

    ppg_j = None
    if column is not None:
        if isinstance(column, int):
            ppg_j = column if 0 <= column < len(header) else None
        else:
            ppg_j = lower.index(str(column).lower()) if str(column).lower() in lower else None
        if ppg_j is None:
            raise _err(path, f"column {column!r} not found (columns: {', '.join(header)})")
    else:
        for exact in (True, False):
            for k, h in enumerate(header):
                if k == time_j:
                    continue
                if (exact and h.lower() in ("ppg", "pleth", "hart")) or (not exact and _is_ppg_label(h)):
                    ppg_j = k
                    break
            if ppg_j is not None:
                break

    lead_cols: dict[str, tuple[int, float]] = {}
    for k, h in enumerate(header):
        if k in (time_j, ppg_j):
            continue
        mapped = lead_from_label(h)
        if mapped and mapped[0] not in lead_cols:
            lead_cols[mapped[0]] = (k, mapped[1])

    if ppg_j is None and not lead_cols:
        others = [k for k in range(len(header)) if k != time_j]
        if len(others) == 1:  # e.g. heartpy's example files: 'hr' is the raw PPG
            ppg_j = others[0]
            meta["ppg_column_guessed"] = True
        else:
            raise _err(
                path,
                "no PPG column (ppg, pleth, hart) and no ECG lead column found "
                f"(columns: {', '.join(header)}); pass column=",
            )

    if time_j is not None:
        t = _time_seconds(path, rows, time_j, header[time_j])
        fs, how = _fs_from_time(path, t, header[time_j], fs)
        meta["time_column"] = header[time_j]
    elif fs is None:
        raise _err(path, "no time column (time, t, timestamp, timer, datetime): pass fs (Hz)")
    else:
        how = "given"
    meta["fs_source"] = how

    ppg = ppg_name = None
    if ppg_j is not None:
        ppg_name = header[ppg_j]
        ppg = _numeric_column(path, rows, ppg_j, ppg_name)
        meta["ppg_column"] = ppg_name
    leads = {lead: sign * _numeric_column(path, rows, k, header[k]) for lead, (k, sign) in lead_cols.items()}
    if leads:
        meta["ecg_columns"] = {lead: header[k] for lead, (k, _) in lead_cols.items()}
        meta["ecg_units"] = "mV (assumed)"
    return _build(path, fs, ppg, ppg_name, leads, meta)


# --------------------------------------------------------------------------- dispatch


def read_any(path: StrPath, fs: float | None = None) -> Recording:
    """Pick a reader from the file suffix (or a DICOM preamble / sibling ``.hea``).

    ``fs`` is needed only for CSVs without a time column; for WFDB/DICOM it must match
    the file's own rate (within 1 %) if given.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".hea", ".dat") or (not p.exists() and p.with_name(p.name + ".hea").exists()):
        rec = read_wfdb(path)
    elif suffix in (".dcm", ".dicom") or _has_dicom_preamble(p):
        rec = read_dicom(path)
    elif suffix in (".csv", ".txt", ".tsv"):
        return read_csv(path, fs=fs)
    elif not p.exists():
        raise _err(path, "no such file")
    else:
        raise _err(
            path,
            f"unknown file type {suffix or '(no suffix)'!r}: expected a WFDB record "
            "(.hea/.dat), DICOM (.dcm) or CSV (.csv/.txt)",
        )
    if fs is not None:
        fs = _check_fs(path, fs)
        if abs(fs - rec.fs) > _REL_TOL * rec.fs:
            raise _err(path, f"fs={fs:g} Hz disagrees with the file's {rec.fs:g} Hz")
    return rec


def _has_dicom_preamble(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"
