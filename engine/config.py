"""Configuration records of the engine and the named model variants.

Three small dataclasses travel inside every checkpoint (as plain dicts):

* :class:`engine.model.ModelConfig`   - the reverse network (defined next to the network),
* :class:`ScheduleConfig`             - the forward noise process (this file),
* :class:`engine.train.TrainConfig`   - how it was trained.

``VARIANTS`` names the seven models of a checkpoint set (the method and its baselines /
ablations).  ``variant(name)`` returns the matching model + schedule configs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from p2es.errors import P2esError

T = TypeVar("T")


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

    def __post_init__(self) -> None:
        if self.kind not in ("blur", "gaussian", "none"):
            raise P2esError(f"unknown diffusion kind {self.kind!r} (blur, gaussian, none)")


def from_dict(cls: type[T], d: dict[str, Any] | None) -> T:
    """Build a dataclass from a dict, refusing unknown keys (a typo must not pass silently)."""
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise P2esError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in d and isinstance(d[f.name], list):
            d[f.name] = tuple(d[f.name])  # JSON/YAML give lists; configs hold tuples
    return cls(**d)  # type: ignore[call-arg]


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

    diffusion: str            # "blur" | "gaussian" | "none"
    use_groups: bool
    use_deblur: bool
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    adversarial: bool = False  # trained with engine.adversarial's discriminators (CardioGAN-style)


VARIANTS: dict[str, Variant] = {
    "p2es": Variant("blur", True, True, "P2Es: blurring diffusion + demographic groups + deblur"),
    "unet_regression": Variant("none", False, False, "deterministic 1-D UNet regression (MSE)"),
    "ddpm": Variant("gaussian", False, False, "RDDM-like Gaussian DDPM/DDIM baseline"),
    "cardiogan": Variant("none", False, False, "CardioGAN-style adversarial translator: the regression "
                         "UNet + time- and frequency-domain discriminators", adversarial=True),
    "p2es_no_blur": Variant("gaussian", True, True, "ablation: Gaussian instead of blurring noise"),
    "p2es_no_groups": Variant("blur", False, True, "ablation: one lead-mixing matrix, no demographics"),
    "p2es_no_deblur": Variant("blur", True, False, "ablation: no frequency-deblurring stage"),
}


def variant(name: str, **model_overrides: Any):
    """Return ``(ModelConfig, ScheduleConfig)`` of a named variant.

    ``model_overrides`` replace ModelConfig fields (e.g. ``widths=(16, 32, 48)`` for tests).
    """
    from engine.model import ModelConfig  # local import: model.py does not need this module

    if name not in VARIANTS:
        raise P2esError(f"unknown model variant {name!r} (known: {', '.join(VARIANTS)})")
    v = VARIANTS[name]
    mc = from_dict(
        ModelConfig,
        {"diffusion": v.diffusion, "use_groups": v.use_groups, "use_deblur": v.use_deblur,
         **v.extra, **model_overrides},
    )
    sc = ScheduleConfig(kind=v.diffusion)
    return mc, sc
