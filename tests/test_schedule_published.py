"""The blur schedule as published (Hoogeboom & Salimans, "Blurring Diffusion Models", ICLR 2023)
and the checkpoint migration that keeps format-version-1 sets on the legacy schedule.

The paper's forward process, written here from the paper and not from engine.model.schedule:

* blurring is the heat equation ``dx/dtau = Laplacian(x)`` run for time ``tau_t`` with
  reflecting (Neumann) boundaries, i.e. a Gaussian blur of std ``sigma_B,t = sqrt(2 tau_t)``;
* ``sigma_B,t = sigma_B,max * sin^2(pi t / 2)`` and ``tau_t = sigma_B,t^2 / 2``;
* the blur of frequency k is floored at ``d_min`` (``d = (1 - d_min) exp(-lambda_k tau) + d_min``)
  and the signal is scaled by the cosine schedule ``alpha_t = cos(pi t / 2)`` (here with the
  engine's ``(1 - eps)`` clip).

Eigenfunctions.  With ``a = pi k / T`` and ``b_k[n] = cos(a (n + 1/2))``, n = 0..T-1 (the DCT-II
basis), ``b_k[n-1] + b_k[n+1] = 2 cos(a) b_k[n]``, so the second difference gives
``(L b_k)[n] = (2 cos a - 2) b_k[n] = -4 sin^2(a / 2) b_k[n]`` in the interior; and the
reflecting boundary (``x[-1] = x[0]``, ``x[T] = x[T-1]``) changes nothing, because
``b_k[-1] = cos(-a/2) = b_k[0]`` and ``b_k[T] = (-1)^k cos(a/2) = b_k[T-1]``.  So the exact
eigenvalue of the discrete Neumann Laplacian is ``lambda'_k = 4 sin^2(pi k / (2T))``.  The
continuous Laplacian ``d^2/dn^2 cos(a n + phi) = -a^2 cos(a n + phi)`` gives
``lambda_k = (pi k / T)^2`` instead, and ``lambda'_k = lambda_k (1 - lambda_k / 12 + ...)``.
The schedule (and the paper) use the continuous ``lambda_k``: exactly what a Gaussian blur of a
sampled cosine does, since ``sum_m g_sigma(m) cos(a m) = exp(-a^2 sigma^2 / 2)`` up to aliasing
terms ``exp(-(2 pi - a)^2 sigma^2 / 2)`` (Poisson summation).  The tests below check the code
against that (and that it is *not* the discrete ``lambda'_k``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.model import checkpoint as ckpt
from engine.model.config import (
    BLUR_POWER_LEGACY,
    BLUR_POWER_PUBLISHED,
    ScheduleConfig,
    TrainConfig,
    to_dict,
    variant,
)
from engine.model.network import P2ES
from engine.model.schedule import BlurringSchedule, Schedule, make_schedule, reference_q_sample
from engine.model.train import build
from p2es.errors import P2esError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(T=256, widths=(8, 16, 16), emb_dim=32, n_groups=4, group_dim=8)  # as test_engine_core

FS, T_LONG = 128.0, 1024  # 8 s at 128 Hz
# a few DCT-II basis functions: k = f * 2T / fs for 0.5, 1, 3, 10 and 20 Hz (+ DC)
MODES = {0: 0.3, 8: 1.0, 16: -0.7, 48: 0.5, 160: 0.8, 320: -0.4}


def basis(k: int, T: int) -> np.ndarray:
    n = np.arange(T, dtype=np.float64)
    return np.cos(np.pi * k * (n + 0.5) / T)


def signal(T: int = T_LONG) -> np.ndarray:
    return sum(a * basis(k, T) for k, a in MODES.items())


def sigma_b_published(t: float, sigma_max: float) -> float:
    """The paper: sigma_B,t = sigma_B,max sin^2(pi t / 2)."""
    return sigma_max * math.sin(math.pi * t / 2.0) ** 2


def heat(x_modes: dict[int, float], tau: float, T: int, d_min: float = 0.0) -> np.ndarray:
    """Closed-form heat equation (continuous eigenvalues (pi k / T)^2), floored at d_min."""
    out = np.zeros(T)
    for k, a in x_modes.items():
        gain = (1.0 - d_min) * math.exp(-((math.pi * k / T) ** 2) * tau) + d_min
        out += a * gain * basis(k, T)
    return out


def gaussian_blur_reflect(x: np.ndarray, sigma: float) -> np.ndarray:
    """Time-domain Gaussian blur with std ``sigma`` samples, half-sample-symmetric boundaries
    (no DCT anywhere): normalised sampled kernel, 10 sigma wide on each side."""
    r = int(math.ceil(10.0 * sigma))
    m = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(m**2) / (2.0 * sigma**2))
    g /= g.sum()
    xp = np.pad(x, r, mode="symmetric")
    return np.convolve(xp, g, mode="valid")


def alpha(t: float, cfg: ScheduleConfig) -> float:
    return (1.0 - cfg.eps) * math.cos(math.pi * t / 2.0)


def q_no_noise(sch: BlurringSchedule, x: np.ndarray, t: float) -> np.ndarray:
    xt = torch.tensor(x, dtype=torch.float32)[None, None]
    return sch.q_sample(xt, t, torch.zeros_like(xt))[0, 0].double().numpy()


# -- the Laplacian and its eigenvalues ---------------------------------------------------


@pytest.mark.parametrize("T", [16, 256, 1024])
def test_dct_basis_is_eigenvector_of_neumann_second_difference(T):
    for k in [0, 1, 3, T // 8, T // 2, T - 1]:
        b = basis(k, T)
        xp = np.concatenate([[b[0]], b, [b[-1]]])  # reflecting boundaries
        Lb = xp[:-2] - 2.0 * xp[1:-1] + xp[2:]
        lam_discrete = 4.0 * math.sin(math.pi * k / (2.0 * T)) ** 2
        np.testing.assert_allclose(Lb, -lam_discrete * b, atol=1e-12)
        lam = (math.pi * k / T) ** 2  # continuous approximation
        assert lam_discrete <= lam + 1e-15
        assert lam - lam_discrete <= lam**2 / 12.0 + 1e-12


def test_schedule_uses_the_continuous_eigenvalue():
    """Recover lambda_k from the schedule's gains: (pi k / T)^2, not 4 sin^2(pi k / 2T)."""
    cfg = ScheduleConfig(d_min=0.0)
    sch = BlurringSchedule(T_LONG, cfg)
    t = 0.5
    tau = sigma_b_published(t, cfg.sigma_blur_max) ** 2 / 2.0
    d = sch.blur(torch.tensor([t]))[0].double().numpy()
    for k in [16, 48, 160]:  # gains large enough to invert in float32
        lam_code = -math.log(d[k]) / tau
        lam = (math.pi * k / T_LONG) ** 2
        lam_discrete = 4.0 * math.sin(math.pi * k / (2.0 * T_LONG)) ** 2
        assert abs(lam_code - lam) <= 1e-4 * lam, (k, lam_code, lam)
        if k == 160:  # 10 Hz: the two differ by ~2 %, far beyond float32 error
            assert abs(lam_code - lam_discrete) > 1e-2 * lam


