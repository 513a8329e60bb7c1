"""Tests for p2es.plot: physical scale, grid measured in the saved PNG, options, validation."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from p2es import plot as P  # noqa: E402
from p2es.errors import P2esError  # noqa: E402
from p2es.leads import LEAD_INDEX, derive_12  # noqa: E402

FS = 128.0
DUR = 8.0


def synth_ecg(fs: float = FS, dur: float = DUR, seed: int = 0) -> np.ndarray:
    """[12, T] mV: Gaussian P-QRS-T beats at 75 bpm, Einthoven-consistent limb leads."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(fs * dur))) / fs
    ind = np.zeros((8, t.size))
    for b in np.arange(0.3, dur, 0.8):
        for k in range(8):
            gain = (1.0 + 0.15 * k) * (-1.0 if k == 2 else 1.0)
            ind[k] += gain * np.exp(-0.5 * ((t - b) / 0.012) ** 2)  # R
            ind[k] += 0.15 * np.exp(-0.5 * ((t - b + 0.16) / 0.03) ** 2)  # P
            ind[k] += 0.3 * np.exp(-0.5 * ((t - b - 0.28) / 0.05) ** 2)  # T
    return derive_12(ind) + 0.01 * rng.standard_normal((12, t.size))


def synth_ppg(n: int, fs: float = FS) -> np.ndarray:
    t = np.arange(n) / fs
    return 1000.0 + 50.0 * np.sin(2 * np.pi * 1.25 * t) ** 8


def load(path: Path) -> np.ndarray:
    img = mpimg.imread(path)  # float RGBA in [0, 1]
    return img[..., :3]


def y_to_row(y_mm: float, height_mm: float, dpi: float) -> int:
    """Pixel row (from the top) of paper height ``y_mm`` (measured from the bottom)."""
    return int(round(P.mm_to_px(height_mm - y_mm, dpi)))


def line_centres(profile: np.ndarray, thresh: float) -> np.ndarray:
    """Centres (px) of runs where ``profile`` (darkness, 0 = white) exceeds ``thresh``."""
    on = profile > thresh
    edges = np.flatnonzero(np.diff(on.astype(int)))
    starts = list(edges[on[edges + 1]] + 1) if edges.size else []
    ends = list(edges[~on[edges + 1]] + 1) if edges.size else []
    if on[0]:
        starts.insert(0, 0)
    if on[-1]:
        ends.append(on.size)
    out = []
    for s, e in zip(starts, ends):
        w = profile[s:e]
        out.append(float(np.sum(np.arange(s, e) * w) / np.sum(w)))
    return np.array(out)


# ---------------------------------------------------------------------------------------------
def test_layout_constants_and_png_size(tmp_path: Path) -> None:
    dpi = 100
    w_mm, h_mm = P.paper_size_mm(DUR)
    assert w_mm == P.MARGIN_LEFT_MM + P.CAL_MM + DUR * 25.0 + P.MARGIN_RIGHT_MM
    assert h_mm == P.HEADER_MM + 4 * P.ROW_MM + P.FOOTER_MM
    out = P.plot_ecg_paper(synth_ecg(), FS, tmp_path / "a.png", dpi=dpi)
    img = load(out)
    assert abs(img.shape[1] - w_mm / 25.4 * dpi) <= 1.0
    assert abs(img.shape[0] - h_mm / 25.4 * dpi) <= 1.0
    # a PPG strip adds exactly one row
    out2 = P.plot_ecg_paper(synth_ecg(), FS, tmp_path / "b.png", dpi=dpi, ppg=synth_ppg(1024))
    assert abs(load(out2).shape[0] - (h_mm + P.ROW_MM) / 25.4 * dpi) <= 1.0


