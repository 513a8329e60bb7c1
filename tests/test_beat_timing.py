"""Opt-in beat-timing options (the model issue, item 2): the QRS-weighted MSE (``w_qrs``), the
auxiliary R-peak heatmap head (``rpeak_head`` + ``w_rpeak``) and the PPG pulse-onset input channel
(``ppg_onset_channel``).  Off by default, and then nothing changes: old checkpoints load and give
the same output, the default features are the same.  Tiny configs, stand-in data, one thread."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from engine.model import checkpoint as ckpt
from engine.model.config import ModelConfig, TrainConfig, from_dict, to_dict, variant
from engine.model.data import (
    QRS_HALF_S,
    fake_synthesize,
    prepare,
    qrs_mask,
    rpeak_heatmap,
)
from engine.model.network import P2ES
from engine.model.preprocess import bandpass, complete_features, onset_channel, ppg_features
from engine.model.schedule import dct_matrix, make_schedule
from engine.model.train import build, loss_terms, train
from p2es.errors import P2esError
from p2es.signal import detect_ppg_beats

TINY = dict(T=256, widths=(8, 16, 16), emb_dim=32, n_groups=4, group_dim=8)
TINY_TRAIN = dict(widths=[8, 16, 16], emb_dim=32, n_groups=4, group_dim=8)
FS = 128.0

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_cfg(**kw) -> TrainConfig:
    base = dict(
        data="fake",
        steps=3,
        batch_size=4,
        chunk_records=8,
        duration_s=2.0,
        progress=False,
        ckpt_every=0,
        log_every=1,
        warmup=1,
        group_reservoir=16,
    )
    model = {**TINY_TRAIN, **kw.pop("model", {})}
    return TrainConfig(model=model, **{**base, **kw})


def _perturbed(model: P2ES, seed: int = 0) -> P2ES:
    """Untrained FiLM/deblur start at zero/identity: perturb every weight so they all matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _local_maxima(x: np.ndarray) -> np.ndarray:
    """Indices of the plateau-free local maxima > 0.5 of a 1-D bump train."""
    inner = (x[1:-1] > 0.5) & (x[1:-1] >= x[:-2]) & (x[1:-1] >= x[2:])
    return np.flatnonzero(inner) + 1


@pytest.fixture(scope="module")
def raw():
    return fake_synthesize(6, seed=3, duration_s=2.0)


# -- defaults reproduce the old behaviour -------------------------------------------------


def test_old_checkpoint_dict_without_the_new_fields_loads_and_gives_identical_output(tmp_path):
    torch.manual_seed(0)
    mc, sc = variant("p2es", **TINY)
    model = _perturbed(P2ES(mc))
    assert model.rpeak is None and not any("rpeak" in k for k in model.state_dict())
    packed = ckpt.pack(model, make_schedule(sc, mc.T), train_config=to_dict(TrainConfig()))
    for k in ("rpeak_head", "ppg_onset_channel"):  # a checkpoint written before the fields existed
        del packed["model_config"][k]
    for k in ("w_qrs", "w_rpeak"):
        del packed["train_config"][k]
    ckpt.save_set(tmp_path / "old.pt", {"p2es": packed})
    e = ckpt.load_model(tmp_path / "old.pt")  # strict state-dict load inside
    assert e.model_config == mc and not e.model_config.rpeak_head and not e.model_config.ppg_onset_channel
    assert e.model_config.ppg_channels == 3 and e.model.rpeak is None
    tc = from_dict(TrainConfig, e.train_config)
    assert tc.w_qrs == 0.0 and tc.w_rpeak == 0.0
    b = prepare(fake_synthesize(3, seed=1, duration_s=2.0))
    x_t = torch.randn(3, 8, mc.T, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x_t, torch.full((3,), 0.3), b["ppg"], b["demo"], b["demo_mask"])
        got = e.model(x_t, torch.full((3,), 0.3), b["ppg"], b["demo"], b["demo_mask"])
    assert torch.equal(want, got)


