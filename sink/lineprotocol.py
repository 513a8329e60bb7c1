"""InfluxDB line protocol: one serializer for every InfluxDB version p2es writes to.

Line protocol (1.x ``/write``, 2.x/3.x ``/api/v2/write``)::

    measurement[,tag=value...] field=value[,field=value...] [timestamp_ns]

Escaping (checked against a real InfluxDB 1.6.7):

* measurement: ``,`` and space are escaped with a backslash;
* tag keys, tag values, field keys: ``,``, space and ``=`` are escaped;
* string field values are double-quoted, with ``"`` and ``\\`` escaped; the spec allows no line
  break inside a value, so a newline / carriage return is stored as the two characters
  ``\\n`` / ``\\r`` (every point is exactly one line, which the Writer relies on when it
  splits text into batches);
* a backslash in a name or tag value is written as is when it cannot be read as an escape.
  A name/tag value with a backslash *before* ``,``, space, ``=`` or another backslash, or at
  the end, has no unambiguous spelling (InfluxDB versions disagree on ``\\\\``), and one with a
  newline or carriage return none at all: those raise :class:`ValueError` rather than write a
  different name.  A measurement may not start with ``#`` (the line would be a comment).

Fields: ``bool`` -> ``true``/``false``; ``int`` (and numpy integers) -> ``<n>i``; ``float`` ->
the shortest text that reads back to the same double (``repr``); ``str`` -> quoted.  NaN,
±inf and ``None`` fields are *omitted* (InfluxDB cannot store them); a point left without a
field produces no line at all.  Tags are sorted by key (the order InfluxDB stores them in);
an empty or ``None`` tag value omits the tag.  Timestamps are integer nanoseconds.

The hot path (:func:`ecg_lines`, :func:`ppg_lines`) formats a whole window with one C-level
``%`` operation instead of one Python call per point.  Float arrays are written losslessly for
their dtype: float32/float16 with ``%.9g`` (always reads back to the identical float32), float64
with ``%.17g`` (reads back to the identical double; not always the shortest text, but 1.4x
faster than ``repr``), unless ``digits`` asks for fewer significant digits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Integral, Real
from typing import Any

import numpy as np

from p2es.contracts.influx import ALERTS, ECG, PPG, VITALS

__all__ = [
    "Point",
    "escape_measurement",
    "escape_key",
    "escape_tag_value",
    "escape_field_key",
    "format_string",
    "format_field_value",
    "line",
    "to_lines",
    "sample_times_ns",
    "ecg_lines",
    "ppg_lines",
    "vitals_line",
    "alert_line",
    "ECG_MEASUREMENT",
    "PPG_MEASUREMENT",
    "VITALS_MEASUREMENT",
    "ALERTS_MEASUREMENT",
]

ECG_MEASUREMENT = ECG.name
PPG_MEASUREMENT = PPG.name
VITALS_MEASUREMENT = VITALS.name
ALERTS_MEASUREMENT = ALERTS.name

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_MEAS_ESC = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESC = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\="})
_STR_ESC = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\\\n", "\r": "\\\\r"})
_AFTER_BACKSLASH_BAD = frozenset(",= \\")


def _check_name(s: Any, what: str) -> str:
    if not isinstance(s, str):
        raise TypeError(f"{what} must be a str, not {type(s).__name__}")
    if not s:
        raise ValueError(f"{what} must not be empty")
    if "\n" in s or "\r" in s:
        raise ValueError(f"{what} {s!r} contains a line break; line protocol cannot carry it")
    if "\\" in s:
        i = s.find("\\")
        while i != -1:
            if i + 1 == len(s) or s[i + 1] in _AFTER_BACKSLASH_BAD:
                raise ValueError(
                    f"{what} {s!r} has a backslash at its end or before ',', ' ', '=' or '\\'; "
                    "line protocol has no unambiguous spelling for it"
                )
            i = s.find("\\", i + 1)
    return s


def escape_measurement(name: str) -> str:
    """Escape a measurement name (``,`` and space)."""
    _check_name(name, "measurement")
    if name.startswith("#"):
        raise ValueError(f"measurement {name!r} starts with '#': the line would be a comment")
    return name.translate(_MEAS_ESC)


def escape_key(key: str, what: str = "key") -> str:
    """Escape a tag key, tag value or field key (``,``, space and ``=``)."""
    return _check_name(key, what).translate(_KEY_ESC)


def escape_tag_value(value: str) -> str:
    return escape_key(value, "tag value")


def escape_field_key(key: str) -> str:
    return escape_key(key, "field key")


def format_string(value: str) -> str:
    """A string field value: double-quoted, ``"`` and ``\\`` escaped, line breaks as ``\\n``."""
    return '"' + value.translate(_STR_ESC) + '"'


