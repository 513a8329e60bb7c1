"""Tests for wearable.readers (WFDB, DICOM, CSV readers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

wfdb = pytest.importorskip("wfdb")

from engine.model.realppg import heartpy_data  # noqa: E402
from p2es.errors import InputError, P2esError  # noqa: E402
from p2es.leads import LEAD_INDEX, LEADS, einthoven_residual  # noqa: E402
from wearable.readers import (  # noqa: E402
    Recording,
    lead_from_label,
    read_any,
    read_csv,
    read_dicom,
    read_wfdb,
)

FS = 125
N = 1000


def _signals():
    t = np.arange(N) / FS
    ppg = 2.0 + np.sin(2 * np.pi * 1.2 * t)
    lead_i = 0.5 * np.sin(2 * np.pi * 1.1 * t)
    lead_ii = 1.2 * np.cos(2 * np.pi * 1.1 * t) + 0.1
    v1 = -0.8 * np.sin(2 * np.pi * 2.0 * t)
    return ppg, lead_i, lead_ii, v1


def _resolution(path: Path, ch: int) -> float:
    """One ADC step of channel ``ch`` in its physical units."""
    h = wfdb.rdheader(str(path))
    return 1.0 / h.adc_gain[ch]


def _assert_one_line(exc: pytest.ExceptionInfo, path) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert isinstance(exc.value, P2esError)


# --------------------------------------------------------------------------- WFDB


@pytest.fixture
def wfdb_record(tmp_path):
    ppg, lead_i, lead_ii, v1 = _signals()
    lead_ii = lead_ii.copy()
    lead_ii[100:110] = np.nan  # a short gap
    sig = np.stack([ppg, lead_i, lead_ii * 1000.0, v1], axis=1)  # II written in uV
    wfdb.wrsamp(
        "rec",
        fs=FS,
        units=["NU", "mV", "uV", "mV"],
        sig_name=["PLETH", "I", "II", "V1"],
        p_signal=sig,
        fmt=["16"] * 4,
        write_dir=str(tmp_path),
    )
    return tmp_path / "rec", (ppg, lead_i, lead_ii, v1)


@pytest.mark.parametrize("suffix", ["", ".hea", ".dat"])
def test_wfdb_roundtrip_units_and_derivation(wfdb_record, suffix):
    base, (ppg, lead_i, lead_ii, v1) = wfdb_record
    rec = read_wfdb(str(base) + suffix)
    assert isinstance(rec, Recording)
    assert rec.fs == FS
    assert rec.ppg.dtype == np.float64 and rec.ppg.shape == (N,)
    assert rec.ecg.shape == (12, N) and rec.ecg.dtype == np.float64
    assert rec.ecg_present == ("I", "II", "III", "aVR", "aVL", "aVF", "V1")
    assert rec.meta["ecg_derived"] == ("III", "aVR", "aVL", "aVF")
    assert rec.meta["ppg_channel"] == "PLETH"

    np.testing.assert_allclose(rec.ppg, ppg, atol=_resolution(base, 0))
    np.testing.assert_allclose(rec.ecg[LEAD_INDEX["I"]], lead_i, atol=_resolution(base, 1))
    # II was stored in uV: back in mV, within one ADC step (in uV) / 1000.
    got_ii = rec.ecg[LEAD_INDEX["II"]]
    assert np.isnan(got_ii[100:110]).all()
    assert np.isnan(got_ii).sum() == 10
    ok = ~np.isnan(lead_ii)
    np.testing.assert_allclose(got_ii[ok], lead_ii[ok], atol=_resolution(base, 2) / 1000)
    np.testing.assert_allclose(rec.ecg[LEAD_INDEX["V1"]], v1, atol=_resolution(base, 3))

    # derived limb leads are exact functions of the recorded I and II
    i_, ii_ = rec.ecg[0], rec.ecg[1]
    np.testing.assert_array_equal(rec.ecg[LEAD_INDEX["III"]], ii_ - i_)
    np.testing.assert_array_equal(rec.ecg[LEAD_INDEX["aVR"]], -(i_ + ii_) / 2)
    np.testing.assert_array_equal(rec.ecg[LEAD_INDEX["aVL"]], i_ - ii_ / 2)
    np.testing.assert_array_equal(rec.ecg[LEAD_INDEX["aVF"]], ii_ - i_ / 2)
    assert einthoven_residual(rec.ecg[:, ok]) == 0.0
    # leads not recorded are NaN rows
    for name in ("V2", "V3", "V4", "V5", "V6"):
        assert np.isnan(rec.ecg[LEAD_INDEX[name]]).all()


def test_wfdb_channel_names_and_derivation_from_ii_iii(tmp_path):
    ppg, lead_i, lead_ii, v1 = _signals()
    sig = np.stack([ppg, lead_ii, lead_ii - lead_i, v1], axis=1)
    wfdb.wrsamp(
        "mimic",
        fs=FS,
        units=["NU", "mV", "mV", "V"],
        sig_name=["Pleth", "ECG II", "III", "V1"],
        p_signal=np.stack([sig[:, 0], sig[:, 1], sig[:, 2], sig[:, 3] / 1000.0], axis=1),
        fmt=["16"] * 4,
        write_dir=str(tmp_path),
    )
    rec = read_wfdb(tmp_path / "mimic")
    assert rec.meta["ecg_recorded"] == ("II", "III", "V1")
    assert set(rec.ecg_present) == {"I", "II", "III", "aVR", "aVL", "aVF", "V1"}
    np.testing.assert_array_equal(rec.ecg[0], rec.ecg[1] - rec.ecg[2])  # I = II - III
    np.testing.assert_allclose(rec.ecg[0], lead_i, atol=1e-3)
    np.testing.assert_allclose(rec.ecg[LEAD_INDEX["V1"]], v1, atol=1e-3)  # V -> mV
    assert einthoven_residual(rec.ecg[:6]) < 1e-12


def test_wfdb_mlii_without_ppg_and_multisegment(tmp_path):
    ppg, _, lead_ii, _ = _signals()
    for k, sl in enumerate((slice(0, 500), slice(500, N))):
        wfdb.wrsamp(
            f"seg{k}",
            fs=FS,
            units=["NU", "mV"],
            sig_name=["PLETH", "MLII"],
            p_signal=np.stack([ppg[sl], lead_ii[sl]], axis=1),
            fmt=["16"] * 2,
            write_dir=str(tmp_path),
        )
    (tmp_path / "multi.hea").write_text(f"multi/2 2 {FS} {N}\nseg0 500\nseg1 500\n")
    rec = read_wfdb(tmp_path / "multi.hea")
    assert rec.meta["multi_segment"] is True
    assert rec.ppg.shape == (N,)
    assert rec.ecg_present == ("II",)
    np.testing.assert_allclose(rec.ecg[1], lead_ii, atol=1e-4)


def test_wfdb_multifrequency_rejected(tmp_path):
    ppg, _, lead_ii, _ = _signals()
    wfdb.wrsamp(
        "mf",
        fs=FS,
        units=["NU", "mV"],
        sig_name=["PLETH", "II"],
        e_p_signal=[ppg, np.repeat(lead_ii, 2)],
        samps_per_frame=[1, 2],
        fmt=["16", "16"],
        adc_gain=[1000.0, 1000.0],
        baseline=[0, 0],
        write_dir=str(tmp_path),
    )
    with pytest.raises(InputError, match="not supported yet") as exc:
        read_wfdb(tmp_path / "mf")
    _assert_one_line(exc, tmp_path / "mf")


def test_wfdb_errors(wfdb_record, tmp_path):
    base, _ = wfdb_record
    # missing .dat
    (tmp_path / "rec.dat").unlink()
    with pytest.raises(InputError) as exc:
        read_wfdb(base)
    _assert_one_line(exc, base)
    # corrupt header
    bad = tmp_path / "bad.hea"
    bad.write_text("this is not a header\n\x00\x01 garbage\n")
    with pytest.raises(InputError) as exc:
        read_wfdb(bad)
    _assert_one_line(exc, bad)
    # missing record
    with pytest.raises(InputError, match="no such") as exc:
        read_wfdb(tmp_path / "nothing.hea")
    _assert_one_line(exc, tmp_path / "nothing.hea")


def test_wfdb_no_usable_channels_and_bad_units(tmp_path):
    x = np.stack([np.sin(np.arange(N) / 10.0)] * 2, axis=1)
    wfdb.wrsamp(
        "resp",
        fs=FS,
        units=["NU", "mmHg"],
        sig_name=["RESP", "ABP"],
        p_signal=x,
        fmt=["16"] * 2,
        write_dir=str(tmp_path),
    )
    with pytest.raises(InputError, match="no PPG channel and no ECG") as exc:
        read_wfdb(tmp_path / "resp")
    _assert_one_line(exc, tmp_path / "resp")
    wfdb.wrsamp(
        "units",
        fs=FS,
        units=["NU", "mmHg"],
        sig_name=["PLETH", "II"],
        p_signal=x,
        fmt=["16"] * 2,
        write_dir=str(tmp_path),
    )
    with pytest.raises(InputError, match="units"):
        read_wfdb(tmp_path / "units")


def test_wfdb_all_nan_channel_is_error(tmp_path):
    x = np.stack([np.sin(np.arange(N) / 10.0), np.full(N, np.nan)], axis=1)
    wfdb.wrsamp(
        "nan",
        fs=FS,
        units=["NU", "mV"],
        sig_name=["PLETH", "II"],
        p_signal=x,
        fmt=["16"] * 2,
        adc_gain=[1000.0, 1000.0],
        baseline=[0, 0],
        write_dir=str(tmp_path),
    )
    with pytest.raises(InputError, match="all NaN"):
        read_wfdb(tmp_path / "nan")


# --------------------------------------------------------------------------- DICOM


def test_dicom_pydicom_example():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("waveform_ecg.dcm")
    rec = read_dicom(path)
    assert rec.fs == 1000.0
    assert rec.ecg.shape == (12, 10000)
    assert rec.ecg_present == LEADS
    assert rec.meta["ecg_derived"] == ()
    assert rec.ppg is None
    assert not np.isnan(rec.ecg).any()
    peak = np.max(np.abs(rec.ecg), axis=1)
    assert np.all(peak > 0.1) and np.all(peak < 3.0)  # mV range (stored in uV)
    avr = rec.ecg[LEAD_INDEX["aVR"]]
    assert abs(avr.min()) > 5 * abs(avr.max())  # aVR main deflection negative
    # recorded limb leads obey Einthoven within ~one 1.25 uV ADC step
    assert einthoven_residual(rec.ecg) < 2e-3
    # waveform_array already applied the sensitivity: raw * 1.25 uV
    ds = pydicom.dcmread(path)
    raw = ds.WaveformSequence[0]
    assert float(raw.ChannelDefinitionSequence[0].ChannelSensitivity) == 1.25
    assert read_any(path).fs == 1000.0


def test_dicom_errors(tmp_path):
    pytest.importorskip("pydicom")
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not a dicom file at all")
    with pytest.raises(InputError) as exc:
        read_dicom(bad)
    _assert_one_line(exc, bad)
    with pytest.raises(InputError, match="no such file"):
        read_dicom(tmp_path / "missing.dcm")


# --------------------------------------------------------------------------- CSV


def _heartpy_data() -> Path:
    try:
        return heartpy_data()
    except P2esError:
        pytest.skip("heartpy not installed")


def test_heartpy_csvs():
    d = _heartpy_data()
    rec = read_csv(d / "data.csv", fs=100)  # one unnamed column, 100 Hz
    assert rec.fs == 100.0 and rec.ppg.shape == (2483,) and rec.ecg is None
    np.testing.assert_array_equal(rec.ppg[:5], [530, 518, 506, 494, 483])

    rec = read_csv(d / "data2.csv")  # timer (ms), hr -> ~116.99 Hz
    assert rec.fs == pytest.approx(116.99, abs=0.05)
    assert rec.ppg.shape == (15000,) and rec.meta["ppg_column"] == "hr"
    assert rec.meta["time_column"] == "timer"

    # data3.csv: datetime stamps quantised by a ~16 ms clock -> not regular; fs must be given
    with pytest.raises(InputError, match="not regular"):
        read_csv(d / "data3.csv")
    rec = read_csv(d / "data3.csv", fs=100.42)
    assert rec.fs == 100.42 and rec.ppg.shape == (68476,)
    with pytest.raises(InputError, match="disagrees"):
        read_csv(d / "data3.csv", fs=125)

    assert read_any(d / "data.csv", fs=100).fs == 100.0


def test_csv_single_column_needs_fs(tmp_path):
    p = tmp_path / "ppg.csv"
    p.write_text("ppg\n1\n2\n3\n")
    with pytest.raises(InputError, match="pass fs") as exc:
        read_csv(p)
    _assert_one_line(exc, p)
    p2 = tmp_path / "raw.txt"
    p2.write_text("1.0\n2.0\n\n3.5\n")
    rec = read_any(p2, fs=50)
    assert rec.fs == 50 and rec.ppg.tolist() == [1.0, 2.0, 3.5]
    with pytest.raises(InputError):
        read_csv(p2, fs=0)


def test_csv_time_column_infers_fs_and_ecg(tmp_path):
    ppg, lead_i, lead_ii, v1 = _signals()
    t = np.arange(N) / FS
    p = tmp_path / "rec.csv"
    rows = ["Time,PPG,I,II,v1"] + [
        f"{t[k]:.6f},{ppg[k]:.6f},{lead_i[k]:.6f},{lead_ii[k]:.6f},{v1[k]:.6f}" for k in range(N)
    ]
    rows[5] = rows[5].split(",")[0] + ",," + ",".join(rows[5].split(",")[2:])  # one empty cell
    p.write_text("\n".join(rows) + "\n")
    rec = read_csv(p)
    assert rec.fs == pytest.approx(FS, rel=1e-4)
    assert np.isnan(rec.ppg[4]) and np.isnan(rec.ppg).sum() == 1
    assert rec.meta["ecg_recorded"] == ("I", "II", "V1")
    np.testing.assert_allclose(rec.ecg[LEAD_INDEX["III"]], lead_ii - lead_i, atol=2e-6)

    ms = tmp_path / "ms.csv"
    ms.write_text("time_ms;pleth\n" + "".join(f"{k * 4};{k % 7}\n" for k in range(100)))
    assert read_csv(ms).fs == pytest.approx(250.0)


def test_csv_errors(tmp_path):
    cases = {
        "empty.csv": "",
        "header_only.csv": "time,ppg\n",
        "text.csv": "ppg\n1\nabc\n3\n",
        "irregular.csv": "t,ppg\n0,1\n0.01,2\n0.03,3\n0.04,4\n",
        "nan.csv": "ppg\nnan\n\nnan\n",
        "nocols.csv": "time,foo,bar\n0,1,2\n0.1,1,2\n",
        "binary.csv": None,
    }
    for name, text in cases.items():
        p = tmp_path / name
        if text is None:
            p.write_bytes(b"\xff\xfe\x00\x81\x82garbage")
        else:
            p.write_text(text)
        with pytest.raises(InputError) as exc:
            read_csv(p, fs=None if name in ("irregular.csv", "nocols.csv") else 100)
        _assert_one_line(exc, p)
    with pytest.raises(InputError, match="not found"):
        read_csv(tmp_path / "irregular.csv", column="green")


def test_read_any_dispatch_errors(tmp_path, wfdb_record):
    base, _ = wfdb_record
    assert read_any(base).fs == FS  # bare record name with a sibling .hea
    assert read_any(str(base) + ".hea").fs == FS
    with pytest.raises(InputError, match="disagrees"):
        read_any(base, fs=250)
    odd = tmp_path / "x.parquet"
    odd.write_bytes(b"PAR1")
    with pytest.raises(InputError, match="unknown file type") as exc:
        read_any(odd)
    _assert_one_line(exc, odd)
    with pytest.raises(InputError, match="no such file"):
        read_any(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    "label,expected",
    [
        ("II", ("II", 1.0)),
        ("MLII", ("II", 1.0)),
        ("AVR", ("aVR", 1.0)),
        ("ECG I", ("I", 1.0)),
        ("ECG-II", ("II", 1.0)),
        ("Lead I (Einthoven)", ("I", 1.0)),
        ("Lead -aVR", ("aVR", -1.0)),
        ("v6", ("V6", 1.0)),
        ("V", None),
        ("PLETH", None),
        ("RESP", None),
    ],
)
def test_lead_labels(label, expected):
    assert lead_from_label(label) == expected