def test_shipped_checkpoint_loads_with_the_beat_timing_switches_off():
    d = ckpt.read_set(ckpt.DEFAULT_CHECKPOINT)["models"]
    for name, m in d.items():  # absent (older configs) or stored as off
        mc = m["model_config"]
        assert not mc.get("rpeak_head") and not mc.get("ppg_onset_channel") and not mc.get("pat_align"), name
    e = ckpt.load_model(ckpt.DEFAULT_CHECKPOINT, "p2es")
    assert e.model.rpeak is None and e.model_config.ppg_channels == 3 and not e.model_config.ppg_onset_channel


def test_default_features_and_prepared_batches_are_unchanged(raw):
    x = np.asarray(raw["ppg"], dtype=np.float64)
    # the preprocessing as it was written before the onset option (reference, inline)
    z = bandpass(x, FS)
    z = (z - z.mean(-1, keepdims=True)) / np.maximum(z.std(-1, keepdims=True), 1e-6)
    d1 = np.gradient(z, axis=-1)
    d2 = np.gradient(d1, axis=-1)

    def zs(a):
        return (a - a.mean(-1, keepdims=True)) / np.maximum(a.std(-1, keepdims=True), 1e-6)

    ref = np.stack([z, zs(d1), zs(d2)], axis=1).astype(np.float32)
    f = ppg_features(x, FS)
    assert f.shape == (6, 3, 256) and f.dtype == np.float32
    np.testing.assert_array_equal(f, ref)
    np.testing.assert_array_equal(ppg_features(x, FS, onset=False), ref)
    b = prepare(raw)
    assert set(b) == {"ppg", "demo", "demo_mask", "x0", "ecg12", "subject"}
    assert b["ppg"].shape == (6, 3, 256)
    assert ModelConfig().ppg_channels == 3


def test_default_model_has_no_new_parameters_and_the_head_leaves_the_main_path_alone():
    torch.manual_seed(0)
    plain = _perturbed(P2ES(variant("p2es", **TINY)[0]))
    torch.manual_seed(0)
    head = P2ES(variant("p2es", **TINY, rpeak_head=True)[0]).eval()
    extra = set(head.state_dict()) - set(plain.state_dict())
    assert extra == {"rpeak.weight", "rpeak.bias"} and set(plain.state_dict()) <= set(head.state_dict())
    head.load_state_dict(plain.state_dict(), strict=False)  # same shared weights
    b = prepare(fake_synthesize(2, seed=4, duration_s=2.0))
    x_t = torch.randn(2, 8, 256, generator=torch.Generator().manual_seed(5))
    t = torch.full((2,), 0.6)
    with torch.no_grad():
        ref = plain.denoise(x_t, t, plain.encode(b["ppg"], b["demo"], b["demo_mask"]))
        cond = head.encode(b["ppg"], b["demo"], b["demo_mask"])
        y = head.denoise(x_t, t, cond)
        y2, logits = head.denoise_with_rpeak(x_t, t, cond)
    assert torch.equal(ref, y) and torch.equal(ref, y2)
    assert logits.shape == (2, 256) and torch.isfinite(logits).all()
    with pytest.raises(P2esError, match="R-peak head"):
        plain.denoise_with_rpeak(x_t, t, cond)


# -- w_qrs ---------------------------------------------------------------------------------


def test_qrs_mask_covers_60_ms_around_the_annotated_peaks(raw):
    rp = np.asarray(raw["r_peaks"])
    m = qrs_mask(rp, 256, FS)
    h = int(round(QRS_HALF_S * FS))
    assert h == 8 and m.shape == (6, 256) and set(np.unique(m)) <= {0.0, 1.0}
    t = np.arange(256)
    for i in range(rp.shape[0]):
        peaks = rp[i][rp[i] >= 0]
        assert peaks.size >= 1
        dist = np.min(np.abs(t[:, None] - peaks[None, :]), axis=1)
        np.testing.assert_array_equal(m[i], (dist <= h).astype(np.float32))
    # through the data path, only when asked for
    b = prepare(raw, qrs=True)
    np.testing.assert_array_equal(b["qrs_mask"].numpy(), m)
    assert "rpeak_heat" not in b and "qrs_mask" not in prepare(raw)