def format_field_value(value: Any) -> str | None:
    """Text of one field value, or ``None`` when the field must be omitted (NaN, inf, None)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, Integral):  # int, numpy integers
        v = int(value)
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise ValueError(f"integer field value {v} does not fit in int64")
        return f"{v}i"
    if isinstance(value, float):  # also numpy.float64
        return repr(float(value)) if math.isfinite(value) else None
    if isinstance(value, (np.floating, Real)):
        fv = float(value)
        return repr(fv) if math.isfinite(fv) else None
    if isinstance(value, str):
        return format_string(value)
    raise TypeError(f"unsupported field value type {type(value).__name__}: {value!r}")


def _format_time(time_ns: Any) -> str:
    if isinstance(time_ns, (bool, np.bool_)) or not isinstance(time_ns, Integral):
        raise TypeError(f"timestamp must be integer nanoseconds, not {type(time_ns).__name__}")
    v = int(time_ns)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError(f"timestamp {v} ns is outside int64")
    return str(v)


def _tag_text(tags: Mapping[str, Any] | None) -> str:
    if not tags:
        return ""
    parts = []
    for k in sorted(tags):
        v = tags[k]
        if v is None or v == "":
            continue
        parts.append(f",{escape_key(k, 'tag key')}={escape_tag_value(str(v))}")
    return "".join(parts)


def line(
    measurement: str, tags: Mapping[str, Any] | None, fields: Mapping[str, Any], time_ns: int | None = None
) -> str:
    """One line of line protocol *without* the trailing newline; ``""`` if no field is writable."""
    fparts = []
    for k, v in fields.items():
        text = format_field_value(v)
        if text is not None:
            fparts.append(f"{escape_field_key(k)}={text}")
    if not fparts:
        return ""
    head = escape_measurement(measurement) + _tag_text(tags)
    out = f"{head} {','.join(fparts)}"
    if time_ns is not None:
        out += " " + _format_time(time_ns)
    return out


@dataclass(frozen=True, slots=True)
class Point:
    """A point to serialise; ``Writer.put`` accepts these next to ready-made lines."""

    measurement: str
    fields: Mapping[str, Any]
    tags: Mapping[str, Any] = field(default_factory=dict)
    time_ns: int | None = None

    def to_line(self) -> str:
        return line(self.measurement, self.tags, self.fields, self.time_ns)


def to_lines(data: str | bytes | Point | Iterable[str | bytes | Point]) -> str:
    """Normalise what ``Writer.put`` accepts to newline-terminated line-protocol text.

    A ``str``/``bytes`` is taken as ready-made line protocol (one or more lines); empty lines
    are kept out.  Iterables may mix lines and :class:`Point` objects.
    """
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    if isinstance(data, str):
        if not data:
            return ""
        if "\n\n" in data or data[0] == "\n":
            data = "\n".join(ln for ln in data.split("\n") if ln)
            if not data:
                return ""
        return data if data.endswith("\n") else data + "\n"
    if isinstance(data, Point):
        ln = data.to_line()
        return ln + "\n" if ln else ""
    parts = []
    for item in data:
        if isinstance(item, Point):
            ln = item.to_line()
        elif isinstance(item, bytes):
            ln = item.decode("utf-8")
        elif isinstance(item, str):
            ln = item
        else:
            raise TypeError(f"cannot write a {type(item).__name__}; give line-protocol str or Point")
        ln = ln.rstrip("\n")
        if ln:
            parts.append(ln)
    return "\n".join(parts) + "\n" if parts else ""


# ----------------------------------------------------------------------------- hot path


def sample_times_ns(t0_ns: int, fs: float, n: int, start: int = 0) -> np.ndarray:
    """Integer-ns timestamps of samples ``start .. start+n-1`` at ``fs`` Hz:
    ``t0_ns + round(i·1e9/fs)``.

    Exact integer arithmetic (no float drift over long records); ``fs`` is taken as a fraction
    with a denominator of at most 10⁶ (``128`` -> 7 812 500 ns steps exactly).  Keeping one
    ``t0_ns`` per stream and passing the sample index as ``start`` puts every chunk of a stream
    on the same grid, so a sample written again (overlapping windows, replays) overwrites the
    old point instead of landing a few ns beside it.
    """
    t0 = int(_format_time(t0_ns))
    if not (isinstance(fs, Real) and math.isfinite(float(fs)) and float(fs) > 0):
        raise ValueError(f"sampling rate must be a positive finite number, got {fs!r}")
    period = Fraction(10**9) / Fraction(float(fs)).limit_denominator(10**6)
    num, den = period.numerator, period.denominator
    start = int(start)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    last = start + n - 1
    if 2 * last * num + den < 2**62 and abs(t0) < 2**62:
        i = np.arange(start, last + 1, dtype=np.int64)
        off = (2 * i * num + den) // (2 * den)
        return off + np.int64(t0)
    return np.array([t0 + (2 * i * num + den) // (2 * den) for i in range(start, last + 1)], dtype=np.int64)


def _value_spec(arr: np.ndarray, digits: int | None) -> str:
    if digits is not None:
        if not 1 <= int(digits) <= 17:
            raise ValueError("digits must be in 1..17")
        return f"%.{int(digits)}g"
    if arr.dtype.itemsize <= 4:  # float32 / float16: 9 significant digits round-trip float32
        return "%.9g"
    return "%.17g"  # 17 significant digits round-trip any double


def _as_float_array(x: Any, ndim: int, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{what} must be numeric, got dtype {a.dtype}")
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    elif a.dtype.itemsize > 8:
        a = a.astype(np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimension(s), got shape {a.shape}")
    return a


def _columns_lines(prefix: str, names: tuple[str, ...], cols: np.ndarray, t_ns: np.ndarray, spec: str) -> str:
    """Lines ``prefix name0=v,name1=v,... t`` for columns ``cols`` [n_fields, N]."""
    n_fields, n = cols.shape
    if n == 0:
        return ""
    keys = [escape_field_key(k) for k in names]
    if bool(np.isfinite(cols).all()):
        # One format string for the whole block, applied once: no per-point Python call.
        fmt_line = (
            prefix.replace("%", "%%")
            + " "
            + ",".join(f"{k.replace('%', '%%')}={spec}" for k in keys)
            + " %d\n"
        )
        flat = np.empty((n, n_fields + 1), dtype=object)
        flat[:, :n_fields] = cols.T
        flat[:, n_fields] = t_ns.tolist()
        block: str = (fmt_line * n) % tuple(flat.ravel().tolist())
        return block
    # Some samples are NaN/inf: omit those fields, and the point when none is left.
    finite = np.isfinite(cols)
    vals = cols.T.tolist()
    ok = finite.T.tolist()
    out = []
    for row, mask, t in zip(vals, ok, t_ns.tolist()):
        parts = [f"{k}={spec % v}" for k, v, m in zip(keys, row, mask) if m]
        if parts:
            out.append(f"{prefix} {','.join(parts)} {t}\n")
    return "".join(out)


def ecg_lines(
    patient: str,
    t0_ns: int,
    fs: float,
    ecg: Any,
    *,
    start: int = 0,
    digits: int | None = None,
    measurement: str = ECG_MEASUREMENT,
) -> str:
    """Line protocol for a 12-lead ECG block ``ecg`` [12, N] (mV), one point per sample.

    Point ``i`` is stamped ``t0_ns + round((start+i)·1e9/fs)`` (see :func:`sample_times_ns`), tagged
    ``patient`` and carries the fields ``I, II, III, aVR, aVL, aVF, V1..V6``.  Non-finite
    samples are left out of their point.  Returns newline-terminated text (``""`` if N = 0).
    """
    a = _as_float_array(ecg, 2, "ecg")
    if a.shape[0] != len(ECG.fields):
        raise ValueError(f"ecg must be [12, N] in the order {', '.join(ECG.fields)}; got shape {a.shape}")
    prefix = escape_measurement(measurement) + _tag_text({"patient": patient})
    t = sample_times_ns(t0_ns, fs, a.shape[1], start)
    return _columns_lines(prefix, ECG.fields, a, t, _value_spec(a, digits))


def ppg_lines(
    patient: str,
    t0_ns: int,
    fs: float,
    ppg: Any,
    *,
    start: int = 0,
    digits: int | None = None,
    measurement: str = PPG_MEASUREMENT,
) -> str:
    """Line protocol for a PPG block ``ppg`` [N]: measurement ``ppg``, field ``value``."""
    a = _as_float_array(ppg, 1, "ppg")
    prefix = escape_measurement(measurement) + _tag_text({"patient": patient})
    t = sample_times_ns(t0_ns, fs, a.shape[0], start)
    return _columns_lines(prefix, PPG.fields, a[None, :], t, _value_spec(a, digits))


def vitals_line(patient: str, time_ns: int, fields: Mapping[str, Any] | None = None, /, **more: Any) -> str:
    """One ``vitals`` point (newline-terminated, or ``""`` when every value is NaN/None).

    Numbers are always written as floats (an ``int`` heart rate would otherwise create an
    integer field and make later float writes fail with a type conflict); NaN fields are
    omitted.  Fields: :data:`p2es.contracts.influx.VITALS` (undeclared ones are refused).
    """
    vals = dict(fields or {})
    vals.update(more)
    clean: dict[str, Any] = {}
    for k, v in vals.items():
        if v is None:
            continue
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (Real, np.number)):
            raise TypeError(f"vitals field {k!r} must be a number, not {type(v).__name__}")
        clean[k] = float(v)
    VITALS.check_fields(clean)
    ln = line(VITALS_MEASUREMENT, {"patient": patient}, clean, time_ns)
    return ln + "\n" if ln else ""


def alert_line(
    patient: str,
    rule: str,
    priority: str,
    time_ns: int,
    *,
    state: str,
    value: float | None = None,
    message: str = "",
) -> str:
    """One ``alerts`` point: tags ``patient, rule, priority``; fields ``state, value, message``."""
    f: dict[str, Any] = {"state": str(state), "message": str(message)}
    if value is not None:
        f["value"] = float(value)
    ln = line(ALERTS_MEASUREMENT, {"patient": patient, "rule": rule, "priority": priority}, f, time_ns)
    return ln + "\n" if ln else ""
