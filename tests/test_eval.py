"""Evaluation: metric sanity on known inputs, FD vs a float64 brute-force reference,
``evaluate`` end to end on a tiny checkpoint set, ``p2es eval`` errors.  One thread, < 60 s."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from engine.model import checkpoint as ckpt
from engine.model import metrics as M
from engine.model.config import SamplerConfig, variant
from engine.model.data import fixed_set
from engine.model.evaluate import DERIVED, FLOORS, HEADLINE, derangement, evaluate, figure, markdown_table
from engine.model.network import P2ES
from engine.model.schedule import make_schedule
from p2es.cli import main as cli_main
from p2es.errors import P2esError
from p2es.leads import LEADS

TINY = dict(T=256, widths=(8, 16, 16), emb_dim=32, n_groups=4, group_dim=8)
FS = 128.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ecg():
    """8 clean simulated test windows, 8 s at 128 Hz, mV."""
    return np.asarray(fixed_set("test", 8, 7, noisy_ecg=False)["ecg"], dtype=np.float64)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """Checkpoint set of tiny models (2 s windows): p2es trained a few steps, others fresh."""
    from engine.model.train import TrainConfig, train

    path = tmp_path_factory.mktemp("ckpt") / "set.pt"
    cfg = TrainConfig(
        variant="p2es",
        model={k: v for k, v in TINY.items() if k != "T"},
        steps=3,
        batch_size=8,
        lr=3e-3,
        warmup=1,
        data="fake",
        duration_s=2.0,
        chunk_records=16,
        ckpt_every=0,
        group_refit_every=2,
        group_reservoir=16,
        log_every=10,
        progress=False,
        seed=0,
    )
    train(cfg, path)
    for i, name in enumerate(["ddpm", "unet_regression"]):
        torch.manual_seed(i)
        mc, sc = variant(name, **TINY)
        ckpt.add_to_set(path, name, ckpt.pack(P2ES(mc).eval(), make_schedule(sc, mc.T)))
    return path


# -- metrics ---------------------------------------------------------------------------


def test_perfect_reconstruction(ecg):
    r = M.compute_all(ecg, ecg.copy(), FS)
    assert r["rmse"] == 0 and r["mae"] == 0 and r["prd"] == 0
    assert r["pearson"] == pytest.approx(1.0, abs=1e-12)
    assert abs(r["fd"]) < 1e-8 and r["fd_batch"] == 16  # 8 windows x 1024 / 512
    assert r["hr_mae_bpm"] == 0 and r["hr_fail_rate"] == 0
    assert r["qrs_ms_mae"] == 0 and r["qt_ms_mae"] == 0 and r["qrs_valid"] > 0.5
    assert r["spectral_distance"] == 0
    assert r["einthoven_max_abs"] <= 1e-5
    assert set(r["per_lead"]["rmse"]) == set(LEADS)


def test_scaled_and_shifted(ecg):
    a = 0.7
    rms = np.sqrt((ecg**2).mean(axis=(0, 2)))
    r = M.rmse(ecg, a * ecg)
    np.testing.assert_allclose(r.per_lead, (1 - a) * rms, rtol=1e-12)
    assert r.mean == pytest.approx(float(((1 - a) * rms).mean()))
    np.testing.assert_allclose(M.prd(ecg, a * ecg).per_lead, 100 * (1 - a), rtol=1e-10)
    np.testing.assert_allclose(M.pearson(ecg, a * ecg).per_lead, 1.0, atol=1e-12)
    c = 0.1
    np.testing.assert_allclose(M.rmse(ecg, ecg + c).per_lead, c, rtol=1e-10)
    np.testing.assert_allclose(M.mae(ecg, ecg - c).per_lead, c, rtol=1e-10)
    np.testing.assert_allclose(M.pearson(ecg, ecg + c).per_lead, 1.0, atol=1e-12)
    # a shift moves only the FD mean term: |mu1 - mu2|^2 = 512 c^2 per lead
    np.testing.assert_allclose(M.fd(ecg, ecg + c).per_lead, 512 * c * c, rtol=1e-6)
    # HR is unchanged by amplitude; a flat output has no beats (failure, not an HR of 0)
    assert M.hr_mae_bpm(ecg, a * ecg, FS).mae == pytest.approx(0.0, abs=1e-9)
    h = M.hr_mae_bpm(ecg, np.zeros_like(ecg), FS)
    assert h.fail_rate == 1.0 and math.isnan(h.mae) and h.n == 0


def test_noise_increases_fd_and_spectral_distance(ecg):
    rng = np.random.default_rng(0)
    z = rng.standard_normal(ecg.shape)
    f = [M.fd(ecg, ecg + s * z).mean for s in (0.02, 0.05, 0.2)]
    assert 0 < f[0] < f[1] < f[2]
    s = [M.spectral_distance(ecg, ecg + s * z, FS).mean for s in (0.02, 0.2)]
    assert 0 < s[0] < s[1]


def _fd_ref(a, b):
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    d = a.mean(0) - b.mean(0)
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)


@pytest.mark.parametrize("m1,m2,d", [(60, 50, 12), (40, 40, 40), (200, 100, 32)])
def test_fd_matches_sqrtm_reference(m1, m2, d):
    rng = np.random.default_rng(m1 + d)
    a = rng.standard_normal((m1, d))
    b = 0.3 + rng.standard_normal((m2, d)) @ rng.standard_normal((d, d)) * 0.4
    assert M.frechet_distance(a, b) == pytest.approx(_fd_ref(a, b), rel=1e-8, abs=1e-8)


def test_fd_rank_deficient_and_lead_layout():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 12, 1024)).astype(np.float32)
    y = x + 0.5 * rng.standard_normal(x.shape).astype(np.float32)
    r = M.fd(x, y)
    assert r.batch == 12 and r.per_lead.shape == (12,)
    for lead in (0, 7):  # 12 vectors of 512 dims: singular covariances, eigenvalue reference
        a = x[:, lead].astype(np.float64).reshape(-1, 512)
        b = y[:, lead].astype(np.float64).reshape(-1, 512)
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        tr = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
        d = a.mean(0) - b.mean(0)
        ref = d @ d + np.trace(s1) + np.trace(s2) - 2 * tr
        # RDDM's eigvals route: sqrt of ~500 round-off eigenvalues (~1e-13) adds ~1e-4
        assert r.per_lead[lead] == pytest.approx(ref, rel=1e-5)


def test_paired_difference():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 5, 400)
    a = b + 1.5  # model a is worse by exactly 1.5 everywhere
    r = M.paired_difference(a, b)
    assert r["diff"] == pytest.approx(1.5) and r["ci95"] == pytest.approx([1.5, 1.5]) and r["n"] == 400
    assert M.paired_difference(b, a)["diff"] == pytest.approx(-1.5)  # sign: first minus second
    # pure noise around 0: the interval straddles 0; a real shift of 1 with the same noise excludes it
    noise = rng.normal(0, 2, 400)
    r0 = M.paired_difference(b + noise, b)
    assert r0["ci95"][0] < 0 < r0["ci95"][1]
    r1 = M.paired_difference(b + noise + 1.0, b)
    assert r1["ci95"][0] > 0 and r1["ci95"][0] < r1["diff"] < r1["ci95"][1]
    # only windows where both have a value count; too few -> NaN, never an exception
    a2 = a.copy()
    a2[:100] = np.nan
    assert M.paired_difference(a2, b)["n"] == 300
    assert math.isnan(M.paired_difference([np.nan, 1.0], [1.0, np.nan])["diff"])
    assert M.paired_difference(a, b, seed=1)["ci95"] == M.paired_difference(a, b, seed=1)["ci95"]
    with pytest.raises(ValueError):
        M.paired_difference(a, b[:10])


def test_window_errors_match_the_maes(ecg):
    fs = 128.0
    true = ecg
    recon = np.roll(ecg, 3, axis=-1) * 0.8
    tc, rc = M.measure(true, fs), M.measure(recon, fs)
    e = M.window_errors(tc, rc)
    assert np.nanmean(e["hr_mae_bpm"]) == pytest.approx(M.hr_mae_bpm(true, recon, fs).mae)
    assert np.nanmean(e["qrs_ms_mae"]) == pytest.approx(M.qrs_ms_mae(true, recon, fs).mae)
    assert np.nanmean(e["qt_ms_mae"]) == pytest.approx(M.qt_ms_mae(true, recon, fs).mae)


def test_derangement():
    for n in (2, 3, 8, 33):
        src = derangement(n, 5)
        assert sorted(src) == list(range(n)) and (src != np.arange(n)).all()
    assert np.array_equal(derangement(8, 5), derangement(8, 5))


# -- evaluate ------------------------------------------------------------------------


def test_evaluate_end_to_end(tiny_set, tmp_path):
    res = evaluate(tiny_set, records=8, seed=3, steps=2, k=2, batch=4, progress=False, threads=1)
    names = ["p2es", *DERIVED, "unet_regression", "ddpm", *FLOORS]  # floor rows come by default
    assert set(res["models"]) == set(names)
    assert res["records"] == 8 and res["seed"] == 3 and res["T"] == 256 and res["threads"] == 1
    json.dumps(res, allow_nan=False)  # strict JSON (NaN -> null)
    for name, row in res["models"].items():
        for m in HEADLINE:
            assert m in row, (name, m)
        assert row["einthoven_max_abs"] <= 1e-5
        assert row["fd_batch"] == 4  # 8 x 256 samples / 512
        assert set(row["per_lead"]) == set(M.LEAD_METRICS)
        assert set(row["per_lead"]["rmse"]) == set(LEADS)
        assert set(row["per_rhythm"]) <= {"sinus", "af", "pvc", "other"} and row["per_rhythm"]
        assert sum(v["n"] for v in row["per_rhythm"].values()) == 8
        for key in ("hr_fail_rate", "qrs_valid", "qt_valid"):
            assert key in row
        assert row["rmse"] > 0 and row["ms_per_window"] > 0
        # every row scores the same held-out records from the same PPG
        assert row["targets_sha1"] == res["models"]["p2es"]["targets_sha1"]
        assert row["ppg_sha1"] == res["models"]["p2es"]["ppg_sha1"]
    p, sh, mk = (res["models"][n] for n in ("p2es", "p2es_shuffled_demographics", "p2es_mean_of_k"))
    assert sh["demo_sha1"] != p["demo_sha1"] and sh["rmse"] != p["rmse"]  # demographics matter
    assert mk["samples_per_window"] == 2 and p["samples_per_window"] == 1
    for row in (p, mk, res["models"]["ddpm"]):
        assert row["uncertainty_mean_std"] > 0 and -1 <= row["uncertainty_error_corr"] <= 1
        assert 0 <= row["band_coverage"] <= 1
    assert "uncertainty_mean_std" not in res["models"]["unet_regression"]

    # paired comparison with p2es on the same windows, for every other row
    assert "paired_vs_p2es" not in p
    for name in names[1:]:
        pv = res["models"][name]["paired_vs_p2es"]
        assert set(pv) == {"hr_mae_bpm", "hr_mae_ann_bpm", "beat_f1", "qrs_ms_mae", "qt_ms_mae", "per_rhythm"}
        assert set(pv["per_rhythm"]) == set(p["per_rhythm"])
        window = [pv[m] for m in M.WINDOW_METRICS] + [
            g[m] for g in pv["per_rhythm"].values() for m in g if m != "beat_f1"
        ]
        for d in window:
            assert d["n"] <= 8 and (d["diff"] is None or d["ci95"][0] <= d["diff"] <= d["ci95"][1])
        assert pv["beat_f1"]["n_boot"] <= 2000 and "fd" not in pv  # FD's interval is opt-in
        assert sum(g["hr_mae_bpm"]["n"] for g in pv["per_rhythm"].values()) == pv["hr_mae_bpm"]["n"]

    table = markdown_table(res)
    main_table = table.split("\n\n")[0]
    assert main_table.count("\n| ") == len(names) and "**" in main_table
    assert "Paired vs p2es" in table and table.count("\n| ddpm |") == 2

    # deterministic, and a model subset scores the same records identically
    again = evaluate(
        tiny_set, records=8, seed=3, steps=2, k=2, batch=4, progress=False, threads=1, models="p2es"
    )
    assert list(again["models"]) == ["p2es"]
    assert again["models"]["p2es"]["rmse"] == p["rmse"]

    png = figure(tiny_set, tmp_path / "fig.png", 3, steps=2, k=2, threads=1)
    assert png.exists() and png.stat().st_size > 10_000


def test_evaluate_errors(tiny_set):
    with pytest.raises(P2esError, match="unknown model"):
        evaluate(tiny_set, records=2, models="p2es,nope", progress=False)
    with pytest.raises(P2esError, match="records"):
        evaluate(tiny_set, records=0, progress=False)


def _cli(capsys, *argv):
    try:
        rc = cli_main(["eval", "--no-progress", *argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_cli_bad_inputs(tiny_set, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    cases = [
        (["--checkpoint", str(tmp_path / "missing.pt")], "not found"),
        (["--checkpoint", str(bad)], "corrupt"),
        (["--checkpoint", str(tiny_set), "--records", "0"], "records"),
        (["--checkpoint", str(tiny_set), "--models", "p2es,nope"], "unknown model"),
        (["--checkpoint", str(tiny_set), "--steps", "0"], "steps"),
        (["--checkpoint", str(tiny_set), "--records", "abc"], "invalid int"),
    ]
    for argv, needle in cases:
        rc, err = _cli(capsys, *argv)
        assert rc == 2, argv
        assert len(err) == 1 and needle in err[0], (argv, err)


def test_cli_runs(tiny_set, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = cli_main(
        [
            "eval",
            "--checkpoint",
            str(tiny_set),
            "--records",
            "2",
            "--seed",
            "1",
            "--steps",
            "1",
            "--k",
            "2",
            "--models",
            "p2es,unet_regression",
            "--threads",
            "1",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "| p2es |" in text and "| unet_regression |" in text
    res = json.loads(out.read_text())
    assert list(res["models"]) == ["p2es", "unet_regression"] and res["records"] == 2


# -- honest evaluation: floor rows, beats vs annotations, subject-clustered intervals ----------


def test_match_beats_by_hand():
    tol = 6  # samples (50 ms at 128 Hz)
    # exact, inside tolerance, exactly at tolerance, one past it
    assert M.match_beats([100, 200, 300, 400], [100, 205, 306, 407], tol).tolist() == [[0, 0], [1, 1], [2, 2]]
    # two detections near one annotation: the closer one matches, the other is left over
    assert M.match_beats([100], [97, 101], tol).tolist() == [[0, 1]]
    # one detection between two annotations: one-to-one, the closer annotation gets it
    assert M.match_beats([100, 108], [105], tol).tolist() == [[1, 0]]
    # greedy by distance, not by order: 104 takes 105 (distance 1), 100 then takes 96
    assert M.match_beats([100, 104], [96, 105], tol).tolist() == [[0, 0], [1, 1]]
    assert M.match_beats([], [1, 2], tol).shape == (0, 2) and M.match_beats([5], [], tol).shape == (0, 2)

    T, fs = 1024, 128.0  # edge rule: 0.1 s = 13 samples from either end
    ann = [np.array([9, 100, 300, 500, 1015]), np.array([50, 400])]
    det = [np.array([14, 100, 300, 301, 560, 1015]), np.array([], dtype=np.int64)]
    c = M.beat_counts(ann, det, T, fs)
    # window 0: 100 and 300 match (TP 2); 500 unmatched (FN); 301 (duplicate) and 560 extra (FP 2);
    # 9 and 1015 are edge annotations (not counted); 14 (inside) matches the edge annotation 9 -> no FP
    assert c.tolist() == [[2, 1, 2], [0, 2, 0]]
    s = M.beat_scores(c)
    assert (s.tp, s.fn, s.fp) == (2, 3, 2)
    assert s.sensitivity == pytest.approx(2 / 5) and s.ppv == pytest.approx(2 / 4)
    assert s.f1 == pytest.approx(4 / 9)
    flat = M.beat_scores(M.beat_counts(ann, [np.zeros(0, np.int64)] * 2, T, fs))
    assert flat.sensitivity == 0 and math.isnan(flat.ppv) and flat.f1 == 0  # no detections: PPV undefined
    # the simulator's padded [N, B] layout
    a = M.annotated_beats(np.array([[3, 9, -1], [-1, -1, -1]], dtype=np.int32), 2)
    assert a[0].tolist() == [3, 9] and a[1].size == 0
    with pytest.raises(ValueError):
        M.annotated_beats(np.array([[0.5, 1.0]]), 1)  # times, not sample indices


def test_hr_against_annotations():
    fs, T = 128.0, 1024
    ann = [np.arange(8, 1024, 128), np.arange(64, 1024, 96), np.array([500])]  # 60 bpm, 80 bpm, 1 beat
    assert M.hr_from_beats(ann[:1], T, fs)[0] == pytest.approx(60.0)  # beat at 8 < 13 is an edge beat
    det = [np.arange(8, 1024, 128) + 2, np.arange(64, 1024, 120), np.array([100, 600])]
    r = M.beat_metrics(ann, det, T, fs)
    # window 0: same rate -> 0; window 1: 80 vs 64 bpm -> 16; window 2: no annotated HR (left out)
    assert r["hr_mae_ann_bpm"] == pytest.approx(8.0) and r["hr_ann_n"] == 2 and r["hr_ann_fail_rate"] == 0
    det[1] = np.array([64])  # a reconstruction with one beat has no HR: a failure, out of the MAE
    r = M.beat_metrics(ann, det, T, fs)
    assert r["hr_mae_ann_bpm"] == pytest.approx(0.0) and r["hr_ann_fail_rate"] == 0.5 and r["hr_ann_n"] == 1


def test_clustered_bootstrap_is_wider_on_clustered_errors():
    rng = np.random.default_rng(1)
    subj = np.repeat(np.arange(40), 5)  # 40 subjects x 5 windows
    effect = rng.normal(0, 3, 40)[subj]  # strongly clustered: one error per subject ...
    b = rng.uniform(0, 5, subj.size)
    a = b + 0.5 + effect + rng.normal(0, 0.2, subj.size)  # ... plus a little window noise
    w = M.paired_difference(a, b)
    c = M.paired_difference_clustered(a, b, subj)
    assert c["diff"] == pytest.approx(w["diff"]) and c["n"] == w["n"] == 200 and c["clusters"] == 40
    width = lambda r: r["ci95"][1] - r["ci95"][0]  # noqa: E731
    assert width(c) > 1.5 * width(w)  # ~sqrt(5) for 5 identical windows per subject
    # every window its own cluster: exactly the window bootstrap
    assert M.paired_difference_clustered(a, b, np.arange(200)) == {**w, "clusters": 200}
    # missing windows drop out before resampling; one cluster -> no interval
    a2 = a.copy()
    a2[:5] = np.nan
    assert M.paired_difference_clustered(a2, b, subj)["clusters"] == 39
    one = M.paired_difference_clustered(a[:5], b[:5], subj[:5])
    assert one["clusters"] == 1 and math.isnan(one["diff"]) and math.isnan(one["ci95"][0])
    with pytest.raises(ValueError):
        M.paired_difference_clustered(a, b, subj[:10])


def test_template_uses_the_train_split_only(monkeypatch):
    from engine.model import baselines as B
    from engine.model import data as D

    seeds: list[int] = []
    orig = D.get_synthesize

    def spy(kind="sim"):
        f = orig(kind)

        def wrapped(n, seed, **kw):
            seeds.append(int(seed))
            return f(n, seed, **kw)

        return wrapped

    monkeypatch.setattr(D, "get_synthesize", spy)
    B.build_template.cache_clear()
    tpl = B.build_template(FS, 256, records=32, source="fake")
    assert seeds == [D.split_seed("train", 0, 0)] and tpl.sim_seeds == tuple(seeds) and tpl.split == "train"
    assert all(s < D.SPLIT_BASE["val"] for s in seeds)
    assert tpl.beat12.shape == (12, 32 + 58 + 1) and tpl.pre == 32  # round(0.25 fs), round(0.45 fs)
    assert tpl.n_beats > 32 and 0.1 < tpl.pat_s < 0.4
    assert np.abs(tpl.beat12[:, [0, -1]]).max() < 1e-3  # tapered ends
    assert B.build_template(FS, 256, records=32, source="fake") is tpl and len(seeds) == 1  # cached
    with pytest.raises(P2esError):
        B.build_template(FS, 256, seed=100, source="fake")  # 100 would reach the val split's seeds

    # in `evaluate`, the only test-split record generation is the scored set itself
    seeds.clear()
    B.build_template.cache_clear()
    res = evaluate(None, records=4, seed=3, models="template", data="fake", progress=False, threads=1)
    assert sorted(seeds) == [D.split_seed("train", 0, 0), D.split_seed("test", 3, 0)]
    assert res["template"]["split"] == "train" and res["template"]["sim_seeds"] == [
        D.split_seed("train", 0, 0)
    ]
    B.build_template.cache_clear()


def test_template_beats_line_up_with_annotations():
    from engine.model import baselines as B

    tpl = B.build_template(FS, 1024)  # simulator, train split (0.3 s)
    assert tpl.n_beats > 1000 and 0.12 < tpl.pat_s < 0.35
    assert tpl.beat12[1].argmax() == tpl.pre  # lead II peaks at the R sample
    assert M.einthoven_max_abs(tpl.beat12[None]) < 1e-12
    raw = fixed_set("test", 24, 11, noise=0.0, noisy_ecg=False, rhythm_mix="sinus")
    # clean records of subjects whose own pulse arrival time is near the population mean
    sel = np.flatnonzero(np.abs(raw["pat_ms"] / 1000 - tpl.pat_s) < 0.02)
    assert sel.size >= 3
    rec = B.template_ecg(tpl, raw["ppg"][sel], FS)
    ann = M.annotated_beats(raw["r_peaks"][sel], sel.size)
    r = M.beat_metrics(ann, M.detect_windows(rec, FS), 1024, FS)
    assert r["beat_f1"] > 0.9 and r["hr_mae_ann_bpm"] < 3.0
    assert M.einthoven_max_abs(rec) < 1e-12
    assert np.array_equal(B.template_ecg(tpl, np.zeros((2, 1024)), FS), np.zeros((2, 12, 1024)))


def test_floor_rows_and_new_report_keys(tiny_set):
    res = evaluate(
        tiny_set, records=8, seed=3, steps=1, k=1, batch=8, progress=False, threads=1,
        models="p2es,ddpm,zero,template", fd_interval=True,
    )  # fmt: skip
    json.dumps(res, allow_nan=False)
    true = np.asarray(fixed_set("test", 8, 3, duration_s=2.0, fs=FS, noisy_ecg=False)["ecg"], np.float64)
    z = res["models"]["zero"]
    rms = np.sqrt((true**2).mean(axis=(0, 2)))
    assert z["rmse"] == pytest.approx(rms.mean(), rel=1e-9)
    assert z["per_lead"]["rmse"]["II"] == pytest.approx(rms[1], rel=1e-9)
    assert z["prd"] == pytest.approx(100.0) and z["pearson"] is None and z["hr_mae_bpm"] is None
    assert z["hr_fail_rate"] == 1.0 and z["einthoven_max_abs"] == 0
    assert z["beat_sensitivity"] == 0 and z["beat_ppv"] is None and z["beat_f1"] == 0
    assert z["hr_mae_ann_bpm"] is None and z["floor"] is True and z["base_model"] is None
    t = res["models"]["template"]
    assert t["einthoven_max_abs"] <= 1e-5 and t["rmse"] > 0 and t["beat_f1"] > 0
    for name, row in res["models"].items():
        for key in M.beat_metrics([], [], 256, FS):
            assert key in row, (name, key)
        assert {"beat_f1", "hr_mae_ann_bpm"} <= set(next(iter(row["per_rhythm"].values())))
    ceil = res["beat_ceiling_true_ecg"]
    assert ceil["beat_f1"] > 0.9 and ceil["per_rhythm"]
    # beat scores label by label too (the gates name sinus, bradycardia and tachycardia apart)
    labels = [str(v) for v in fixed_set("test", 8, 3, duration_s=2.0, fs=FS)["rhythm"]]
    for per in (ceil["per_label"], res["models"]["p2es"]["per_label"]):
        assert set(per) == set(labels) and sum(d["n"] for d in per.values()) == 8
        for lab, d in per.items():
            assert d["n"] == labels.count(lab) and "beat_f1" in d
    assert res["beat_matching"]["tolerance_s"] == 0.05 and res["beat_matching"]["edge_s"] == 0.1
    assert res["train_seeds"] == {"p2es": 0}  # the fresh ddpm of the tiny set has no seed in its meta
    assert res["template"]["split"] == "train"
    # paired: subject-clustered under the old key, the window-level one kept under a new key
    assert res["paired_bootstrap"]["clusters"] == np.unique(fixed_set("test", 8, 3)["subject"]).size
    for name in ("ddpm", "zero", "template"):
        pv, pw = res["models"][name]["paired_vs_p2es"], res["models"][name]["paired_vs_p2es_window"]
        assert set(pw) | {"fd"} == set(pv) == {
            "hr_mae_bpm", "hr_mae_ann_bpm", "beat_f1", "fd", "qrs_ms_mae", "qt_ms_mae", "per_rhythm"
        }  # fmt: skip
        # 2 s windows hold no whole 512-sample FD vector: the FD interval says why it is missing
        assert pv["fd"]["n_jack"] == 0 and "multiple" in pv["fd"]["error"]
        for m in M.WINDOW_METRICS:
            assert pv[m]["n"] == pw[m]["n"] and "clusters" in pv[m] and "clusters" not in pw[m]
            if pv[m]["diff"] is not None:
                assert pv[m]["diff"] == pytest.approx(pw[m]["diff"])
    table = markdown_table(res)
    main_table = table.split("\n\n")[0]
    assert "| zero |" in main_table and "| template |" in main_table
    assert "beat F1" in main_table and "HR MAE ann bpm" in main_table
    assert "| rhythm | p2es | ddpm | zero | template | true ECG |" in table and "subject-clustered" in table
    # floor rows alone still run (the window size comes from the set)
    only = evaluate(tiny_set, records=2, seed=3, models="zero", progress=False, threads=1)
    assert list(only["models"]) == ["zero"] and "train_seeds" not in only


def test_seed_replicas_make_one_row_with_mean_sd_and_seed_pair_paired_test(tiny_set, tmp_path):
    import shutil

    from engine.model.evaluate import seed_replicas

    path = tmp_path / "seeds.pt"
    shutil.copy(tiny_set, path)
    for name, s in (("p2es_seed1", 1), ("p2es_seed2", 2), ("ddpm_seed1", 1)):
        torch.manual_seed(10 + s)
        mc, sc = variant(name.split("_seed")[0], **TINY)
        ckpt.add_to_set(path, name, ckpt.pack(P2ES(mc).eval(), make_schedule(sc, mc.T), meta={"seed": s}))
    names = ckpt.list_models(path)
    assert seed_replicas(names) == {
        "p2es": ["p2es", "p2es_seed1", "p2es_seed2"],
        "ddpm": ["ddpm", "ddpm_seed1"],
    }
    assert seed_replicas(["x_seed1"]) == {}  # no base model: not a replica
    kw = dict(records=8, seed=3, steps=1, k=1, batch=8, progress=False, threads=1)
    res = evaluate(path, models="p2es,ddpm", **kw)
    assert list(res["models"]) == ["p2es", "ddpm"]  # replicas report inside their model's row
    p = res["models"]["p2es"]
    assert set(p["seeds"]) == {"p2es", "p2es_seed1", "p2es_seed2"}
    assert res["train_seeds"]["p2es"] == [0, 1, 2]
    alone = evaluate(path, models="p2es_seed2", **kw)["models"]["p2es_seed2"]  # a replica as its own row
    for m in ("rmse", "fd", "beat_f1"):
        vals = [p["seeds"][n][m] for n in ("p2es", "p2es_seed1", "p2es_seed2")]
        assert len(set(vals)) == 3, (m, vals)  # three different models
        assert p[m] == pytest.approx(np.mean(vals), rel=1e-9), m
        assert p[f"{m}_sd"] == pytest.approx(np.std(vals, ddof=1), rel=1e-9), m
        assert p["seeds"]["p2es_seed2"][m] == pytest.approx(alone[m], rel=1e-12)
    assert p["per_rhythm"]  # nested values are averaged too
    # the paired difference is the mean over every (ddpm seed, p2es seed) pair on the same windows
    pv = res["models"]["ddpm"]["paired_vs_p2es"]["qt_ms_mae"]
    assert "clusters" in pv  # (untrained tiny models measure no QT: the values are exercised below)
    table = markdown_table(res)
    assert "| p2es (0, 1, 2) |" in table and "| ddpm (None, 1) |" in table  # the fresh ddpm has no seed


def test_seed_pair_difference_is_the_difference_of_seed_means():
    from engine.model.evaluate import _nanmean_rows, paired_vs

    rng = np.random.default_rng(0)
    p = [rng.gamma(2.0, 1.0, 40) for _ in range(3)]
    d = [rng.gamma(2.0, 1.3, 40) for _ in range(3)]
    d[1][5] = np.nan  # one replica failed on a window: the others still count there
    pairs = np.nanmean([di - pj for di in d for pj in p], axis=0)
    pairs[5] = np.mean([d[i][5] - p[j][5] for i in (0, 2) for j in range(3)])
    werr = {
        "p2es": {m: _nanmean_rows(p) for m in M.WINDOW_METRICS},
        "ddpm": {m: _nanmean_rows(d) for m in M.WINDOW_METRICS},
    }
    subj = np.repeat(np.arange(10), 4)
    out = paired_vs("p2es", werr, clusters=subj)["ddpm"]["hr_mae_bpm"]
    assert out["diff"] == pytest.approx(pairs.mean(), rel=1e-12) and out["clusters"] == 10
    assert np.isnan(_nanmean_rows([np.array([np.nan, 1.0]), np.array([np.nan, 3.0])])[0])


def test_seed_replica_lists_pair_like_their_mean():
    """paired_vs takes score()'s evidence per seed replica (a list) and pairs the replicas' mean."""
    from engine.model.evaluate import _nanmean_rows, paired_vs

    rng = np.random.default_rng(1)
    p = [{m: rng.gamma(2.0, 1.0, 40) for m in M.WINDOW_METRICS} for _ in range(3)]
    d = [{m: rng.gamma(2.0, 1.3, 40) for m in M.WINDOW_METRICS} for _ in range(2)]
    subj = np.repeat(np.arange(10), 4)
    lists = paired_vs("p2es", {"p2es": p, "ddpm": d}, clusters=subj)["ddpm"]
    means = {
        n: {m: _nanmean_rows([r[m] for r in rs]) for m in M.WINDOW_METRICS}
        for n, rs in (("p2es", p), ("ddpm", d))
    }
    flat = paired_vs("p2es", means, clusters=subj)["ddpm"]
    for m in M.WINDOW_METRICS:
        assert lists[m] == flat[m]
    assert "beat_f1" not in lists and "hr_mae_ann_bpm" not in lists  # no beat evidence given


def test_cluster_weights_resample_whole_subjects():
    subj = np.array([3, 3, 7, 7, 7, 9])
    w = M.cluster_weights(subj, n_boot=500, seed=4)
    assert w.shape == (500, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 2] == w[:, 3]).all() and (w[:, 3] == w[:, 4]).all()
    # three subjects drawn per row: the drawn subject counts add up to 3
    assert ((w[:, 0] + w[:, 2] + w[:, 5]) == 3).all()
    assert (w == M.cluster_weights(subj, n_boot=500, seed=4)).all()
    assert not (w == M.cluster_weights(subj, n_boot=500, seed=5)).all()
    assert 0.2 < (w[:, 5] == 0).mean() < 0.4  # a subject is left out of ~(2/3)^3 = 30 % of draws


def test_weighted_f1_and_fd_match_the_unweighted_metrics_and_explicit_copies():
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 9, size=(12, 3))
    assert M.f1_weighted(counts, np.ones((1, 12)))[0] == pytest.approx(M.beat_scores(counts).f1, rel=1e-12)
    w = rng.integers(0, 3, size=12).astype(float)
    copies = np.repeat(counts, w.astype(int), axis=0)
    assert M.f1_weighted(counts, w[None])[0] == pytest.approx(M.beat_scores(copies).f1, rel=1e-12)

    true = rng.standard_normal((10, 2, 1024)).cumsum(-1) * 0.01  # 2 vectors of 512 per window
    recon = true + 0.05 * rng.standard_normal(true.shape)
    other = 0.5 * true
    got = M.fd_weighted(true, [recon, other], np.ones((1, 10)))
    assert got[0, 0] == pytest.approx(M.fd(true, recon).mean, rel=1e-7)
    assert got[1, 0] == pytest.approx(M.fd(true, other).mean, rel=1e-7)
    w = np.array([2, 0, 1, 1, 3, 0, 1, 1, 1, 2], dtype=float)
    idx = np.repeat(np.arange(10), w.astype(int))
    assert M.fd_weighted(true, [recon], w[None])[0, 0] == pytest.approx(
        M.fd(true[idx], recon[idx]).mean, rel=1e-7
    )
    with pytest.raises(ValueError, match="multiple"):
        M.fd_weighted(true[..., :768], [recon[..., :768]], np.ones((1, 10)))


def test_beat_f1_and_fd_pairs_find_a_real_difference_and_not_a_null_one():
    """The paired F1 and FD intervals exclude 0 for a row that drops beats / is flat, and hold 0
    exactly for a row identical to the reference."""
    from engine.model.evaluate import BEAT_COUNTS, fd_paired, paired_vs

    rng = np.random.default_rng(3)
    n = 40
    subj = np.repeat(np.arange(10), 4)
    good = np.stack([rng.integers(8, 10, n), rng.integers(0, 2, n), rng.integers(0, 2, n)], axis=1)
    bad = good.copy()
    bad[:, 1] += 3  # three more missed beats per window
    bad[:, 0] = np.maximum(bad[:, 0] - 3, 0)
    ev = lambda c: {"hr_mae_ann_bpm": rng.gamma(2.0, 1.0, n), BEAT_COUNTS: c}  # noqa: E731 - a test helper
    werr = {"p2es": [ev(good)], "same": [ev(good.copy())], "worse": [ev(bad)]}
    out = paired_vs("p2es", werr, clusters=subj)
    assert out["same"]["beat_f1"]["diff"] == 0.0 and out["same"]["beat_f1"]["ci95"] == [0.0, 0.0]
    lo, hi = out["worse"]["beat_f1"]["ci95"]
    assert out["worse"]["beat_f1"]["diff"] > 0 and lo > 0  # p2es better, beyond chance
    assert "hr_mae_ann_bpm" in out["worse"]

    true = rng.standard_normal((n, 2, 512)).cumsum(-1) * 0.02
    recons = {
        "p2es": [true + 0.01 * rng.standard_normal(true.shape)],
        "same": [],
        "flat": [np.zeros_like(true)],
    }
    recons["same"] = [recons["p2es"][0].copy()]
    fds = {k: M.fd(true, v[0]).mean for k, v in recons.items()}
    res = fd_paired("p2es", true, recons, fds, subj)
    assert res["same"]["diff"] == 0.0 and res["same"]["ci95"] == [0.0, 0.0] and res["same"]["n_jack"] == 10
    assert res["flat"]["diff"] > 0 and res["flat"]["ci95"][0] > 0
    # the jackknife se of a smooth statistic: leaving a subject out moves FD, so se > 0, and the
    # interval is centred on the full-sample difference
    assert res["flat"]["se"] > 0 and np.mean(res["flat"]["ci95"]) == pytest.approx(res["flat"]["diff"])


def test_test_split_follows_the_rate_profile_the_models_were_trained_on(tmp_path):
    """`p2es eval` without --rate-profile draws the test records from the simulator profile
    recorded in the set's training config (the shipped set is trained on "wide"); a set without
    one (older files) gets the default, and an explicit profile wins."""
    from engine.model.evaluate import trained_rate_profile

    mc, sc = variant("p2es", **TINY)
    m = P2ES(mc).eval()
    wide, old = tmp_path / "wide.pt", tmp_path / "old.pt"
    ckpt.add_to_set(
        wide, "p2es", ckpt.pack(m, make_schedule(sc, mc.T), train_config={"sim_rate_profile": "wide"})
    )
    ckpt.add_to_set(old, "p2es", ckpt.pack(m, make_schedule(sc, mc.T)))
    assert trained_rate_profile(ckpt.load_set(wide)) == "wide"
    assert trained_rate_profile(ckpt.load_set(old)) == "v1"
    kw = dict(records=4, seed=2, models="zero", progress=False, uncertainty=False)
    assert evaluate(wide, **kw)["rate_profile"] == "wide"
    assert evaluate(old, **kw)["rate_profile"] == "v1"
    assert evaluate(wide, rate_profile="v1", **kw)["rate_profile"] == "v1"
    # the records differ with the profile (same split and seed)
    assert evaluate(wide, **kw)["data"] != evaluate(old, **kw)["data"]


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # 2 s records: some have no PPG foot for pat_ms
def test_template_floor_is_built_at_the_test_records_rate_profile():
    """On the wide-rate test split the `template` floor comes from wide-rate training records
    (a template built at other rates would be a weaker floor)."""
    from engine.model import baselines as B
    from engine.model import data as D

    B.build_template.cache_clear()
    v1 = B.build_template(FS, 256, records=24)
    wide = B.build_template(FS, 256, records=24, rate_profile="wide")
    assert v1.rate_profile == "v1" and wide.rate_profile == "wide"
    assert wide.describe()["rate_profile"] == "wide" and wide.sim_seeds == v1.sim_seeds
    assert wide.sim_seeds == (D.split_seed("train", B.TEMPLATE_SEED, 0),)
    assert not np.array_equal(v1.beat12, wide.beat12)  # other records, other mean beat


def test_eval_samples_each_model_at_its_saved_temperature_and_records_it(tiny_set, tmp_path):
    """``p2es eval`` on a set whose p2es was saved at temperature 0.5: its rows (and the derived
    ones) sample at 0.5 and say so, the other models stay at 1; the same set without the
    sampler config scores p2es differently."""
    import shutil

    from engine.model.evaluate import sample_windows

    path = tmp_path / "tempered.pt"
    shutil.copyfile(tiny_set, path)
    assert ckpt.set_sampler(path, "p2es", SamplerConfig(0.5)).temperature == 1.0
    kw = dict(records=4, seed=3, steps=2, k=2, batch=4, progress=False, threads=1)
    rows = "p2es,p2es_mean_of_k,ddpm,unet_regression"
    cool, plain = evaluate(path, models=rows, **kw), evaluate(tiny_set, models=rows, **kw)
    assert {n: r["temperature"] for n, r in cool["models"].items()} == {
        "p2es": 0.5,
        "p2es_mean_of_k": 0.5,
        "ddpm": 1.0,
        "unet_regression": 1.0,
    }
    assert {r["temperature"] for r in plain["models"].values()} == {1.0}
    assert cool["models"]["p2es"]["rmse"] != plain["models"]["p2es"]["rmse"]
    for n in ("ddpm", "unet_regression"):  # untouched models: the same numbers
        assert cool["models"][n]["rmse"] == plain["models"][n]["rmse"]
    assert "Initial-noise temperature (saved with the model): p2es 0.5, p2es_mean_of_k 0.5." in (
        markdown_table(cool)
    )
    assert "temperature" not in markdown_table(plain)
    json.dumps(cool, allow_nan=False)
    # the row is what sample_windows gives at the saved temperature (an explicit one wins)
    from engine.model.data import prepare

    e = ckpt.load_model(path)
    d = prepare(fixed_set("test", 2, 3, duration_s=2.0))
    args = (d["ppg"], d["demo"], d["demo_mask"])
    w = dict(steps=2, k=1, batch=2, seed=3, desc="", progress=False)
    saved = sample_windows(e, *args, **w)[0]
    assert np.array_equal(saved, sample_windows(e, *args, temperature=0.5, **w)[0])
    assert not np.array_equal(saved, sample_windows(e, *args, temperature=1.0, **w)[0])
