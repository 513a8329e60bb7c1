"""Checkpoint *sets*: one file holding several named models (the method, baselines, ablations).

File layout (``torch.save`` of plain builtins + tensors, loaded with ``weights_only=True``)::

    {"format": "p2es-checkpoint-set", "version": 3,
     "models": {name: {"model_config": {...}, "schedule_config": {...},
                       "sampler_config": {"temperature": float},
                       "train_config": {...} | None, "meta": {...},
                       "weights_dtype": "float16" | "float32",
                       "state_dict": {param/buffer name: tensor}}}}

Weights may be stored as float16 (parameters only; buffers such as the group bank stay
float32) and are always loaded as float32.  The group bank is a buffer of the model, so it
ships in ``state_dict``.  Writes are atomic (temp file + rename) and serialised with a lock
file, so several trainings can add their model to the same set.  The optimiser / EMA / RNG
state needed to resume a training lives in a separate resume file (:func:`save_resume`).

Format versions (files newer than :data:`VERSION` are refused):

* 1 - ``schedule_config`` has no ``blur_power``; those models were trained with the legacy
  blur schedule ``tau_t ~ sin^2(pi t / 2)``.  :func:`read_set` migrates them on reading by
  filling in ``blur_power = 2`` (:func:`migrate`), so they keep sampling exactly as before,
  and a set rewritten by :func:`add_to_set` stores that value explicitly.
* 2 - ``schedule_config`` carries ``blur_power`` (4: the published ``sin^4`` schedule).
* 3 - model entries may carry ``sampler_config`` (:class:`engine.model.config.SamplerConfig`:
  the initial-noise temperature every sampling path uses); absent means temperature 1, the
  sampling of every model saved before it.  :func:`migrate` fills it in for versions 1 and 2;
  :func:`set_sampler` changes it in a shipped set without touching the weights.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.model.config import (
    BLUR_POWER_LEGACY,
    ModelConfig,
    SamplerConfig,
    ScheduleConfig,
    from_dict,
    to_dict,
)
from engine.model.network import P2ES
from engine.model.schedule import Schedule, make_schedule
from p2es.errors import P2esError
from p2es.files import atomic_write

#: The shipped checkpoint set (committed; trained by scripts/train_shipped.sh).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "weights" / "p2es_set.pt"

FORMAT = "p2es-checkpoint-set"
VERSION = 3
#: ``sampler_config`` of a model entry stored without one (format versions 1 and 2)
SAMPLER_LEGACY: dict[str, Any] = {"temperature": 1.0}


@dataclass
class Entry:
    name: str
    model: P2ES  # float32, eval mode
    schedule: Schedule  # engine.model.schedule schedule object
    model_config: ModelConfig
    schedule_config: ScheduleConfig
    train_config: dict[str, Any] | None
    meta: dict[str, Any]
    sampler_config: SamplerConfig = field(default_factory=SamplerConfig)  # temperature 1 if absent


def pack(
    model: P2ES,
    schedule: Schedule,
    *,
    train_config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    half: bool = False,
    sampler_config: SamplerConfig | None = None,
) -> dict[str, Any]:
    """One model as a plain dict for a checkpoint set (``sampler_config``: None = the defaults)."""
    params = {n for n, _ in model.named_parameters()}
    sd: dict[str, torch.Tensor] = {}
    for n, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and n in params and v.is_floating_point():
            v = v.half()
        sd[n] = v.clone()
    return {
        "model_config": to_dict(model.cfg),
        "schedule_config": to_dict(schedule.config()),
        "sampler_config": to_dict(sampler_config or SamplerConfig()),
        "train_config": train_config,
        "meta": dict(meta or {}),
        "weights_dtype": "float16" if half else "float32",
        "state_dict": sd,
    }


def unpack(name: str, d: dict[str, Any], device: str | torch.device = "cpu") -> Entry:
    """One model entry of a set (:func:`pack`'s dict) -> a ready :class:`Entry` on ``device``."""
    try:
        mc = from_dict(ModelConfig, d["model_config"])
        sc = from_dict(ScheduleConfig, d["schedule_config"])
        samp = from_dict(SamplerConfig, d.get("sampler_config"))
        model = P2ES(mc)
        sd = {k: v.float() if v.is_floating_point() else v for k, v in d["state_dict"].items()}
        model.load_state_dict(sd, strict=True)
    except P2esError:
        raise
    except Exception as e:
        raise P2esError(
            f"checkpoint model {name!r} cannot be rebuilt: {type(e).__name__}: {_first_line(e)}"
        ) from None
    model.to(device).eval()
    return Entry(
        name,
        model,
        make_schedule(sc, mc.T),
        mc,
        sc,
        d.get("train_config"),
        dict(d.get("meta") or {}),
        samp,
    )


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else ""


def read_set(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Raw checkpoint-set dict; any problem -> one-line P2esError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise P2esError(f"checkpoint not found: {path}")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise P2esError(
            f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {_first_line(e)})"
        ) from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("models"), dict):
        raise P2esError(f"{path} is not a p2es checkpoint set")
    if d.get("version", 0) > VERSION:
        raise P2esError(f"{path} has checkpoint format version {d['version']}, this p2es reads <= {VERSION}")
    return migrate(d)


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint-set dict of any readable version, brought to :data:`VERSION` in place.

    Version 1 -> 2: every model's ``schedule_config`` without ``blur_power`` gets the legacy
    value (``BLUR_POWER_LEGACY`` = 2, ``tau_t ~ sin^2``), the schedule it was trained with;
    the new default (4, published) applies only to configs created by this version.

    Versions 1, 2 -> 3: every model entry without ``sampler_config`` gets
    :data:`SAMPLER_LEGACY` (temperature 1), how it was sampled before the field existed.
    """
    version = int(d.get("version", 0))
    if version < 2:
        for m in d["models"].values():
            if isinstance(m, dict) and isinstance(m.get("schedule_config"), dict):
                m["schedule_config"].setdefault("blur_power", BLUR_POWER_LEGACY)
        d["version"] = 2
    if version < 3:
        for m in d["models"].values():
            if isinstance(m, dict):
                m.setdefault("sampler_config", dict(SAMPLER_LEGACY))
        d["version"] = 3
    return d


def list_models(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """name -> meta of every model in a set."""
    return {n: dict(m.get("meta") or {}) for n, m in read_set(path)["models"].items()}


def load_set(
    path: str | os.PathLike[str], names: Iterable[str] | None = None, device: str | torch.device = "cpu"
) -> dict[str, Entry]:
    d = read_set(path)["models"]
    names = list(d) if names is None else list(names)
    missing = [n for n in names if n not in d]
    if missing:
        raise P2esError(
            f"model(s) {', '.join(missing)} not in {os.fspath(path)} (has: {', '.join(d) or 'none'})"
        )
    return {n: unpack(n, d[n], device) for n in names}


def load_model(path: str | os.PathLike[str], name: str = "p2es", device: str | torch.device = "cpu") -> Entry:
    return load_set(path, [name], device)[name]


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path + ".lock", "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def _atomic_save(obj: Any, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_set(path: str | os.PathLike[str], models: dict[str, dict[str, Any]]) -> None:
    """Write a whole set (``name -> pack(...)``), replacing the file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _locked(path):
        _atomic_save({"format": FORMAT, "version": VERSION, "models": dict(models)}, path)