# -- the published schedule vs the heat equation / a Gaussian blur --------------------------


@pytest.mark.parametrize("t", [0.05, 0.2, 0.31, 0.5, 0.8, 1.0])
def test_published_blur_is_the_heat_equation(t):
    cfg = ScheduleConfig()  # new configs: the published schedule
    assert cfg.blur_power == BLUR_POWER_PUBLISHED == 4
    sch = BlurringSchedule(T_LONG, cfg)
    tau = sigma_b_published(t, cfg.sigma_blur_max) ** 2 / 2.0
    want = alpha(t, cfg) * heat(MODES, tau, T_LONG, cfg.d_min)
    x0 = signal()
    np.testing.assert_allclose(q_no_noise(sch, x0, t), want, atol=3e-5)
    # the float64 reference follows the same field
    ref = reference_q_sample(x0, t, np.zeros(T_LONG), cfg)
    np.testing.assert_allclose(ref, want, atol=1e-10)


@pytest.mark.parametrize("t", [0.25, 0.5, 0.8, 1.0])  # sigma_B,t >= 2.9 samples
def test_published_blur_is_a_gaussian_blur_of_width_sigma_b(t):
    """No DCT in the expectation: convolve with a Gaussian of std sigma_B,t (d_min = 0)."""
    cfg = ScheduleConfig(d_min=0.0)
    sch = BlurringSchedule(T_LONG, cfg)
    x0 = signal()
    want = alpha(t, cfg) * gaussian_blur_reflect(x0, sigma_b_published(t, cfg.sigma_blur_max))
    np.testing.assert_allclose(q_no_noise(sch, x0, t), want, atol=3e-5)
    # any signal, not only DCT modes (symmetric extension + symmetric kernel = DCT-diagonal)
    x1 = np.random.default_rng(0).standard_normal(T_LONG)
    x1 = gaussian_blur_reflect(x1, 1.0)  # keep the top of the band out of the aliasing terms
    want1 = alpha(t, cfg) * gaussian_blur_reflect(x1, sigma_b_published(t, cfg.sigma_blur_max))
    np.testing.assert_allclose(q_no_noise(sch, x1, t), want1, atol=3e-5)


