"""Fast checks of the engine core: DCT, schedules vs a float64 reference, model invariants,
sampler, training, checkpoints.  Tiny configs, one thread, stand-in data (< 60 s total)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch

from engine.model import checkpoint as ckpt
from engine.model.config import SamplerConfig, ScheduleConfig, from_dict, to_dict, variant
from engine.model.data import demographics, fake_synthesize, prepare
from engine.model.groups import demographic_positives, fit_groups, supcon_loss
from engine.model.network import P2ES
from engine.model.preprocess import ppg_features
from engine.model.sampler import sample
from engine.model.schedule import (
    BlurringSchedule,
    GaussianSchedule,
    dct_matrix,
    reference_q_sample,
    reference_step,
)
from engine.model.train import TrainConfig, train
from p2es.errors import P2esError
from p2es.leads import einthoven_residual

TINY = dict(T=256, widths=(8, 16, 16), emb_dim=32, n_groups=4, group_dim=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(name="p2es", seed=0):
    torch.manual_seed(seed)
    mc, sc = variant(name, **TINY)
    from engine.model.schedule import make_schedule

    return P2ES(mc).eval(), make_schedule(sc, mc.T)


@pytest.fixture(scope="module")
def batch():
    return prepare(fake_synthesize(6, seed=3, duration_s=2.0), ecg_scale=2.0)


# -- diffusion -------------------------------------------------------------------------


@pytest.mark.parametrize("T", [8, 257, 1024])
def test_dct_matrix_equals_scipy(T):
    V = dct_matrix(T).double().numpy()
    x = np.random.default_rng(0).standard_normal((3, T))
    np.testing.assert_allclose(x @ V.T, scipy.fft.dct(x, type=2, norm="ortho", axis=-1), atol=1e-5)
    np.testing.assert_allclose(V @ V.T, np.eye(T), atol=1e-5)


@pytest.mark.parametrize("cls,blur", [(BlurringSchedule, True), (GaussianSchedule, False)])
def test_q_sample_matches_reference(cls, blur):
    cfg = ScheduleConfig(kind="blur" if blur else "gaussian")
    T, rng = 128, np.random.default_rng(1)
    sch = cls(T, cfg)
    x0 = rng.standard_normal((4, 2, T))
    noise = rng.standard_normal((4, 2, T))
    ts = [0.0, 0.13, 0.6, 1.0]
    got = (
        sch.q_sample(
            torch.tensor(x0, dtype=torch.float32), torch.tensor(ts), torch.tensor(noise, dtype=torch.float32)
        )
        .double()
        .numpy()
    )
    for i, t in enumerate(ts):
        ref = reference_q_sample(x0[i], t, noise[i], cfg, blur=blur)
        np.testing.assert_allclose(got[i], ref, atol=2e-5)


@pytest.mark.parametrize("blur", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_step_matches_reference(blur, eta):
    cfg = ScheduleConfig(kind="blur" if blur else "gaussian")
    T, rng = 96, np.random.default_rng(2)
    sch = (BlurringSchedule if blur else GaussianSchedule)(T, cfg)
    xt, x0h, z = (rng.standard_normal((3, 8, T)) for _ in range(3))
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    for t, s in [(1.0, 0.9), (0.55, 0.3), (0.2, 0.1)]:
        got = sch.step(f(xt), f(x0h), t, s, eta=eta, noise=f(z)).double().numpy()
        ref = np.stack(
            [reference_step(xt[i], x0h[i], t, s, cfg, blur=blur, eta=eta, z=z[i]) for i in range(3)]
        )
        np.testing.assert_allclose(got, ref, atol=5e-5, rtol=1e-4)


def test_blur_endpoints():
    T, fs = 1024, 128.0
    sch = BlurringSchedule(T, ScheduleConfig())
    n = torch.arange(T, dtype=torch.float64)
    # DCT basis cosines at 0.5 Hz and 20 Hz (k = f * 2T / fs): no leakage from window edges
    x = torch.stack([torch.cos(math.pi * k * (2 * n + 1) / (2 * T)) for k in (8, 320)])[None].float()
    zero = torch.zeros_like(x)
    # t -> 0: identity (up to alpha_0 = 1 - eps)
    np.testing.assert_allclose(sch.q_sample(x, 0.0, zero).numpy(), x.numpy(), atol=2e-4)
    # t = 1: the blur operator D_1 removes everything above a few Hz
    V = dct_matrix(T)
    d1 = sch.blur(torch.ones(1))[0]
    blurred = (x @ V.T * d1) @ V
    assert blurred[0, 1].abs().max() < 1e-2  # 20 Hz gone
    assert blurred[0, 0].abs().max() > 0.85  # 0.5 Hz kept (gain exp(-0.12))
    f_hz = torch.arange(T) * fs / (2 * T)
    assert float(d1[f_hz >= 3.0].max()) < 0.02
    assert sch.alpha_sigma(torch.ones(1))[0].item() < 1e-6  # pure noise at t = 1


# -- model / sampler ---------------------------------------------------------------------


def test_einthoven_by_construction(batch):
    model, sch = tiny_model()
    x8 = 3.0 * torch.randn(6, 8, 256)
    with torch.no_grad():
        ecg = model.to_12(model(x8, torch.rand(6), batch["ppg"], batch["demo"], batch["demo_mask"]) * 50)
    assert float(ecg.abs().max()) > 1.0  # a non-trivial output
    assert einthoven_residual(ecg.numpy()) <= 1e-5
    assert einthoven_residual(model.to_12(x8).numpy()) <= 1e-5


def test_sampler_shapes_determinism_and_spread(batch):
    model, sch = tiny_model("p2es")
    kw = dict(steps=4, k=3)
    r1 = sample(
        model,
        sch,
        batch["ppg"],
        (batch["demo"], batch["demo_mask"]),
        **kw,
        generator=torch.Generator().manual_seed(7),
    )
    r2 = sample(
        model,
        sch,
        batch["ppg"],
        (batch["demo"], batch["demo_mask"]),
        **kw,
        generator=torch.Generator().manual_seed(7),
    )
    assert r1.mean.shape == (6, 12, 256) and r1.std.shape == (6, 12, 256)
    assert r1.samples.shape == (6, 3, 12, 256)
    assert torch.equal(r1.mean, r2.mean) and torch.equal(r1.samples, r2.samples)
    assert float(r1.std.mean()) > 0
    assert einthoven_residual(r1.samples.numpy(), axis=-2) <= 1e-5
    r3 = sample(
        model, sch, batch["ppg"], None, steps=2, k=2, eta=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert torch.isfinite(r3.mean).all()

    reg, rsch = tiny_model("unet_regression")
    r = sample(reg, rsch, batch["ppg"], (batch["demo"], batch["demo_mask"]), steps=10, k=5)
    assert r.mean.shape == (6, 12, 256) and r.samples is None
    assert float(r.std.abs().max()) == 0.0


@pytest.mark.parametrize("name", ["p2es", "p2es_no_groups", "ddpm"])
def test_missing_demographics(batch, name):
    model, sch = tiny_model(name)
    demo_nan = torch.full((6, 5), float("nan"))
    r = sample(model, sch, batch["ppg"], demo_nan, steps=2, k=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(r.mean).all() and torch.isfinite(r.std).all()
    v, m = demographics(age=[np.nan] * 2, sex=[np.nan, 3], height_cm=None, weight_kg=[np.nan, 80.0])
    assert m.sum() == 1 and np.isfinite(v).all()


def test_param_counts_and_variants():
    for name in [
        "p2es",
        "unet_regression",
        "ddpm",
        "p2es_no_blur",
        "p2es_no_groups",
        "p2es_no_deblur",
        "cardiogan",
    ]:
        mc, _ = variant(name)
        n = P2ES(mc).num_params()
        assert 2e5 < n < 1e6, (name, n)


# -- groups / data ------------------------------------------------------------------------


def test_group_fit_recovers_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    lab = torch.arange(200) % 4
    Z = torch.nn.functional.normalize(centres[lab] + 0.05 * torch.randn(200, 8, generator=g), dim=-1)
    c, got = fit_groups(Z, 4, seed=0)
    # same partition up to a permutation
    pairs = {(int(a), int(b)) for a, b in zip(lab, got)}
    assert len(pairs) == 4
    c2, got2 = fit_groups(Z, 4, seed=0)
    assert torch.equal(got, got2)
    c3, got3 = fit_groups(Z, 4, init=c, seed=5)  # warm start keeps identities
    assert torch.equal(got, got3)


def test_contrastive_positives_and_loss():
    demo = torch.tensor([[0.5, 1, 0, 0, 0], [0.52, 1, 0, 0, 0], [0.2, -1, 1, 1, 1], [0, 0, 0, 0, 0]])
    mask = torch.ones(4, 5)
    mask[3] = 0
    pos = demographic_positives(demo, mask, k=1)
    assert pos[0, 1] and pos[1, 0] and not pos[3].any() and not pos.diagonal().any()
    z = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    loss = supcon_loss(z, pos, 0.1)
    assert torch.isfinite(loss)


def test_ppg_features_zscored():
    raw = fake_synthesize(3, seed=0, duration_s=2.0)
    f = ppg_features(raw["ppg"], 128.0)
    assert f.shape == (3, 3, 256) and f.dtype == np.float32
    np.testing.assert_allclose(f.std(-1), 1.0, atol=1e-3)


# -- training / checkpoints ----------------------------------------------------------------


def _tiny_train_cfg(**kw):
    base = dict(
        variant="p2es",
        model={k: v for k, v in TINY.items() if k != "T"},
        steps=60,
        batch_size=8,
        lr=3e-3,
        warmup=5,
        data="fake",
        duration_s=2.0,
        chunk_records=32,
        ckpt_every=0,
        group_refit_every=20,
        group_reservoir=64,
        log_every=10,
        progress=False,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _fixed_eval_loss(model, sch, data):
    g = torch.Generator().manual_seed(123)
    x0 = data["x0"]
    t = torch.linspace(0.05, 0.95, x0.shape[0])
    x_t = sch.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    with torch.no_grad():
        return float(((model(x_t, t, data["ppg"], data["demo"], data["demo_mask"]) - x0) ** 2).mean())


def test_training_reduces_loss_and_round_trips(tmp_path):
    data = prepare(fake_synthesize(16, seed=99, duration_s=2.0), ecg_scale=2.0)
    cfg = _tiny_train_cfg()
    from engine.model.train import build

    torch.manual_seed(cfg.seed)
    m0, sch = build(cfg)
    before = _fixed_eval_loss(m0.eval(), sch, data)
    out = tmp_path / "set.pt"
    res = train(cfg, out)
    after = _fixed_eval_loss(res["model"], sch, data)
    assert after < 0.7 * before, (before, after)
    assert int(res["model"].groups.bank_fits) >= 1

    # round trip: identical outputs from the stored (fp32) EMA weights
    e = ckpt.load_model(out, "p2es")
    x = torch.randn(2, 8, 256)
    t = torch.tensor([0.3, 0.8])
    args = (x, t, data["ppg"][:2], data["demo"][:2], data["demo_mask"][:2])
    with torch.no_grad():
        assert torch.equal(res["model"](*args), e.model(*args))
    assert e.meta["steps"] == 60 and e.train_config["variant"] == "p2es"
    assert torch.equal(e.model.groups.bank, res["model"].groups.bank)

    # fp16 storage, second model in the same set
    ckpt.add_to_set(out, "p2es_half", ckpt.pack(res["model"], sch, half=True))
    assert set(ckpt.list_models(out)) == {"p2es", "p2es_half"}
    eh = ckpt.load_model(out, "p2es_half")
    with torch.no_grad():
        torch.testing.assert_close(eh.model(*args), e.model(*args), atol=5e-2, rtol=5e-2)
    assert next(eh.model.parameters()).dtype == torch.float32


def test_resume_is_exact(tmp_path):
    cfg = _tiny_train_cfg(steps=4, variant="p2es_no_deblur", group_refit_every=2, ckpt_every=2, log_every=1)
    full = train(cfg, tmp_path / "a.pt")
    train(_tiny_train_cfg(**{**cfg.__dict__, "steps": 2}), tmp_path / "b.pt")
    res = train(cfg, tmp_path / "b.pt", resume=True)
    for (n, p), q in zip(full["model"].state_dict().items(), res["model"].state_dict().values()):
        assert torch.equal(p, q), n


def test_cardiogan_trains_with_both_discriminators_and_resumes_exactly(tmp_path):
    """The adversarial baseline: generator = the regression UNet (inference needs nothing
    else), two discriminators whose state travels in the resume file (a resumed run equals an
    uninterrupted one), and a set entry that samples like any regression model."""
    from engine.model.adversarial import Discriminators

    cfg = _tiny_train_cfg(steps=4, variant="cardiogan", ckpt_every=2, log_every=1)
    full = train(cfg, tmp_path / "a.pt")
    assert {"adv", "disc"} <= set(full["history"][-1])
    train(_tiny_train_cfg(**{**cfg.__dict__, "steps": 2}), tmp_path / "b.pt")
    res = train(cfg, tmp_path / "b.pt", resume=True)
    for (n, p), q in zip(full["model"].state_dict().items(), res["model"].state_dict().values()):
        assert torch.equal(p, q), n
    st = ckpt.load_resume(ckpt.resume_path(tmp_path / "b.pt", "cardiogan"))
    assert "disc" in st and "opt_d" in st
    e = ckpt.load_model(tmp_path / "a.pt", "cardiogan")
    assert e.model_config.diffusion == "none" and e.model.groups is None
    feats = torch.randn(2, 3, TINY["T"])
    r = sample(e.model, e.schedule, feats, None, steps=10, k=3)
    assert r.samples is None and torch.count_nonzero(r.std) == 0

    # the discriminators tell real ECG from a blurred copy after a few steps
    data = prepare(fake_synthesize(32, seed=3, duration_s=2.0), ecg_scale=2.0)
    real = data["x0"]
    fake = torch.nn.functional.avg_pool1d(real, 9, stride=1, padding=4)
    torch.manual_seed(0)
    d = Discriminators(8, 3, 128.0)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.999))
    with torch.no_grad():
        first = float(d.d_loss(real, fake, data["ppg"]))
    for _ in range(30):
        loss = d.d_loss(real, fake, data["ppg"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(d.d_loss(real, fake, data["ppg"])) < 0.5 * first
        assert float(d.g_loss(fake, data["ppg"])) > float(d.g_loss(real, data["ppg"]))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(P2esError, match="not found"):
        ckpt.load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(P2esError, match="corrupt"):
        ckpt.load_model(bad)
    model, sch = tiny_model()
    ckpt.save_set(tmp_path / "s.pt", {"p2es": ckpt.pack(model, sch)})
    with pytest.raises(P2esError, match="not in"):
        ckpt.load_model(tmp_path / "s.pt", "ddpm")


def test_merge_sets_copies_models_exactly_and_refuses_clashes(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    m1, s1 = tiny_model()
    m2, s2 = tiny_model(seed=1)
    ckpt.save_set(a, {"p2es": ckpt.pack(m1, s1, meta={"seed": 0}), "ddpm": ckpt.pack(m1, s1)})
    ckpt.save_set(b, {"p2es": ckpt.pack(m2, s2, meta={"seed": 1})})
    out = tmp_path / "out.pt"
    origin = ckpt.merge_sets(out, [(a, "p2es", "p2es"), (b, "p2es", "p2es_seed1")])
    assert list(origin) == ["p2es", "p2es_seed1"]
    got = ckpt.load_set(out)
    assert got["p2es_seed1"].meta == {"seed": 1}
    for name, ref in (("p2es", m1), ("p2es_seed1", m2)):
        for k, v in ref.state_dict().items():
            assert torch.equal(got[name].model.state_dict()[k], v.float()), (name, k)
    # a name twice, a missing model: one-line errors, nothing written
    with pytest.raises(P2esError, match="given twice"):
        ckpt.merge_sets(tmp_path / "x.pt", [(a, "p2es", "p2es"), (b, "p2es", "p2es")])
    with pytest.raises(P2esError, match="not in"):
        ckpt.merge_sets(tmp_path / "x.pt", [(b, "ddpm", "ddpm")])
    assert not (tmp_path / "x.pt").exists()


def test_sampler_temperature_scales_the_start_and_defaults_to_the_learned_distribution(batch):
    model, sch = tiny_model()
    x = batch["ppg"][:2]
    dm = (batch["demo"][:2], batch["demo_mask"][:2])
    noise = torch.randn(2, model.cfg.n_leads, x.shape[-1], generator=torch.Generator().manual_seed(4))
    plain = sample(model, sch, x, dm, steps=3, noise=noise).mean
    assert torch.equal(sample(model, sch, x, dm, steps=3, noise=noise, temperature=1.0).mean, plain)
    cool = sample(model, sch, x, dm, steps=3, noise=noise, temperature=0.5).mean
    assert torch.allclose(cool, sample(model, sch, x, dm, steps=3, noise=0.5 * noise).mean, atol=1e-6)
    assert not torch.allclose(cool, plain)
    # ancestral steps: the per-step noise is scaled too, so temperature 0 is deterministic
    g = [torch.Generator().manual_seed(s) for s in (1, 2)]
    a, b = (sample(model, sch, x, dm, steps=3, eta=1.0, generator=gg, temperature=0.0).mean for gg in g)
    assert torch.equal(a, b)
    with pytest.raises(P2esError, match="temperature"):
        sample(model, sch, x, dm, steps=3, temperature=1.5)


# -- sampler config: saved with the model (checkpoint format version 3) -------------------------


def test_sampler_config_validates_its_temperature():
    assert SamplerConfig().temperature == 1.0
    assert to_dict(SamplerConfig(0.7)) == {"temperature": 0.7}
    assert from_dict(SamplerConfig, {"temperature": 0}) == SamplerConfig(0.0)
    for bad in (1.5, -0.1, float("nan"), float("inf"), True, "0.7", None):
        with pytest.raises(P2esError, match="temperature") as ei:
            SamplerConfig(bad)
        assert "\n" not in str(ei.value)
    with pytest.raises(P2esError, match="unknown field"):
        from_dict(SamplerConfig, {"temperature": 0.7, "tempreature": 0.5})


def _write_old_set(path, version, models):
    """A set as format version 1 or 2 wrote it: no sampler_config in any entry."""
    for m in models.values():
        m.pop("sampler_config")
        if version == 1:
            m["schedule_config"].pop("blur_power")
    torch.save({"format": ckpt.FORMAT, "version": version, "models": models}, path)


@pytest.mark.parametrize("version", [1, 2])
def test_old_set_without_sampler_config_loads_at_temperature_1_and_samples_as_before(
    tmp_path, batch, version
):
    model, sch = tiny_model()
    path = tmp_path / f"v{version}.pt"
    _write_old_set(path, version, {"p2es": ckpt.pack(model, sch)})
    assert "sampler_config" not in torch.load(path, weights_only=True)["models"]["p2es"]
    e = ckpt.load_model(path)
    assert e.sampler_config == SamplerConfig() and e.sampler_config.temperature == 1.0
    assert ckpt.read_set(path)["version"] == ckpt.VERSION == 3  # migrated on reading
    # the evaluation path samples it exactly as an explicit temperature 1 (bit-identical)
    from engine.model.evaluate import sample_windows

    args = (batch["ppg"][:3], batch["demo"][:3], batch["demo_mask"][:3])
    kw = dict(steps=2, k=2, batch=2, seed=1, desc="", progress=False)
    got, want = sample_windows(e, *args, **kw), sample_windows(e, *args, temperature=1.0, **kw)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_set_sampler_round_trip_and_refusals_leave_the_file_untouched(tmp_path, batch):
    m1, s1 = tiny_model()
    m2, s2 = tiny_model("ddpm", seed=1)
    path = tmp_path / "s.pt"
    _write_old_set(path, 2, {"p2es": ckpt.pack(m1, s1, half=True), "ddpm": ckpt.pack(m2, s2)})
    loaded = ckpt.load_set(path)
    old = ckpt.set_sampler(path, "p2es", SamplerConfig(0.7))
    assert old == SamplerConfig(1.0)
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == 3
    assert raw["models"]["p2es"]["sampler_config"] == {"temperature": 0.7}
    assert raw["models"]["ddpm"]["sampler_config"] == {"temperature": 1.0}  # migrated, explicit
    assert raw["models"]["p2es"]["weights_dtype"] == "float16"  # weights as stored, not re-encoded
    got = ckpt.load_set(path)
    assert got["p2es"].sampler_config.temperature == 0.7 and got["ddpm"].sampler_config.temperature == 1.0
    for name in ("p2es", "ddpm"):  # the weights are exactly what they were
        want = loaded[name].model.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in got[name].model.state_dict().items()), name
    assert ckpt.set_sampler(path, "p2es", SamplerConfig(0.5)).temperature == 0.7
    assert ckpt.load_model(path).sampler_config.temperature == 0.5
    # the evaluation path follows the saved temperature; an explicit one wins
    from engine.model.evaluate import sample_windows

    args = (batch["ppg"][:2], batch["demo"][:2], batch["demo_mask"][:2])
    kw = dict(steps=2, k=1, batch=2, seed=1, desc="", progress=False)
    e = ckpt.load_model(path)
    saved = sample_windows(e, *args, **kw)[0]
    assert np.array_equal(saved, sample_windows(e, *args, temperature=0.5, **kw)[0])
    assert not np.allclose(saved, sample_windows(e, *args, temperature=1.0, **kw)[0], atol=1e-4)
    # an unknown model, a bad config, a missing set: one line, the file byte-identical
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.raises(P2esError, match="'nope' not in") as ei:
        ckpt.set_sampler(path, "nope", SamplerConfig(0.7))
    assert "\n" not in str(ei.value)
    with pytest.raises(P2esError, match="SamplerConfig"):
        ckpt.set_sampler(path, "p2es", {"temperature": 0.7})  # type: ignore[arg-type]
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    with pytest.raises(P2esError, match="not found"):
        ckpt.set_sampler(tmp_path / "missing.pt", "p2es", SamplerConfig(0.7))
    assert not (tmp_path / "missing.pt").exists() and not (tmp_path / "missing.pt.lock").exists()


def test_pack_stores_the_sampler_config(tmp_path):
    model, sch = tiny_model()
    path = tmp_path / "s.pt"
    ckpt.save_set(
        path, {"a": ckpt.pack(model, sch, sampler_config=SamplerConfig(0.3)), "b": ckpt.pack(model, sch)}
    )
    got = ckpt.load_set(path)
    assert got["a"].sampler_config.temperature == 0.3 and got["b"].sampler_config.temperature == 1.0
    raw = torch.load(path, weights_only=True)
    raw["models"]["a"]["sampler_config"] = {"temperature": 1.2}  # written by hand: refused on load
    torch.save(raw, path)
    with pytest.raises(P2esError, match="temperature"):
        ckpt.load_model(path, "a")


def test_cli_set_sampler(tmp_path, capsys):
    from p2es.cli import main as cli_main

    model, sch = tiny_model()
    path = tmp_path / "s.pt"
    ckpt.save_set(path, {"p2es": ckpt.pack(model, sch)})

    def run(*argv):
        try:
            rc = cli_main(["set-sampler", *argv])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
        return rc, capsys.readouterr()

    rc, cap = run("--checkpoint", str(path), "--model", "p2es", "--temperature", "0.7")
    assert rc == 0 and "temperature 1 -> 0.7" in cap.out
    assert ckpt.load_model(path).sampler_config.temperature == 0.7
    before = path.read_bytes()
    cases = [
        (["--checkpoint", str(path), "--model", "nope", "--temperature", "0.5"], "'nope' not in"),
        (["--checkpoint", str(path), "--temperature", "1.5"], "temperature must be"),
        (["--checkpoint", str(path), "--temperature", "-0.1"], "temperature must be"),
        (["--checkpoint", str(path), "--temperature", "nan"], "finite number"),
        (["--checkpoint", str(path), "--temperature", "warm"], "expected a number"),
        (["--checkpoint", str(tmp_path / "missing.pt"), "--temperature", "0.5"], "not found"),
        (["--checkpoint", str(path)], "--temperature"),
    ]
    for argv, needle in cases:
        rc, cap = run(*argv)
        err = cap.err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (argv, err)
        assert "Traceback" not in cap.err
    assert path.read_bytes() == before
