"""Configuration records of the engine and the named model variants.

Four small dataclasses, all defined here, travel inside every checkpoint (as plain dicts):

* :class:`ModelConfig`     - the reverse network (:mod:`engine.model.network`),
* :class:`ScheduleConfig`  - the forward noise process (:mod:`engine.model.schedule`),
* :class:`TrainConfig`     - how it was trained (:mod:`engine.model.train`),
* :class:`SamplerConfig`   - how it is sampled (initial-noise temperature; every sampling path).

``VARIANTS`` names the seven models of a checkpoint set (the method and its baselines /
ablations).  ``variant(name)`` returns the matching model + schedule configs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from p2es.errors import P2esError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


@dataclass
class ModelConfig:
    T: int = 1024  # window length in samples (8 s at 128 Hz)
    fs: float = 128.0  # sample rate of the window
    n_leads: int = 8  # independent leads I, II, V1..V6
    ppg_channels: int = 3  # z(PPG), z(PPG'), z(PPG'')
    n_demo: int = 5  # age, sex, height, weight, BMI
    widths: tuple[int, ...] = (32, 64, 96)  # one per UNet level (each level halves fs)
    branch_seconds: tuple[float, ...] = (0.1, 0.3, 1.0)  # QRS, T wave, RR
    max_kernel: int = 15  # longer spans use dilation
    emb_dim: int = 128  # time / group embedding width
    diffusion: str = "blur"  # "blur" | "gaussian" | "none" (regression)
    use_groups: bool = True
    use_deblur: bool = True
    n_groups: int = 8
    group_dim: int = 32
    group_tau: float = 0.1
    deblur_basis: int = 8  # t-dependence of the gain: emb -> n_basis weights
    deblur_kernel: int = 5  # conv along the frequency axis
    ecg_scale: float = 2.0  # network units = mV * ecg_scale
    fixed_t: float = 1.0  # t fed to the regression baseline
    # Opt-in beat-timing options (defaults: the architecture of every model trained before them;
    # configs stored without these fields load with them off).
    rpeak_head: bool = False  # auxiliary 1x1-conv R-peak heatmap head (training only; see P2ES)
    ppg_onset_channel: bool = False  # 4th PPG channel: bumps at the pulse feet (ppg_channels -> 4)
    # Beat map as conditioning (see engine.model.network.BeatHead): an R-peak heatmap predicted
    # from the PPG encoder (+ demographic embedding) once per window, trained with w_rpeak, and
    # fed to the denoiser with the level-0 PPG features.  Exclusive with rpeak_head.
    rpeak_cond: bool = False
    # Demographic alignment (engine.model.network.PatHead): predict the window's pulse arrival
    # time from the demographics, shift a copy of the PPG features earlier by it, so the encoder
    # sees the pulses where the R peaks are; trained with w_pat against the simulator's pat_ms.
    pat_align: bool = False
    # How the aligned copy enters (needs pat_align): "add" - through its own zero-initialised stem
    # next to the unshifted PPG (the network may ignore it); "only" - it replaces the unshifted
    # input, so every PPG feature the network sees is already moved to where the R peaks are.
    pat_mode: str = "add"
    # PatHead also reads the PPG (a small strided conv summary): the rate, on which the
    # pre-ejection period depends, and the pulse shape, which carries arterial stiffness.
    pat_ppg: bool = False
    # Frequency stage conditioned on the window (t + demographic/PPG group embedding), not on t only.
    deblur_cond: bool = False

    def __post_init__(self) -> None:
        if self.pat_mode not in ("add", "only"):
            raise P2esError(f"pat_mode must be 'add' or 'only', got {self.pat_mode!r}")
        if (self.pat_mode != "add" or self.pat_ppg) and not self.pat_align:
            raise P2esError("pat_mode / pat_ppg need pat_align")
        if self.rpeak_head and self.rpeak_cond:
            raise P2esError("rpeak_head and rpeak_cond are exclusive (one R-peak head per model)")
        if self.ppg_onset_channel:
            if self.ppg_channels == 3:  # the default 3 channels + the onset channel
                self.ppg_channels = 4
            if self.ppg_channels != 4:
                raise P2esError(
                    f"ppg_onset_channel needs ppg_channels 4 (3 + onset), got {self.ppg_channels}"
                )


#: ScheduleConfig.blur_power of the published blur schedule (the default of new configs) ...
BLUR_POWER_PUBLISHED = 4
#: ... and of the legacy one (checkpoint format version 1, which has no such field).
BLUR_POWER_LEGACY = 2


@dataclass
class ScheduleConfig:
    """Forward process.  ``kind``: "blur" (P2Es), "gaussian" (DDPM/DDIM cosine) or "none"
    (deterministic regression: no forward process at all)."""

    kind: str = "blur"
    # Std of the strongest Gaussian blur, in samples along time.  At 128 Hz, 20 samples keep
    # 62 % of 1 Hz, 1.3 % of 3 Hz and nothing above: the most blurred state is a ~1 Hz outline.
    sigma_blur_max: float = 20.0
    # Floor of the per-frequency blur gain d_{t,k} (Hoogeboom & Salimans use 0.001).
    d_min: float = 0.001
    # alpha_t = (1 - eps) * cos(pi t / 2): sigma_t >= sqrt(2 eps) > 0 everywhere.
    eps: float = 1e-4
    # Shape of the blur schedule: tau_t = sigma_blur_max^2 / 2 * sin(pi t / 2)^blur_power.
    # 4 is the published form (Hoogeboom & Salimans 2023: sigma_B,t = sigma_B,max sin^2(pi t/2),
    # tau_t = sigma_B,t^2 / 2).  2 is the legacy form of checkpoint format version 1 (the blur
    # grows faster early on); engine.model.checkpoint maps version-1 files to it.
    blur_power: int = BLUR_POWER_PUBLISHED

    def __post_init__(self) -> None:
        if self.kind not in ("blur", "gaussian", "none"):
            raise P2esError(f"unknown diffusion kind {self.kind!r} (blur, gaussian, none)")
        if isinstance(self.blur_power, bool) or not isinstance(self.blur_power, int) or self.blur_power < 1:
            raise P2esError(
                f"blur_power must be an integer >= 1 ({BLUR_POWER_PUBLISHED}: published, "
                f"{BLUR_POWER_LEGACY}: legacy), got {self.blur_power!r}"
            )


def from_dict(cls: type[T], d: dict[str, Any] | None) -> T:
    """Build a dataclass from a dict, refusing unknown keys (a typo must not pass silently)."""
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise P2esError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    for f in dataclasses.fields(cls):
        if f.name in d and isinstance(d[f.name], list):
            d[f.name] = tuple(d[f.name])  # JSON/YAML give lists; configs hold tuples
    return cls(**d)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict of builtins (tuples become lists so the dict is JSON-able)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


@dataclass(frozen=True)
class Variant:
    """One named model: network switches and forward process."""

    diffusion: str  # "blur" | "gaussian" | "none"
    use_groups: bool
    use_deblur: bool
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    adversarial: bool = False  # trained with engine.model.adversarial's discriminators (CardioGAN-style)


VARIANTS: dict[str, Variant] = {
    "p2es": Variant("blur", True, True, "P2Es: blurring diffusion + demographic groups + deblur"),
    "unet_regression": Variant("none", False, False, "deterministic 1-D UNet regression (MSE)"),
    "ddpm": Variant("gaussian", False, False, "RDDM-like Gaussian DDPM/DDIM baseline"),
    "cardiogan": Variant(
        "none",
        False,
        False,
        "CardioGAN-style adversarial translator: the regression "
        "UNet + time- and frequency-domain discriminators",
        adversarial=True,
    ),
    "p2es_no_blur": Variant("gaussian", True, True, "ablation: Gaussian instead of blurring noise"),
    "p2es_no_groups": Variant("blur", False, True, "ablation: one lead-mixing matrix, no demographics"),
    "p2es_no_deblur": Variant("blur", True, False, "ablation: no frequency-deblurring stage"),
}


def variant(name: str, **model_overrides: Any) -> tuple[ModelConfig, ScheduleConfig]:
    """Return ``(ModelConfig, ScheduleConfig)`` of a named variant.

    ``model_overrides`` replace ModelConfig fields (e.g. ``widths=(16, 32, 48)`` for tests).
    """
    if name not in VARIANTS:
        raise P2esError(f"unknown model variant {name!r} (known: {', '.join(VARIANTS)})")
    v = VARIANTS[name]
    mc = from_dict(
        ModelConfig,
        {
            "diffusion": v.diffusion,
            "use_groups": v.use_groups,
            "use_deblur": v.use_deblur,
            **v.extra,
            **model_overrides,
        },
    )
    sc = ScheduleConfig(kind=v.diffusion)
    return mc, sc


@dataclass
class TrainConfig:
    variant: str = "p2es"  # see engine.model.config.VARIANTS
    name: str = ""  # name in the checkpoint set (default: variant)
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    schedule: dict[str, Any] = field(default_factory=dict)  # ScheduleConfig overrides
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 500
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # effective decay min(ema_decay, (1+s)/(10+s))
    w_mse: float = 1.0
    w_spec: float = 0.1
    w_contrast: float = 0.05
    w_qrs: float = 0.0  # extra MSE on the +-60 ms around the annotated R peaks (engine.model.train)
    w_rpeak: float = 0.0  # R-peak heatmap BCE of the auxiliary head (needs model rpeak_head)
    w_pat: float = 0.0  # squared PAT error in units of 20 ms (needs model pat_align)
    # Share of training windows whose aligned copy is shifted by the simulator's PAT instead of
    # the head's prediction (teacher forcing; sampling always uses the prediction).  Needs w_pat.
    pat_teacher: float = 0.0
    w_adv: float = 0.05  # adversarial weight (adversarial variants: cardiogan)
    lr_disc: float = 2e-4  # discriminator Adam lr (betas 0.5, 0.999 as in pix2pix)
    contrast_temp: float = 0.1
    contrast_k: int = 3
    group_refit_every: int = 250
    group_reservoir: int = 2048
    seed: int = 0
    device: str = "cpu"  # "cpu" | "cuda" (bf16 autocast) | "cuda:1" ...
    num_threads: int = 0  # torch CPU threads (0: leave torch's default)
    ckpt_every: int = 1000
    log_every: int = 50
    data: str = "sim"  # "sim" (simulator on the fly) | "fake" | path/to/file.npz
    duration_s: float = 8.0  # window length; ModelConfig.T = duration_s * fs
    fs: float = 128.0
    noise: float = 1.0  # simulator wearable-noise level
    ppg_frontend: float = 0.0  # fraction of records with random PPG sensor front-ends
    rhythm_mix: str | None = None  # simulator rhythm mix (None: its default)
    sim_rate_profile: str = "v1"  # simulator heart-rate profile: "v1" | "wide" (35-180 bpm, the shipped set)
    chunk_records: int = 256  # records per simulator call
    workers: int = 0  # DataLoader workers for the simulator (0: in-process)
    half_weights: bool = False  # store fp16 weights in the checkpoint set
    progress: bool = True  # tqdm bar
    stop_at: int = 0  # stop (resumably) after this step; 0 = run to `steps`

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "chunk_records"):
            if int(getattr(self, name)) < 1:
                raise P2esError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise P2esError(f"lr must be > 0, got {self.lr}")
        if self.duration_s <= 0 or not 25.0 <= self.fs <= 2000.0:
            raise P2esError(
                f"duration-s must be > 0 and fs within 25-2000 Hz, got {self.duration_s}, {self.fs}"
            )
        for name in ("warmup", "ckpt_every", "workers", "num_threads", "group_refit_every", "stop_at"):
            if int(getattr(self, name)) < 0:
                raise P2esError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("w_qrs", "w_rpeak", "w_pat"):
            if not float(getattr(self, name)) >= 0.0:
                raise P2esError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= float(self.pat_teacher) <= 1.0:
            raise P2esError(f"pat-teacher must be in [0, 1], got {self.pat_teacher}")
        if self.pat_teacher > 0 and not self.w_pat > 0:
            raise P2esError("pat-teacher > 0 needs the PAT target: --w-pat > 0")
        if self.sim_rate_profile not in ("v1", "wide"):  # wearable.sim.rates.RATE_PROFILES (a test checks)
            raise P2esError(f"sim-rate-profile must be 'v1' or 'wide', got {self.sim_rate_profile!r}")
        if self.sim_rate_profile != "v1" and self.data != "sim":
            raise P2esError(f"sim-rate-profile {self.sim_rate_profile!r} needs data 'sim', got {self.data!r}")


@dataclass
class SamplerConfig:
    """How a model's windows are sampled at inference, saved with the model in its checkpoint
    set (``sampler_config``; absent in files from before it: the defaults).

    ``temperature``: scale of the initial noise x_T (:func:`engine.model.sampler.sample`), in
    [0, 1]; 1 samples the learned distribution (the behaviour of every model saved without it),
    < 1 draws nearer its centre.  Set on a shipped set with ``p2es set-sampler``.
    """

    temperature: float = 1.0

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise P2esError(f"sampler temperature must be a number in [0, 1], got {t!r}")
        self.temperature = float(t)