@pytest.mark.parametrize("t", [0.1, 0.4, 0.9])
def test_legacy_blur_power_keeps_the_old_schedule(t):
    """blur_power 2: tau = sigma_max^2 / 2 sin^2(pi t / 2), the pre-version-2 schedule."""
    cfg = ScheduleConfig(blur_power=BLUR_POWER_LEGACY)
    sch = BlurringSchedule(T_LONG, cfg)
    tau = cfg.sigma_blur_max**2 / 2.0 * math.sin(math.pi * t / 2.0) ** 2
    want = alpha(t, cfg) * heat(MODES, tau, T_LONG, cfg.d_min)
    x0 = signal()
    np.testing.assert_allclose(q_no_noise(sch, x0, t), want, atol=3e-5)
    np.testing.assert_allclose(reference_q_sample(x0, t, np.zeros(T_LONG), cfg), want, atol=1e-10)
    # published never blurs more than legacy; same at both ends
    pub = BlurringSchedule(T_LONG, ScheduleConfig()).blur(torch.tensor([t, 0.0, 1.0]))
    leg = sch.blur(torch.tensor([t, 0.0, 1.0]))
    assert bool((pub[0] >= leg[0]).all()) and float((pub[0] - leg[0]).max()) > (0.05 if t < 0.5 else 0.0)
    torch.testing.assert_close(pub[1:], leg[1:])


@pytest.mark.parametrize("power,lo,hi", [(BLUR_POWER_PUBLISHED, 0.30, 0.32), (BLUR_POWER_LEGACY, 0.13, 0.15)])
def test_10hz_gain_falls_below_10_percent(power, lo, hi):
    """The issue's numbers: 128 Hz, 1024 samples, sigma_max 20: d(10 Hz) < 0.1 from t ~ 0.31
    (published) instead of t ~ 0.14 (legacy).  d is the blur gain D_t (without alpha_t)."""
    cfg = ScheduleConfig(sigma_blur_max=20.0, blur_power=power)
    sch = BlurringSchedule(T_LONG, cfg)
    k = int(round(10.0 * 2 * T_LONG / FS))
    assert k == 160
    ts = torch.linspace(0.0, 1.0, 20001, dtype=torch.float64).float()
    g = sch.blur(ts)[:, k]
    t_cross = float(ts[int(torch.nonzero(g < 0.1)[0])])
    assert lo < t_cross < hi, t_cross
    # closed form: (1 - d_min) exp(-lambda tau) + d_min = 0.1 with tau = sigma_max^2/2 sin^p
    lam = (math.pi * k / T_LONG) ** 2
    tau = math.log((1.0 - cfg.d_min) / (0.1 - cfg.d_min)) / lam
    s = (2.0 * tau / cfg.sigma_blur_max**2) ** (1.0 / power)
    assert abs(t_cross - 2.0 / math.pi * math.asin(s)) < 2e-4


def test_blur_power_validation_and_variant_default():
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(P2esError, match="blur_power"):
            ScheduleConfig(blur_power=bad)  # type: ignore[arg-type]
    for name in ("p2es", "p2es_no_groups", "p2es_no_deblur", "ddpm"):
        assert variant(name)[1].blur_power == BLUR_POWER_PUBLISHED
    _, sch = build(TrainConfig(variant="p2es", model=dict(TINY), duration_s=2.0, schedule={"blur_power": 2}))
    assert sch.config().blur_power == BLUR_POWER_LEGACY


# -- checkpoints: version >= 2 writes the field, version 1 reads as legacy ---------------------


def _tiny(name: str = "p2es", **sched: object) -> tuple[P2ES, Schedule]:
    torch.manual_seed(0)
    mc, sc = variant(name, **TINY)
    sc = ScheduleConfig(**{**to_dict(sc), **sched})
    return P2ES(mc).eval(), make_schedule(sc, mc.T)


def _write_v1(path, models: dict) -> None:
    """A set exactly as checkpoint format version 1 wrote it (no blur_power anywhere)."""
    for m in models.values():
        m["schedule_config"].pop("blur_power")
    torch.save({"format": ckpt.FORMAT, "version": 1, "models": models}, path)


