"""Clinical ECG-paper rendering to PNG (matplotlib, Agg, no pyplot global state).

Everything is drawn in millimetres of paper: one axes spans the whole figure, its data
coordinates are millimetres, and the figure size is computed from the millimetre layout, so
at any ``dpi`` one millimetre of paper is exactly ``dpi / 25.4`` pixels in the PNG.

Scale is the clinical one: 25 mm/s and 10 mm/mV.  Grid: 1 mm minor lines (light pink),
5 mm major lines (darker red).

Layout, top to bottom (all constants in mm, exposed for tests and callers)::

    HEADER_MM                      title / subtitle / scale text, legend
    3 x ROW_MM                     I aVR V1 V4 | II aVL V2 V5 | III aVF V3 V6
    ROW_MM                         rhythm strip (full length of ``rhythm_lead``)
    ROW_MM  (only with ``ppg``)    PPG, min-max scaled to PPG_HEIGHT_MM
    FOOTER_MM                      disclaimer

Left to right: MARGIN_LEFT_MM, CAL_MM (1 mV x 200 ms calibration pulse), the trace
(duration x 25 mm), MARGIN_RIGHT_MM.  See :func:`paper_size_mm`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from p2es.errors import P2esError
from p2es.leads import LEAD_INDEX, LEADS

# --- physical scale -------------------------------------------------------------------------
MM_PER_S: float = 25.0
MM_PER_MV: float = 10.0
MM_PER_INCH: float = 25.4

# --- layout (mm) ----------------------------------------------------------------------------
MARGIN_LEFT_MM: float = 5.0
CAL_MM: float = 10.0  # calibration pulse area before the traces
MARGIN_RIGHT_MM: float = 5.0
HEADER_MM: float = 20.0
FOOTER_MM: float = 10.0
ROW_MM: float = 30.0  # row spacing: +-1.5 mV around the baseline
PPG_HEIGHT_MM: float = 20.0  # PPG min-max scaled to this height
TRACE_X0_MM: float = MARGIN_LEFT_MM + CAL_MM

#: 3 x 4 standard layout: rows of lead names, column c shows time [c*D/4, (c+1)*D/4).
LAYOUT_3X4: tuple[tuple[str, ...], ...] = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)

# --- style ----------------------------------------------------------------------------------
GRID_MINOR_COLOR = "#f6c6c6"
GRID_MAJOR_COLOR = "#e07a7a"
GRID_MINOR_LW = 0.35  # points
GRID_MAJOR_LW = 0.8
TRACE_COLOR = "black"
RECON_COLOR = "#1f4fd1"
BAND_ALPHA = 0.25
TRACE_LW = 0.8

DEFAULT_DISCLAIMER = "Not a diagnostic ECG"


# ============================================================================================
# geometry helpers
# ============================================================================================
def mm_to_px(mm: float, dpi: float) -> float:
    """Pixels in the PNG for ``mm`` millimetres of paper at ``dpi``."""
    return mm * dpi / MM_PER_INCH


def trace_width_mm(duration_s: float) -> float:
    """Width of the full-length trace (rhythm strip) in mm: ``duration * 25``."""
    return duration_s * MM_PER_S


def paper_size_mm(duration_s: float, with_ppg: bool = False) -> tuple[float, float]:
    """(width, height) of the whole figure in mm for a record of ``duration_s`` seconds."""
    width = MARGIN_LEFT_MM + CAL_MM + trace_width_mm(duration_s) + MARGIN_RIGHT_MM
    n_rows = 4 + (1 if with_ppg else 0)
    height = HEADER_MM + n_rows * ROW_MM + FOOTER_MM
    return width, height


def row_baseline_mm(row: int, height_mm: float) -> float:
    """y (mm) of the 0 mV baseline of layout row ``row`` (0 = top row)."""
    return height_mm - HEADER_MM - (row + 0.5) * ROW_MM


def _t_to_x(t_s: np.ndarray | float) -> np.ndarray | float:
    return TRACE_X0_MM + np.asarray(t_s, dtype=np.float64) * MM_PER_S


# ============================================================================================
# validation
# ============================================================================================
def _as_ecg(x: Any, name: str, n_samples: int | None = None) -> np.ndarray:
    """A [12, T] float64 array; NaN allowed (gap), inf is not."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise P2esError(f"{name} is not numeric: {exc}") from None
    if a.ndim != 2 or a.shape[0] != len(LEADS):
        raise P2esError(f"{name} must have shape [12, T], got {list(a.shape)}")
    if a.shape[1] < 2:
        raise P2esError(f"{name} needs at least 2 samples, got {a.shape[1]}")
    if n_samples is not None and a.shape[1] != n_samples:
        raise P2esError(f"{name} has {a.shape[1]} samples, ecg has {n_samples}")
    if np.isinf(a).any():
        raise P2esError(f"{name} contains infinite values (NaN gaps are allowed)")
    return a