@pytest.mark.parametrize("dpi", [150, 254])
def test_grid_spacing_measured_in_png(tmp_path: Path, dpi: int) -> None:
    """Measure the printed grid: minor lines 1 mm apart, major lines 5 mm apart, both axes."""
    ecg = np.zeros((12, int(DUR * FS)))
    out = P.plot_ecg_paper(ecg, FS, tmp_path / "g.png", dpi=dpi, disclaimer=None)
    img = load(out)
    w_mm, h_mm = P.paper_size_mm(DUR)
    px_per_mm = dpi / 25.4
    dark = 1.0 - img[..., 1]  # red/pink lines lower the green channel; white paper = 0

    # Horizontal profile half-way between two mm lines, 7.5 mm under row 0's (flat) baseline:
    # crosses only vertical grid lines.
    r = y_to_row(P.row_baseline_mm(0, h_mm) - 7.5, h_mm, dpi)
    c0, c1 = int(P.mm_to_px(P.TRACE_X0_MM, dpi)), int(P.mm_to_px(w_mm - 1, dpi))
    prof = dark[r, c0:c1]
    minor = line_centres(prof, 0.02)
    assert len(minor) > 150
    spacing = (minor[-1] - minor[0]) / (len(minor) - 1)
    assert spacing == pytest.approx(px_per_mm, rel=0.01)
    major = line_centres(prof, 0.6 * prof.max())
    assert (major[-1] - major[0]) / (len(major) - 1) == pytest.approx(5 * px_per_mm, rel=0.01)

    # Vertical profile in the right margin, half-way between two mm lines (no trace there).
    c = int(round(P.mm_to_px(w_mm - 2.5, dpi)))
    r0, r1 = y_to_row(h_mm - P.HEADER_MM, h_mm, dpi), y_to_row(P.FOOTER_MM, h_mm, dpi)
    vprof = dark[r0 : r1 + 1, c]
    vminor = line_centres(vprof, 0.02)
    assert len(vminor) > 100
    assert (vminor[-1] - vminor[0]) / (len(vminor) - 1) == pytest.approx(px_per_mm, rel=0.01)


def test_calibration_pulse_is_10mm_tall(tmp_path: Path) -> None:
    dpi = 254  # 10 px / mm
    out = P.plot_ecg_paper(np.zeros((12, 1024)), FS, tmp_path / "c.png", dpi=dpi)
    img = load(out)
    _, h_mm = P.paper_size_mm(1024 / FS)
    base = P.row_baseline_mm(0, h_mm)
    r0, r1 = y_to_row(base + 14, h_mm, dpi), y_to_row(base - 5, h_mm, dpi)

    def black_centre(x_mm: float) -> float:
        col = img[r0:r1, int(round(P.mm_to_px(x_mm, dpi))), :].max(axis=1)
        hits = line_centres(1.0 - col, 0.65)
        assert len(hits) == 1
        return r0 + hits[0]

    top = black_centre(P.MARGIN_LEFT_MM + 3.5)  # through the pulse (1 .. 6 mm + margin)
    baseline = black_centre(P.TRACE_X0_MM - 2.5)  # flat part after the pulse
    assert baseline - top == pytest.approx(10 * dpi / 25.4, abs=1.0)
    assert baseline == pytest.approx(y_to_row(base, h_mm, dpi), abs=1.0)


def test_trace_clipped_to_its_row(tmp_path: Path) -> None:
    """A 50 mV artefact in lead I must not paint over row 1 (II, aVL, V2, V5)."""
    dpi = 100
    ecg = np.zeros((12, 1024))
    ecg[LEAD_INDEX["I"], 100:110] = 50.0
    ecg[LEAD_INDEX["I"], 200:210] = -50.0
    img = load(P.plot_ecg_paper(ecg, FS, tmp_path / "k.png", dpi=dpi))
    _, h_mm = P.paper_size_mm(8.0)
    b1 = P.row_baseline_mm(1, h_mm)
    # row 1 below its label and away from its baseline; column 0 only
    r0, r1 = y_to_row(b1 + 10, h_mm, dpi), y_to_row(b1 + 2, h_mm, dpi)
    c0, c1 = int(P.mm_to_px(P.TRACE_X0_MM + 5, dpi)), int(P.mm_to_px(P.TRACE_X0_MM + 45, dpi))
    patch = img[r0:r1, c0:c1]
    assert not (patch.max(axis=2) < 0.3).any()
    # ... while the artefact itself is drawn up to its own row's edge
    b0 = P.row_baseline_mm(0, h_mm)
    top = img[y_to_row(b0 + 13, h_mm, dpi) : y_to_row(b0 + 5, h_mm, dpi), c0:c1]
    assert (top.max(axis=2) < 0.3).any()


def test_reference_band_ppg_render(tmp_path: Path) -> None:
    true = synth_ecg()
    rec = 0.9 * true + 0.02
    rec[1, 300:320] = np.nan  # NaN gap is allowed
    band = (rec - 0.1, rec + 0.1)
    out = P.plot_ecg_paper(
        rec,
        FS,
        tmp_path / "deep" / "dir" / "r.png",
        reference=true,
        band=band,
        ppg=synth_ppg(true.shape[1]),
        title="t",
        subtitle="s",
        rhythm_lead="V2",
        dpi=80,
    )
    assert out.is_file()
    img = load(out)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    blue = (b > 0.6) & (r < 0.35) & (g < 0.5)  # reconstruction trace
    shaded = (b > 0.8) & (r > 0.6) & (r < 0.95) & (np.abs(r - g) < 0.12)  # translucent band
    black = img.max(axis=2) < 0.25  # reference trace / text
    assert blue.sum() > 500
    assert shaded.sum() > 500
    assert black.sum() > 500