def test_qrs_mask_on_the_real_simulator_records():
    from wearable.sim import synthesize

    d = synthesize(3, 7, duration_s=2.0)
    b = prepare(d, qrs=True, rpeak=True)
    rp = d["r_peaks"]
    for i in range(3):
        for p in rp[i][rp[i] >= 0]:
            lo, hi = max(0, p - 8), min(256, p + 9)
            assert (b["qrs_mask"][i, lo:hi] == 1).all()
            assert b["rpeak_heat"][i, p] == 1.0


def test_w_qrs_loss_is_the_mean_over_the_masked_samples_and_trains(raw, tmp_path):
    cfg = _train_cfg(w_qrs=2.0)
    torch.manual_seed(0)
    model, schedule = build(cfg)
    batch = prepare(raw, qrs=True)
    gen = torch.Generator().manual_seed(1)
    loss, terms, _, x0_hat = loss_terms(
        model, schedule, batch, cfg, gen, dct_matrix(256), contextlib.nullcontext
    )
    m = batch["qrs_mask"][:, None, :]
    want = float(((x0_hat.detach() - batch["x0"]) ** 2 * m).sum() / (8 * m.sum()))
    assert terms["qrs"] == pytest.approx(want, rel=1e-5)
    base = cfg.w_mse * terms["mse"] + cfg.w_spec * terms["spec"] + cfg.w_contrast * terms["con"]
    assert terms["loss"] == pytest.approx(base + 2.0 * want, rel=1e-5)
    res = train(cfg, tmp_path / "q.pt")
    assert res["steps"] == 3 and all(np.isfinite(h["qrs"]) and np.isfinite(h["loss"]) for h in res["history"])


# -- R-peak head ---------------------------------------------------------------------------