def add_to_set(path: str | os.PathLike[str], name: str, packed: dict[str, Any]) -> None:
    """Insert or replace one model of a set (creates the file if needed)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _locked(path):
        models = read_set(path)["models"] if os.path.exists(path) else {}
        models[name] = packed
        _atomic_save({"format": FORMAT, "version": VERSION, "models": models}, path)


def set_sampler(path: str | os.PathLike[str], name: str, cfg: SamplerConfig) -> SamplerConfig:
    """Store ``cfg`` as the ``sampler_config`` of model ``name`` of the set at ``path``; returns
    the one it replaces.

    The set is rewritten under its lock, atomically (temp file + rename), with everything else
    as stored (weights not re-encoded; an older format version comes out migrated to
    :data:`VERSION`).  A missing file, an unknown model name or an unwritable directory is a
    one-line P2esError and nothing is written.
    """
    path = os.fspath(path)
    if not isinstance(cfg, SamplerConfig):
        raise P2esError(f"set_sampler needs a SamplerConfig, got {type(cfg).__name__}")
    if not os.path.exists(path):  # refused before a lock file is created next to it
        raise P2esError(f"checkpoint not found: {path}")
    try:
        with _locked(path):
            models = read_set(path)["models"]
            if name not in models:
                raise P2esError(f"model {name!r} not in {path} (has: {', '.join(models) or 'none'})")
            if not isinstance(models[name], dict):
                raise P2esError(f"model {name!r} of {path} is not a model entry")
            old = from_dict(SamplerConfig, models[name].get("sampler_config"))
            models[name]["sampler_config"] = to_dict(cfg)
            _atomic_save({"format": FORMAT, "version": VERSION, "models": models}, path)
    except OSError as e:
        raise P2esError(f"cannot rewrite {path}: {e.strerror or e}") from None
    return old


def merge_sets(
    out: str | os.PathLike[str], picks: Iterable[tuple[str | os.PathLike[str], str, str]]
) -> dict[str, str]:
    """Write a new set ``out`` from models of other sets: ``picks`` = (source set, model, name
    in ``out``).  Weights, configs and meta are copied as stored (no re-encoding); a name
    given twice, a missing model or an unreadable source is a one-line P2esError and nothing
    is written.  Returns name -> source path.  This is how the shipped set is assembled from
    the training legs' sets (docs/training.md)."""
    models: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    cache: dict[str, dict[str, Any]] = {}
    for src, model, name in picks:
        src = os.fspath(src)
        if name in models:
            raise P2esError(f"model name {name!r} given twice ({origin[name]} and {src})")
        if src not in cache:
            cache[src] = read_set(src)["models"]
        if model not in cache[src]:
            raise P2esError(f"model {model!r} not in {src} (has: {', '.join(cache[src]) or 'none'})")
        models[name] = cache[src][model]
        origin[name] = f"{src}:{model}"
    if not models:
        raise P2esError("nothing to write: no models picked")
    save_set(out, models)
    return origin


def resume_path(out_path: str | os.PathLike[str], name: str) -> str:
    base = os.fspath(out_path)
    base = base[:-3] if base.endswith(".pt") else base
    return f"{base}.{name}.resume.pt"


def save_resume(path: str, state: dict[str, Any]) -> None:
    _atomic_save(state, path)


def load_resume(path: str) -> dict[str, Any]:
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return state
    except Exception as e:
        raise P2esError(f"resume file {path} is corrupt ({type(e).__name__}: {_first_line(e)})") from None