def test_plain_has_no_blue(tmp_path: Path) -> None:
    img = load(P.plot_ecg_paper(synth_ecg(), FS, tmp_path / "p.png", dpi=80))
    blue = (img[..., 2] > 0.6) & (img[..., 0] < 0.35)
    assert blue.sum() == 0


def test_fast_enough(tmp_path: Path) -> None:
    ecg, ppg = synth_ecg(), synth_ppg(1024)
    P.plot_ecg_paper(ecg, FS, tmp_path / "w.png")  # warm fonts
    t0 = time.perf_counter()
    P.plot_ecg_paper(ecg, FS, tmp_path / "f.png", ppg=ppg, reference=ecg, band=(ecg - 0.1, ecg + 0.1))
    assert time.perf_counter() - t0 < 1.5


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(ecg=np.zeros((11, 100))),
        dict(ecg=np.zeros(100)),
        dict(ecg=np.zeros((12, 100, 2))),
        dict(ecg=np.full((12, 100), np.inf)),
        dict(ecg=[["a"] * 100] * 12),
        dict(fs=0.0),
        dict(fs=-5),
        dict(fs=float("nan")),
        dict(fs="fast"),
        dict(reference=np.zeros((12, 99))),
        dict(band=(np.zeros((12, 100)),)),
        dict(band=(np.zeros((12, 100)), np.zeros((12, 50)))),
        dict(ppg=np.zeros(99)),
        dict(rhythm_lead="V7"),
        dict(dpi=0),
    ],
)
def test_bad_input_raises(tmp_path: Path, kwargs: dict) -> None:
    args = dict(ecg=np.zeros((12, 100)), fs=FS)
    args.update(kwargs)
    with pytest.raises(P2esError) as ei:
        P.plot_ecg_paper(args.pop("ecg"), args.pop("fs"), tmp_path / "x.png", **args)
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------
def write_npz(path: Path, n: int = 3, **drop: bool) -> Path:
    ecg = np.stack([synth_ecg(dur=4.0, seed=i) for i in range(n)]).astype(np.float32)
    data = dict(
        ecg=ecg,
        ppg=np.stack([synth_ppg(ecg.shape[2]) for _ in range(n)]).astype(np.float32),
        fs=np.float32(FS),
        rhythm=np.array(["sinus", "af", "pvc"][:n]),
        age=np.array([64, 51.0, 30][:n]),
        sex=np.array([0, 1, 0][:n]),
        subject=np.array([12, 7, 3][:n]),
    )
    for k in drop:
        data.pop(k)
    np.savez(path, **data)
    return path


def test_plot_record_npz(tmp_path: Path) -> None:
    src = write_npz(tmp_path / "sim.npz")
    out = P.plot_record_npz(src, 1, tmp_path / "o" / "rec1.png", dpi=60)
    assert out.is_file()
    w_mm, h_mm = P.paper_size_mm(4.0, with_ppg=True)
    assert abs(load(out).shape[0] - h_mm / 25.4 * 60) <= 1.0
    with np.load(src) as z:
        data = {k: z[k] for k in z.files}
    assert P.record_header(data, 1) == ("record 1 · subject 7 · af", "age 51 · M")


def test_plot_record_npz_errors(tmp_path: Path) -> None:
    src = write_npz(tmp_path / "sim.npz")
    with pytest.raises(P2esError, match="no such file"):
        P.plot_record_npz(tmp_path / "missing.npz", 0, tmp_path / "x.png")
    for bad in (3, -1, "x"):
        with pytest.raises(P2esError):
            P.plot_record_npz(src, bad, tmp_path / "x.png")
    with pytest.raises(P2esError, match="ecg"):
        P.plot_record_npz(write_npz(tmp_path / "noecg.npz", ecg=True), 0, tmp_path / "x.png")
    with pytest.raises(P2esError, match="fs"):
        P.plot_record_npz(write_npz(tmp_path / "nofs.npz", fs=True), 0, tmp_path / "x.png")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(P2esError, match="cannot read"):
        P.plot_record_npz(junk, 0, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