def _outputs(model: P2ES, sch, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, 8, TINY["T"], generator=g)
    ppg = torch.randn(2, 3, TINY["T"], generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        return model(x0, t, ppg), sch.q_sample(x0, t, noise)


def test_new_set_writes_version_3_with_published_schedule(tmp_path):
    assert ckpt.VERSION == 3
    model, sch = _tiny()
    path = tmp_path / "new.pt"
    ckpt.save_set(path, {"p2es": ckpt.pack(model, sch)})
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == 3
    assert raw["models"]["p2es"]["schedule_config"]["blur_power"] == BLUR_POWER_PUBLISHED
    e = ckpt.load_model(path)
    assert e.schedule_config.blur_power == BLUR_POWER_PUBLISHED
    assert e.schedule.config().blur_power == BLUR_POWER_PUBLISHED


def test_version_1_set_loads_with_legacy_schedule_and_round_trips(tmp_path):
    model, sch_legacy = _tiny(blur_power=BLUR_POWER_LEGACY)
    path = tmp_path / "v1.pt"
    _write_v1(path, {"p2es": ckpt.pack(model, sch_legacy)})
    assert "blur_power" not in torch.load(path, weights_only=True)["models"]["p2es"]["schedule_config"]

    e = ckpt.load_model(path)
    assert e.schedule_config.blur_power == BLUR_POWER_LEGACY
    want_fwd, want_q = _outputs(model, sch_legacy)
    got_fwd, got_q = _outputs(e.model, e.schedule)
    assert torch.equal(got_fwd, want_fwd) and torch.equal(got_q, want_q)
    # ... and that is not what the published schedule would give
    _, pub_q = _outputs(model, make_schedule(ScheduleConfig(), TINY["T"]))
    assert not torch.allclose(pub_q, want_q, atol=1e-3)

    # adding a new model rewrites the file as the current version: the old entry keeps 2 explicitly
    new_model, new_sch = _tiny("p2es_no_groups")
    ckpt.add_to_set(path, "p2es_no_groups", ckpt.pack(new_model, new_sch))
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == ckpt.VERSION
    assert raw["models"]["p2es"]["schedule_config"]["blur_power"] == BLUR_POWER_LEGACY
    assert raw["models"]["p2es_no_groups"]["schedule_config"]["blur_power"] == BLUR_POWER_PUBLISHED
    again = ckpt.load_set(path)
    assert again["p2es"].schedule_config.blur_power == BLUR_POWER_LEGACY
    assert again["p2es_no_groups"].schedule_config.blur_power == BLUR_POWER_PUBLISHED
    assert torch.equal(_outputs(again["p2es"].model, again["p2es"].schedule)[1], want_q)


def test_migrate_is_explicit_and_newer_versions_are_refused(tmp_path):
    d = {
        "format": ckpt.FORMAT,
        "version": 1,
        "models": {"a": {"schedule_config": {"kind": "blur"}}, "b": {"schedule_config": {"kind": "none"}}},
    }
    out = ckpt.migrate(d)
    assert out["version"] == ckpt.VERSION
    assert {m["schedule_config"]["blur_power"] for m in out["models"].values()} == {BLUR_POWER_LEGACY}
    v2 = {"format": ckpt.FORMAT, "version": 2, "models": {"a": {"schedule_config": {"blur_power": 4}}}}
    assert ckpt.migrate(v2)["models"]["a"]["schedule_config"]["blur_power"] == 4  # untouched
    model, sch = _tiny()
    path = tmp_path / "v4.pt"
    torch.save({"format": ckpt.FORMAT, "version": 4, "models": {"p2es": ckpt.pack(model, sch)}}, path)
    with pytest.raises(P2esError, match="format version 4"):
        ckpt.load_model(path)


def test_shipped_set_records_its_blur_schedule():
    """The shipped set (the wide-data seed legs, docs/training.md) is a version-2 file (3 once
    ``p2es set-sampler`` has stored a sampler config in it) that stores each model's schedule:
    the blurring variants were trained with the legacy sin^2 schedule and say so (blur_power 2
    on disk, not filled in by migrate); version-1 files are covered by the synthetic tests above."""
    raw = torch.load(ckpt.DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)
    assert 2 <= raw["version"] <= ckpt.VERSION == 3
    blur = {n for n, m in raw["models"].items() if m["schedule_config"].get("kind") == "blur"}
    assert {"p2es", "p2es_seed1", "p2es_seed2", "p2es_no_groups", "p2es_no_deblur"} <= blur
    for n in blur:
        assert raw["models"][n]["schedule_config"]["blur_power"] == BLUR_POWER_LEGACY, n
    e = ckpt.load_model(ckpt.DEFAULT_CHECKPOINT, "p2es")
    assert e.schedule_config.kind == "blur" and e.schedule_config.blur_power == BLUR_POWER_LEGACY