def test_rpeak_target_has_its_maxima_at_the_annotated_peaks(raw):
    rp = np.asarray(raw["r_peaks"])
    heat = rpeak_heatmap(rp, 256, FS)
    assert heat.shape == (6, 256) and heat.min() >= 0.0 and heat.max() <= 1.0
    for i in range(rp.shape[0]):
        peaks = np.sort(rp[i][rp[i] >= 0])
        np.testing.assert_array_equal(heat[i, peaks], 1.0)
        np.testing.assert_array_equal(_local_maxima(heat[i]), peaks[(peaks > 0) & (peaks < 255)])
        # std 20 ms: exp(-1/2) one sigma (2.56 samples) away, ~0 beyond 4 sigma
        p = int(peaks[len(peaks) // 2])
        if 12 <= p <= 243 and np.min(np.abs(np.delete(peaks, len(peaks) // 2) - p), initial=99) > 24:
            assert heat[i, p + 3] == pytest.approx(np.exp(-0.5 * (3 / 2.56) ** 2), rel=1e-5)
            assert heat[i, p + 12] == 0.0  # the kernel ends at ceil(4 sigma) = 11 samples


def test_rpeak_head_loss_decreases_on_a_fixed_batch(raw):
    cfg = _train_cfg(w_rpeak=1.0, w_mse=0.0, w_spec=0.0, w_contrast=0.0, model={"rpeak_head": True})
    torch.manual_seed(0)
    model, schedule = build(cfg)
    model.train()
    batch = prepare(raw, rpeak=True)
    assert batch["rpeak_heat"].shape == (6, 256)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    V = dct_matrix(256)
    seen = []
    for _ in range(20):
        gen = torch.Generator().manual_seed(100)  # the same t and noise every step
        loss, terms, _, _ = loss_terms(model, schedule, batch, cfg, gen, V, contextlib.nullcontext)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert np.isfinite(terms["rpeak"])
        seen.append(terms["rpeak"])
    assert np.all(np.diff(seen[:10]) < 0), seen  # steadily down at first ...
    assert np.mean(seen[-5:]) < 0.6 * np.mean(seen[:5]), seen  # ... and well below the start


def test_w_rpeak_trains_and_needs_the_head(tmp_path):
    res = train(_train_cfg(w_rpeak=0.5, model={"rpeak_head": True}), tmp_path / "r.pt")
    assert all(np.isfinite(h["rpeak"]) for h in res["history"])
    e = ckpt.load_model(tmp_path / "r.pt")
    assert e.model_config.rpeak_head and e.model.rpeak is not None
    with pytest.raises(P2esError, match="rpeak_head"):
        train(_train_cfg(w_rpeak=0.5), tmp_path / "bad.pt")
    with pytest.raises(P2esError, match="w-qrs"):
        TrainConfig(w_qrs=-1.0)


# -- PPG onset channel -----------------------------------------------------------------------


def test_onset_channel_peaks_at_the_detected_feet():
    from wearable.sim import synthesize

    d = synthesize(3, 11, duration_s=8.0)
    f4 = ppg_features(d["ppg"], FS, onset=True)
    f3 = ppg_features(d["ppg"], FS)
    assert f4.shape == (3, 4, 1024) and f4.dtype == np.float32
    np.testing.assert_array_equal(f4[:, :3], f3)
    np.testing.assert_array_equal(complete_features(f3, FS, onset=True), f4)  # recomputable from ch 0
    np.testing.assert_array_equal(onset_channel(f3[:, 0], FS), f4[:, 3])
    on = f4[:, 3]
    assert on.min() >= 0.0 and on.max() <= 1.0
    for i in range(3):
        feet = detect_ppg_beats(f3[i, 0].astype(np.float64), FS)["feet"]
        assert feet.size >= 5
        np.testing.assert_array_equal(on[i, feet], 1.0)
        np.testing.assert_array_equal(_local_maxima(on[i]), feet[(feet > 0) & (feet < 1023)])
        # the feet follow the annotated R peaks by a pulse transit time
        r = d["r_peaks"][i][d["r_peaks"][i] >= 0]
        lag = np.array([f - r[r < f].max() for f in feet if (r < f).any()]) / FS
        assert 0.05 < np.median(lag) < 0.5
    assert ModelConfig(ppg_onset_channel=True).ppg_channels == 4
    with pytest.raises(P2esError, match="ppg_channels"):
        ModelConfig(ppg_onset_channel=True, ppg_channels=5)


@pytest.fixture(scope="module")
def onset_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("onset") / "set.pt"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train(_train_cfg(steps=2, model={"ppg_onset_channel": True}), path)
    finally:
        torch.set_num_threads(n)
    assert all(np.isfinite(h["loss"]) for h in res["history"])
    return path


def test_onset_model_trains_saves_loads_and_reconstructs(onset_set):
    from engine.model.reconstruct import reconstruct

    e = ckpt.load_model(onset_set)
    assert e.model_config.ppg_onset_channel and e.model_config.ppg_channels == 4
    assert e.model.ppg_enc.stem.in_channels == 4
    d = fake_synthesize(2, seed=9, duration_s=2.0)
    b3, b4 = prepare(d), prepare(d, ppg_onset=True)
    assert b4["ppg"].shape == (2, 4, 256)
    with torch.no_grad():  # 3-channel features are completed inside encode, bit for bit
        c3 = e.model.encode(b3["ppg"], b3["demo"], b3["demo_mask"])
        c4 = e.model.encode(b4["ppg"], b4["demo"], b4["demo_mask"])
    assert all(torch.equal(a, b) for a, b in zip(c3.ppg, c4.ppg))
    x = fake_synthesize(1, seed=2, duration_s=5.0)["ppg"][0]
    rec = reconstruct(x, FS, checkpoint=e, steps=2, k=2, hop_s=1.0, progress=False)
    assert rec.ecg.shape == (12, x.size) and np.isfinite(rec.ecg).all()


def test_onset_model_runs_through_the_torch_backend(onset_set):
    from engine.serve.runtime import TorchBackend, WindowRequest, prepare_batch

    e = ckpt.load_model(onset_set)
    d = fake_synthesize(2, seed=6, duration_s=2.0)
    reqs = [WindowRequest(f"p{i}", 1e9, FS, d["ppg"][i], {"age": 60, "sex": "M"}) for i in range(2)]
    f3, demo, mask = prepare_batch(reqs)
    f4, _, _ = prepare_batch(reqs, ppg_onset=True)
    assert f3.shape == (2, 3, 256) and f4.shape == (2, 4, 256)
    m3, s3 = TorchBackend(e, steps=2, k=2, seed=1).run(f3, demo, mask)
    m4, s4 = TorchBackend(e, steps=2, k=2, seed=1).run(f4, demo, mask)
    assert m3.shape == (2, 12, 256) and np.isfinite(m3).all()
    np.testing.assert_array_equal(m3, m4)
    np.testing.assert_array_equal(s3, s4)


def test_onset_model_exports_to_onnx_and_matches_torch(onset_set, tmp_path):
    import onnxruntime as ort

    from engine.serve.backends.ort import OrtBackend
    from engine.serve.export import check_passes, check_reconstruction, ensure_onnx
    from engine.serve.runtime import TorchBackend, WindowRequest, prepare_batch

    e = ckpt.load_model(onset_set)
    _perturbed(e.model, seed=3)
    d = ensure_onnx(e, tmp_path / "cache")
    s = ort.InferenceSession(str(d / "encode.onnx"), providers=["CPUExecutionProvider"])
    ppg_in = next(i for i in s.get_inputs() if i.name == "ppg")
    assert ppg_in.shape[1:] == [4, 256]
    n = torch.get_num_threads()
    try:
        assert max(check_passes(e, d, batch=2).values()) < 1e-4
        r = check_reconstruction(e, d, batch=2, steps=3, k=2)
        assert r["mean"] < 1e-4 and r["std"] < 1e-4, r
        # the live hand-over gives 3 channels: the ONNX backend completes them like torch does
        raw = fake_synthesize(2, seed=8, duration_s=2.0)
        reqs = [WindowRequest(f"p{i}", 1e9, FS, raw["ppg"][i]) for i in range(2)]
        f3, demo, mask = prepare_batch(reqs)
        m_ref, _ = TorchBackend(e, steps=3, k=1, seed=2, threads=1).run(f3, demo, mask)
        m, _ = OrtBackend(e, steps=3, k=1, seed=2, threads=1, model_dir=d).run(f3, demo, mask)
    finally:
        torch.set_num_threads(n)
    assert np.max(np.abs(m - m_ref)) / np.max(np.abs(m_ref)) < 1e-4


# -- beat map as conditioning (rpeak_cond), window-conditioned frequency stage (deblur_cond) ---


def test_new_switches_start_as_the_plain_model_and_add_only_their_own_parameters():
    plain_cfg = ModelConfig(**TINY)
    torch.manual_seed(0)
    plain = P2ES(plain_cfg).eval()
    torch.manual_seed(0)
    new = P2ES(ModelConfig(**TINY, rpeak_cond=True, deblur_cond=True)).eval()
    old_names = dict(plain.named_parameters())
    extra = [n for n, _ in new.named_parameters() if n not in old_names]
    assert extra and all(n.startswith("beat.") for n in extra), extra
    for n, p in plain.named_parameters():  # built last: every older parameter is drawn the same
        assert torch.equal(p, dict(new.named_parameters())[n]), n
    g = torch.Generator().manual_seed(1)
    ppg, demo = torch.randn(3, 3, 256, generator=g), torch.randn(3, 5, generator=g)
    x, t = torch.randn(3, 8, 256, generator=g), torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        c = new.encode(ppg, demo)
        assert c.rpeak is not None and c.rpeak.shape == (3, 256)
        # zero-initialised injection and log-gain: a fresh model computes what the plain one does
        torch.testing.assert_close(new.denoise(x, t, c), plain.denoise(x, t, plain.encode(ppg, demo)))
        assert c.repeat_interleave(2).rpeak.shape == (6, 256)
    with pytest.raises(P2esError, match="exclusive"):
        ModelConfig(rpeak_head=True, rpeak_cond=True)


def test_beat_map_steers_the_denoiser_and_its_loss_trains(raw):
    cfg = _train_cfg(w_rpeak=1.0, w_mse=0.0, w_spec=0.0, w_contrast=0.0, model={"rpeak_cond": True})
    torch.manual_seed(0)
    model, schedule = build(cfg)
    model.train()
    batch = prepare(raw, rpeak=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    V = dct_matrix(256)
    seen = []
    for _ in range(20):
        gen = torch.Generator().manual_seed(100)
        loss, terms, cond, _ = loss_terms(model, schedule, batch, cfg, gen, V, contextlib.nullcontext)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(terms["rpeak"])
    assert cond.rpeak is not None
    assert np.mean(seen[-5:]) < 0.6 * np.mean(seen[:5]), seen
    _perturbed(model, seed=4)  # once inject is non-zero the beat map changes the x0 prediction
    with torch.no_grad():
        c = model.encode(batch["ppg"], batch["demo"], batch["demo_mask"])
        assert model.beat is not None
        c2 = model.encode(batch["ppg"], batch["demo"], batch["demo_mask"])
        c2.ppg[0] = c2.ppg[0] - model.beat.inject(torch.sigmoid(c2.rpeak)[:, None, :])
        x, t = torch.randn(6, 8, 256), torch.full((6,), 0.3)
        assert not torch.allclose(model.denoise(x, t, c), model.denoise(x, t, c2))


def test_rpeak_cond_set_trains_saves_and_exports(tmp_path):
    from engine.serve.export import check_passes, ensure_onnx

    path = tmp_path / "set.pt"
    res = train(_train_cfg(steps=2, w_rpeak=0.5, model={"rpeak_cond": True, "deblur_cond": True}), path)
    assert all(np.isfinite(h["rpeak"]) for h in res["history"])
    e = ckpt.load_model(path)
    assert e.model_config.rpeak_cond and e.model_config.deblur_cond and e.model.beat is not None
    _perturbed(e.model, seed=5)
    d = ensure_onnx(e, tmp_path / "cache")
    errs = check_passes(e, d, batch=2)
    assert errs and max(errs.values()) < 1e-4, errs


def test_timestep_spacing_concentrates_steps_at_low_t():
    s = make_schedule(variant("p2es")[1], 256)
    u = s.timesteps(10).numpy()
    q = s.timesteps(10, 2.0).numpy()
    np.testing.assert_allclose(u, np.linspace(1, 0, 11), atol=1e-7)
    assert q[0] == 1.0 and q[-1] == 0.0 and np.all(np.diff(q) < 0)
    assert (q < 0.15).sum() == 4 and (u < 0.15).sum() == 2  # 0.09, 0.04, 0.01, 0 vs 0.1, 0
    with pytest.raises(P2esError, match="spacing"):
        s.timesteps(10, 0.0)


# -- demographic alignment (pat_align) -----------------------------------------------------------


def test_shift_earlier_matches_a_float64_reference():
    from engine.model.network import shift_earlier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 50))
    shift = np.array([0.0, 7.0, 12.25])

    def reference(row: np.ndarray, s: float) -> np.ndarray:  # y[i] = x[i + s] of the zero-padded x
        padded = np.concatenate([[0.0], row, [0.0]])
        return np.interp(np.arange(row.size) + s, np.arange(-1, row.size + 1), padded, left=0.0, right=0.0)

    want = np.stack([[reference(x[b, c], shift[b]) for c in range(2)] for b in range(3)])
    got = shift_earlier(torch.from_numpy(x), torch.from_numpy(shift)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_array_equal(got[0], x[0])
    s = torch.tensor([3.3], dtype=torch.float64, requires_grad=True)
    shift_earlier(torch.from_numpy(x[:1]), s).sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_pat_align_starts_as_the_plain_model_then_learns_pat_from_demographics(raw):
    torch.manual_seed(0)
    plain = P2ES(ModelConfig(**TINY)).eval()
    torch.manual_seed(0)
    new = P2ES(ModelConfig(**TINY, pat_align=True)).eval()
    g = torch.Generator().manual_seed(1)
    ppg, demo = torch.randn(3, 3, 256, generator=g), torch.randn(3, 5, generator=g)
    x, t = torch.randn(3, 8, 256, generator=g), torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        c = new.encode(ppg, demo)
        assert c.pat is not None and torch.allclose(c.pat, torch.full((3,), 0.2))
        torch.testing.assert_close(new.denoise(x, t, c), plain.denoise(x, t, plain.encode(ppg, demo)))
    cfg = _train_cfg(w_pat=1.0, w_mse=0.0, w_spec=0.0, w_contrast=0.0, model={"pat_align": True})
    torch.manual_seed(0)
    model, schedule = build(cfg)
    batch = prepare(raw, pat=True)
    assert batch["pat"].shape == (6,) and torch.isfinite(batch["pat"]).all()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []
    for _ in range(60):
        loss, terms, _, _ = loss_terms(
            model,
            schedule,
            batch,
            cfg,
            torch.Generator().manual_seed(100),
            dct_matrix(256),
            contextlib.nullcontext,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(terms["pat"])
    assert seen[-1] < 0.05 * seen[0], seen  # the stand-in's PAT (0.18 + 0.002 age) is learned
    with pytest.raises(P2esError, match="pat_align"):
        train(_train_cfg(w_pat=1.0), "/nonexistent/never-written.pt")


def test_pat_align_set_trains_and_exports(tmp_path):
    from engine.serve.export import check_passes, ensure_onnx

    path = tmp_path / "set.pt"
    res = train(_train_cfg(steps=2, w_pat=0.5, model={"pat_align": True}), path)
    assert all(np.isfinite(h["pat"]) for h in res["history"])
    e = ckpt.load_model(path)
    assert e.model_config.pat_align and e.model.pat is not None
    _perturbed(e.model, seed=6)
    errs = check_passes(e, ensure_onnx(e, tmp_path / "cache"), batch=2)
    assert errs and max(errs.values()) < 1e-4, errs


def test_pat_mode_only_feeds_the_shifted_copy_through_the_plain_encoder():
    """``pat_mode "only"``: the network is the plain one run on the PPG moved earlier by the
    predicted PAT (no second stem); a fresh head predicts 0.2 s, so the shift is 0.2 s."""
    from engine.model.network import shift_earlier

    torch.manual_seed(0)
    plain = P2ES(ModelConfig(**TINY)).eval()
    torch.manual_seed(0)
    only = P2ES(ModelConfig(**TINY, pat_align=True, pat_mode="only")).eval()
    assert only.pat_stem is None
    g = torch.Generator().manual_seed(2)
    ppg, demo = torch.randn(3, 3, 256, generator=g), torch.randn(3, 5, generator=g)
    x, t = torch.randn(3, 8, 256, generator=g), torch.tensor([0.2, 0.5, 0.9])
    fs = only.cfg.fs
    with torch.no_grad():
        c = only.encode(ppg, demo)
        assert c.pat is not None and torch.allclose(c.pat, torch.full((3,), 0.2))
        moved = shift_earlier(ppg, torch.full((3,), 0.2 * fs))
        want = plain.denoise(x, t, plain.encode(moved, demo))
        torch.testing.assert_close(only.denoise(x, t, c), want)
        # and it is not the unshifted input
        assert not torch.allclose(only.denoise(x, t, c), plain.denoise(x, t, plain.encode(ppg, demo)))


def test_pat_ppg_head_reads_the_pulse_and_exports(tmp_path):
    from engine.serve.export import check_passes, ensure_onnx

    head_cfg = ModelConfig(**TINY, pat_align=True, pat_mode="only", pat_ppg=True)
    m = P2ES(head_cfg).eval()
    assert m.pat is not None and m.pat.ppg_net is not None
    _perturbed(m, seed=3)
    g = torch.Generator().manual_seed(4)
    ppg, demo = torch.randn(2, 3, 256, generator=g), torch.randn(2, 5, generator=g)
    with torch.no_grad():
        a = m.encode(ppg, demo).pat
        b = m.encode(2.0 * ppg, demo).pat
    assert a is not None and b is not None and (a - b).abs().max() > 1e-4  # the PPG moves the PAT
    for bad in ({"pat_mode": "only"}, {"pat_ppg": True}, {"pat_align": True, "pat_mode": "sideways"}):
        with pytest.raises(P2esError, match="pat_"):
            ModelConfig(**TINY, **bad)
    path = tmp_path / "set.pt"
    res = train(
        _train_cfg(steps=2, w_pat=0.5, model={"pat_align": True, "pat_mode": "only", "pat_ppg": True}), path
    )
    assert all(np.isfinite(h["pat"]) for h in res["history"])
    e = ckpt.load_model(path)
    assert e.model_config.pat_mode == "only" and e.model_config.pat_ppg
    _perturbed(e.model, seed=6)
    errs = check_passes(e, ensure_onnx(e, tmp_path / "cache"), batch=2)
    assert errs and max(errs.values()) < 1e-4, errs


def test_pat_teacher_shifts_by_the_true_pat_where_given_and_is_validated():
    """``shift_pat`` (TrainConfig.pat_teacher): finite rows are shifted by it, NaN rows by the
    head's prediction; Cond.pat stays the prediction (the PAT loss still trains the head)."""
    from engine.model.network import shift_earlier
    from engine.model.train import _teacher_pat

    torch.manual_seed(0)
    plain = P2ES(ModelConfig(**TINY)).eval()
    torch.manual_seed(0)
    only = P2ES(ModelConfig(**TINY, pat_align=True, pat_mode="only")).eval()
    g = torch.Generator().manual_seed(5)
    ppg, demo = torch.randn(2, 3, 256, generator=g), torch.randn(2, 5, generator=g)
    x, t = torch.randn(2, 8, 256, generator=g), torch.tensor([0.3, 0.7])
    true_pat = torch.tensor([0.31, float("nan")])
    with torch.no_grad():
        c = only.encode(ppg, demo, shift_pat=true_pat)
        assert c.pat is not None and torch.allclose(c.pat, torch.full((2,), 0.2))
        moved = shift_earlier(ppg, torch.tensor([0.31, 0.2]) * only.cfg.fs)
        torch.testing.assert_close(only.denoise(x, t, c), plain.denoise(x, t, plain.encode(moved, demo)))
    batch = {"pat": torch.tensor([0.2, 0.25, float("nan"), 0.3] * 64)}
    picked = _teacher_pat(batch, _train_cfg(w_pat=1.0, pat_teacher=0.5), torch.Generator().manual_seed(0))
    assert picked is not None
    share = float(torch.isfinite(picked).float().mean())
    assert 0.25 < share < 0.5  # half of the 3/4 of windows that have a PAT
    assert torch.isnan(picked[2::4]).all()
    assert _teacher_pat(batch, _train_cfg(), torch.Generator()) is None
    for bad in ({"pat_teacher": 1.5, "w_pat": 1.0}, {"pat_teacher": 0.5}):
        with pytest.raises(P2esError, match="pat-teacher"):
            _train_cfg(**bad)