def _validate(
    ecg: Any,
    fs: Any,
    ppg: Any,
    reference: Any,
    band: Any,
    rhythm_lead: str,
    dpi: Any,
) -> tuple[np.ndarray, float, np.ndarray | None, np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    e = _as_ecg(ecg, "ecg")
    n = e.shape[1]
    try:
        f = float(fs)
    except (TypeError, ValueError):
        raise P2esError(f"fs must be a number, got {fs!r}") from None
    if not np.isfinite(f) or f <= 0:
        raise P2esError(f"fs must be > 0, got {fs!r}")
    if rhythm_lead not in LEAD_INDEX:
        raise P2esError(f"unknown rhythm_lead {rhythm_lead!r}; expected one of {', '.join(LEADS)}")
    try:
        dpi_ok = float(dpi) > 0
    except (TypeError, ValueError):
        dpi_ok = False
    if not dpi_ok:
        raise P2esError(f"dpi must be > 0, got {dpi!r}")
    p = None
    if ppg is not None:
        try:
            p = np.asarray(ppg, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise P2esError(f"ppg is not numeric: {exc}") from None
        if p.ndim != 1 or p.shape[0] != n:
            raise P2esError(f"ppg must have shape [{n}], got {list(p.shape)}")
        if np.isinf(p).any():
            raise P2esError("ppg contains infinite values (NaN gaps are allowed)")
    r = None if reference is None else _as_ecg(reference, "reference", n)
    b = None
    if band is not None:
        if not isinstance(band, (tuple, list)) or len(band) != 2:
            raise P2esError("band must be a (lower, upper) pair of [12, T] arrays")
        b = (_as_ecg(band[0], "band lower", n), _as_ecg(band[1], "band upper", n))
    return e, f, p, r, b


# ============================================================================================
# drawing pieces
# ============================================================================================
def _draw_grid(ax: Axes, x0: float, x1: float, y0: float, y1: float) -> None:
    """ECG paper: a line every mm, darker every 5 mm, drawn as two LineCollections."""
    xs = np.arange(np.ceil(x0), np.floor(x1) + 1)
    ys = np.arange(np.ceil(y0), np.floor(y1) + 1)
    for major in (False, True):
        xsel = xs[(np.round(xs) % 5 == 0) == major]
        ysel = ys[(np.round(ys) % 5 == 0) == major]
        segs = [((x, y0), (x, y1)) for x in xsel] + [((x0, y), (x1, y)) for y in ysel]
        ax.add_collection(
            LineCollection(
                segs,
                colors=GRID_MAJOR_COLOR if major else GRID_MINOR_COLOR,
                linewidths=GRID_MAJOR_LW if major else GRID_MINOR_LW,
                zorder=1 if major else 0,
                antialiaseds=True,
            )
        )


def _draw_calibration(ax: Axes, baseline: float) -> None:
    """A 1 mV x 200 ms (10 mm x 5 mm) pulse in the CAL_MM area left of the traces."""
    a = MARGIN_LEFT_MM + 1.0
    b = a + 0.2 * MM_PER_S
    xs = [MARGIN_LEFT_MM, a, a, b, b, TRACE_X0_MM - 1.5]
    ys = [baseline, baseline, baseline + MM_PER_MV, baseline + MM_PER_MV, baseline, baseline]
    ax.plot(xs, ys, color=TRACE_COLOR, lw=TRACE_LW, zorder=4, solid_joinstyle="miter")


def _clip_rect(ax: Axes, baseline: float, half: float = ROW_MM / 2) -> Rectangle:
    """Row band used to clip traces so an artefact cannot paint over neighbouring rows."""
    return Rectangle((0, baseline - half), 1e6, 2 * half, transform=ax.transData)


def _draw_segment(
    ax: Axes,
    t: np.ndarray,
    baseline: float,
    ecg: np.ndarray,
    reference: np.ndarray | None,
    band: tuple[np.ndarray, np.ndarray] | None,
) -> None:
    """One lead over one time window; all arrays already cut to the window (1-D, mV)."""
    x = _t_to_x(t)
    clip = _clip_rect(ax, baseline)
    if band is not None:
        poly = ax.fill_between(
            x,
            baseline + band[0] * MM_PER_MV,
            baseline + band[1] * MM_PER_MV,
            color=RECON_COLOR,
            alpha=BAND_ALPHA,
            lw=0,
            zorder=2,
        )
        poly.set_clip_path(clip)
    if reference is not None:
        (ln,) = ax.plot(x, baseline + reference * MM_PER_MV, color=TRACE_COLOR, lw=TRACE_LW, zorder=3)
        ln.set_clip_path(clip)
    color = RECON_COLOR if reference is not None else TRACE_COLOR
    (ln,) = ax.plot(x, baseline + ecg * MM_PER_MV, color=color, lw=TRACE_LW, zorder=4)
    ln.set_clip_path(clip)


def _label(ax: Axes, x: float, baseline: float, text: str) -> None:
    ax.text(
        x + 1.0,
        baseline + ROW_MM / 2 - 1.5,
        text,
        fontsize=8,
        fontweight="bold",
        ha="left",
        va="top",
        zorder=6,
    )


def _draw_ppg(ax: Axes, t: np.ndarray, ppg: np.ndarray, row_bottom: float) -> None:
    """PPG min-max scaled to PPG_HEIGHT_MM, centred in its row."""
    y0 = row_bottom + (ROW_MM - PPG_HEIGHT_MM) / 2
    finite = ppg[np.isfinite(ppg)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        scaled = (ppg - lo) / (hi - lo) if hi > lo else np.full_like(ppg, 0.5)
    else:
        scaled = ppg
    (ln,) = ax.plot(_t_to_x(t), y0 + scaled * PPG_HEIGHT_MM, color="#2a7a2a", lw=TRACE_LW, zorder=4)
    ln.set_clip_path(Rectangle((0, row_bottom), 1e6, ROW_MM, transform=ax.transData))
    ax.text(
        TRACE_X0_MM + 1.0,
        row_bottom + ROW_MM - 1.5,
        "PPG (a.u.)",
        fontsize=8,
        fontweight="bold",
        ha="left",
        va="top",
        zorder=6,
    )


# ============================================================================================
# public API
# ============================================================================================
def plot_ecg_paper(
    ecg: np.ndarray,
    fs: float,
    out: str | Path,
    *,
    ppg: np.ndarray | None = None,
    title: str = "",
    subtitle: str = "",
    reference: np.ndarray | None = None,
    band: tuple[np.ndarray, np.ndarray] | None = None,
    rhythm_lead: str = "II",
    dpi: int = 150,
    disclaimer: str | None = DEFAULT_DISCLAIMER,
) -> Path:
    """Render a 12-lead ECG on clinical ECG paper and save it as a PNG.

    Args:
        ecg: [12, T] in mV, leads in :data:`p2es.leads.LEADS` order. NaN is drawn as a gap.
        fs: sampling rate in Hz (> 0).
        out: PNG path; its parent directory is created.
        ppg: optional [T] PPG, drawn min-max scaled in a strip under the rhythm strip.
        title, subtitle: header lines.
        reference: optional [12, T] true ECG; drawn in black with ``ecg`` in blue on top,
            with a "true" / "reconstructed" legend.
        band: optional (lower, upper), each [12, T] mV: translucent uncertainty band.
        rhythm_lead: lead of the full-length rhythm strip (default "II").
        dpi: output resolution; 1 mm of paper is ``dpi / 25.4`` px.
        disclaimer: footer text; ``None`` leaves the footer empty.

    Returns:
        The path of the written PNG.

    Raises:
        P2esError: bad shapes, infinite values, fs <= 0, unknown rhythm lead.
    """
    e, f, p, ref, b = _validate(ecg, fs, ppg, reference, band, rhythm_lead, dpi)
    n = e.shape[1]
    duration = n / f
    t = np.arange(n) / f
    width, height = paper_size_mm(duration, with_ppg=p is not None)

    fig = Figure(figsize=(width / MM_PER_INCH, height / MM_PER_INCH), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0.0, width)
    ax.set_ylim(0.0, height)
    ax.set_aspect("equal", adjustable="box")
    ax.set_axis_off()

    _draw_grid(ax, 0.0, width, FOOTER_MM, height - HEADER_MM)

    # 3 x 4 block: column c shows its own quarter of the record.
    bounds = [(c * n) // 4 for c in range(5)]
    for r, row in enumerate(LAYOUT_3X4):
        base = row_baseline_mm(r, height)
        _draw_calibration(ax, base)
        for c, lead in enumerate(row):
            i0, i1 = bounds[c], bounds[c + 1]
            if i1 <= i0:
                continue
            k = LEAD_INDEX[lead]
            sl = slice(i0, i1)
            _draw_segment(
                ax,
                t[sl],
                base,
                e[k, sl],
                None if ref is None else ref[k, sl],
                None if b is None else (b[0][k, sl], b[1][k, sl]),
            )
            x_start = float(_t_to_x(i0 / f))
            _label(ax, x_start, base, lead)
            if c > 0:  # short separator between columns
                ax.plot(
                    [x_start, x_start], [base - 3.0, base + 3.0], color=TRACE_COLOR, lw=TRACE_LW, zorder=5
                )

    # rhythm strip
    base = row_baseline_mm(3, height)
    _draw_calibration(ax, base)
    k = LEAD_INDEX[rhythm_lead]
    _draw_segment(
        ax, t, base, e[k], None if ref is None else ref[k], None if b is None else (b[0][k], b[1][k])
    )
    _label(ax, TRACE_X0_MM, base, rhythm_lead)

    if p is not None:
        _draw_ppg(ax, t, p, row_bottom=height - HEADER_MM - 5 * ROW_MM)

    # header
    top = height - 4.0
    if title:
        ax.text(MARGIN_LEFT_MM, top, title, fontsize=10, fontweight="bold", ha="left", va="top")
    if subtitle:
        ax.text(MARGIN_LEFT_MM, top - 5.5, subtitle, fontsize=8, ha="left", va="top")
    ax.text(
        MARGIN_LEFT_MM,
        top - 10.5,
        f"25 mm/s   10 mm/mV   fs {f:g} Hz",
        fontsize=8,
        ha="left",
        va="top",
        color="#444444",
    )
    handles: list[Any] = []
    if ref is not None:
        handles += [
            Line2D([], [], color=TRACE_COLOR, lw=1.2, label="true"),
            Line2D([], [], color=RECON_COLOR, lw=1.2, label="reconstructed"),
        ]
    if b is not None:
        handles.append(Patch(facecolor=RECON_COLOR, alpha=BAND_ALPHA, label="uncertainty"))
    if handles:
        ax.legend(
            handles=handles,
            loc="upper right",
            ncol=len(handles),
            fontsize=7,
            frameon=False,
            bbox_to_anchor=(width - MARGIN_RIGHT_MM, height - 1.0),
            bbox_transform=ax.transData,
            borderaxespad=0.0,
            handlelength=1.8,
        )

    if disclaimer:
        ax.text(
            MARGIN_LEFT_MM,
            FOOTER_MM / 2,
            disclaimer,
            fontsize=7,
            style="italic",
            ha="left",
            va="center",
            color="#444444",
        )

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="white", format="png")
    return path


_SEX = {0: "F", 1: "M"}


def _fmt_num(v: Any) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{x:g}" if not x.is_integer() else str(int(x))


def record_header(data: dict[str, Any], index: int) -> tuple[str, str]:
    """Title and subtitle for record ``index`` of a loaded simulator ``.npz`` dict, e.g.
    ("record 3 · subject 12 · af", "age 64 · F · 171 cm · 80 kg").  Missing metadata is skipped."""
    n = int(np.shape(data["ecg"])[0]) if "ecg" in data else -1

    def meta(key: str) -> Any | None:
        v = data.get(key)
        if v is None or np.ndim(v) == 0 or len(v) != n:
            return None
        return v[index]

    title_parts = [f"record {index}"]
    if (s := meta("subject")) is not None:
        title_parts.append(f"subject {_fmt_num(s)}")
    if (r := meta("rhythm")) is not None:
        title_parts.append(str(r))
    sub_parts = []
    if (a := meta("age")) is not None:
        sub_parts.append(f"age {float(a):.0f}")
    if (sx := meta("sex")) is not None:
        try:
            sub_parts.append(_SEX.get(int(sx), "?"))
        except (TypeError, ValueError):
            sub_parts.append(str(sx))
    if (h := meta("height_cm")) is not None and (w := meta("weight_kg")) is not None:
        sub_parts.append(f"{float(h):.0f} cm · {float(w):.0f} kg")
    return " · ".join(title_parts), " · ".join(sub_parts)


def plot_record_npz(path: str | Path, index: int, out: str | Path, **kw: Any) -> Path:
    """Plot record ``index`` of a simulator ``.npz`` (keys ecg [N,12,T], fs, optional ppg
    [N,T], rhythm, age, sex (0=F, 1=M), subject).  ``kw`` goes to :func:`plot_ecg_paper`
    and may override ``title``/``subtitle``/``ppg``.

    Raises:
        P2esError: missing/unreadable file, missing ``ecg``/``fs``, index out of range.
    """
    p = Path(path)
    if not p.is_file():
        raise P2esError(f"no such file: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any read failure becomes one line
        raise P2esError(f"cannot read {p}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    missing = [k for k in ("ecg", "fs") if k not in data]
    if missing:
        raise P2esError(f"{p} lacks key(s) {', '.join(missing)}")
    ecg = data["ecg"]
    if ecg.ndim != 3:
        raise P2esError(f"{p}: ecg must have shape [N, 12, T], got {list(ecg.shape)}")
    n = ecg.shape[0]
    try:
        i = int(index)
    except (TypeError, ValueError):
        raise P2esError(f"record index must be an integer, got {index!r}") from None
    if not 0 <= i < n:
        raise P2esError(f"record index {index} out of range: {p} holds {n} record(s)")
    try:
        fs = float(np.asarray(data["fs"]).reshape(-1)[0])
    except (IndexError, TypeError, ValueError):
        raise P2esError(f"{p}: fs is not a number: {data['fs']!r}") from None

    title, subtitle = record_header(data, i)
    kw.setdefault("title", title)
    kw.setdefault("subtitle", subtitle)
    if "ppg" not in kw and "ppg" in data and np.ndim(data["ppg"]) == 2 and data["ppg"].shape[0] == n:
        kw["ppg"] = data["ppg"][i]
    return plot_ecg_paper(ecg[i], fs, out, **kw)
