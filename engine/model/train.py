"""Training loop (one model variant per call).

``train(cfg, out_path)`` trains ``cfg.variant`` and stores its EMA weights under the name
``cfg.name or cfg.variant`` in the checkpoint set ``out_path`` (other models of the set are
kept).  Loss::

    L = w_mse * |x0_hat - x0|^2  +  w_spec * |DCT x0_hat - DCT x0|_1  +  w_contrast * SupCon(z)

averaged over samples, leads and time; t ~ U(0, 1) (stratified over the batch).  The
regression baseline (``diffusion == "none"``) uses the same loss without noise; the
CardioGAN-style baseline (an adversarial variant) adds ``w_adv`` times the least-squares
generator loss of engine.model.adversarial's time- and frequency-domain discriminators, which take
one Adam step (``lr_disc``) after each generator step.

Opt-in beat-timing terms (both 0 by default: the loss, the batches and the weights are then
exactly what they were before these terms existed).  With ``m`` [B, T] the QRS mask (1 within
+-60 ms of an annotated R peak of the simulator, engine.model.data.qrs_mask) and ``h`` [B, T]
the R-peak heatmap target (Gaussian bumps, std 20 ms, peak 1, engine.model.data.rpeak_heatmap)::

    L += w_qrs   * sum_{b,l,i} m[b,i] (x0_hat - x0)[b,l,i]^2 / (8 * sum_{b,i} m[b,i])
    L += w_rpeak * mean_{b,i} BCE(sigmoid(r[b,i]), h[b,i])

i.e. ``w_qrs`` is the mean over the masked samples (all 8 leads) of the x0 MSE, an extra
weight on the QRS complexes on top of the plain MSE (a window without annotated beats adds 0),
and ``r`` are the logits of the auxiliary R-peak head (ModelConfig.rpeak_head, a 1x1 conv on
the decoder's last feature map, read by P2ES.denoise_with_rpeak).  The heatmap loss is binary
cross-entropy with logits rather than MSE: the target is a per-sample soft probability in
[0, 1]; BCE's gradient w.r.t. the logit is sigmoid(r) - h, which does not vanish when the
sigmoid saturates (MSE on sigmoid(r) has the extra factor sigmoid'(r) and stalls on the ~95 %
of samples far from any peak), and the logit form is numerically stable.  Its minimum is the
target's entropy, not 0.  The head's bias starts at logit(0.05), the share of samples near a
peak.  AdamW with
linear warm-up and cosine decay, gradient clipping, EMA of the weights (the checkpoint holds
the EMA weights).  The group bank is re-fitted every ``group_refit_every`` steps from the
embeddings of the last ``group_reservoir`` windows and copied into the EMA model.

Resuming: every ``ckpt_every`` steps a resume file ``<out>.<name>.resume.pt`` is written
(raw + EMA weights, optimiser, step, RNG, reservoir); ``train(..., resume=True)`` continues
from it with exactly the batches it would have seen (data is a pure function of seed and
batch index; with ``workers=0``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from engine.model import checkpoint as ckpt
from engine.model.adversarial import Discriminators
from engine.model.config import (
    VARIANTS,
    ScheduleConfig,
    TrainConfig,
    from_dict,
    to_dict,
    variant,
)
from engine.model.data import ArrayStream, SimStream, get_synthesize, load_npz, prepare
from engine.model.groups import demographic_positives, supcon_loss
from engine.model.network import P2ES, Cond
from engine.model.schedule import FrequencySchedule, Schedule, dct_matrix, make_schedule
from p2es.errors import P2esError


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def build(cfg: TrainConfig) -> tuple[P2ES, Schedule]:
    """(model, schedule) of a TrainConfig, with T/fs taken from the data settings."""
    T = int(round(cfg.duration_s * cfg.fs))
    mc, sc = variant(cfg.variant, **{"T": T, "fs": cfg.fs, **cfg.model})
    sc = from_dict(ScheduleConfig, {**to_dict(sc), **cfg.schedule})
    if sc.kind != mc.diffusion:
        raise P2esError(f"schedule kind {sc.kind!r} does not match model diffusion {mc.diffusion!r}")
    return P2ES(mc), make_schedule(sc, mc.T)


def make_stream(
    cfg: TrainConfig, ecg_scale: float, start_batch: int, *, ppg_onset: bool = False
) -> SimStream | ArrayStream:
    """The training batches of ``cfg``; ``ppg_onset``: 4-channel PPG input (the model's
    ``ppg_onset_channel``).  The beat-timing targets (``qrs_mask``, ``rpeak_heat``) are built
    only when ``w_qrs`` / ``w_rpeak`` use them."""
    prep: dict[str, bool] = {}
    if ppg_onset:
        prep["ppg_onset"] = True
    if cfg.w_qrs > 0:
        prep["qrs"] = True
    if cfg.w_rpeak > 0:
        prep["rpeak"] = True
    if cfg.w_pat > 0:
        prep["pat"] = True
    if cfg.data in ("sim", "fake"):
        sim_kwargs: dict[str, Any] = {"duration_s": cfg.duration_s, "fs": cfg.fs, "noise": cfg.noise}
        if cfg.data == "sim":
            sim_kwargs["ppg_frontend"] = cfg.ppg_frontend
        if cfg.rhythm_mix is not None:
            sim_kwargs["rhythm_mix"] = cfg.rhythm_mix
        if cfg.data == "sim" and "noisy_ecg" in inspect.signature(get_synthesize("sim")).parameters:
            sim_kwargs["noisy_ecg"] = False  # only the clean ECG target is needed
        return SimStream(
            cfg.batch_size,
            seed=cfg.seed,
            split="train",
            source=cfg.data,
            chunk_records=cfg.chunk_records,
            ecg_scale=ecg_scale,
            start_batch=start_batch,
            sim_kwargs=sim_kwargs,
            rate_profile=cfg.sim_rate_profile,
            prepare_kwargs=prep or None,
        )
    raw = load_npz(cfg.data)
    fs = float(raw.get("fs", cfg.fs))
    if abs(fs - cfg.fs) > 1e-6 or raw["ppg"].shape[-1] != int(round(cfg.duration_s * cfg.fs)):
        raise P2esError(
            f"{cfg.data}: windows are {raw['ppg'].shape[-1]} samples at {fs} Hz, "
            f"training expects {cfg.duration_s} s at {cfg.fs} Hz"
        )
    if (cfg.w_qrs > 0 or cfg.w_rpeak > 0) and raw.get("r_peaks") is None:
        raise P2esError(f"{cfg.data} has no 'r_peaks' array (needed by w-qrs / w-rpeak)")
    data = prepare(raw, ecg_scale, **prep)
    if "x0" not in data:
        raise P2esError(f"{cfg.data} has no 'ecg' array to train on")
    return ArrayStream(data, cfg.batch_size, seed=cfg.seed, start_batch=start_batch)


class EMA:
    def __init__(self, model: P2ES, decay: float):
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for pe, p in zip(self.model.parameters(), model.parameters()):
            pe.lerp_(p.detach(), 1.0 - d)
        for (_n, be), b in zip(self.model.named_buffers(), model.buffers()):
            be.copy_(b)


def _teacher_pat(
    batch: dict[str, torch.Tensor], cfg: TrainConfig, gen: torch.Generator
) -> torch.Tensor | None:
    """``pat_teacher``: the simulator's PAT [B] for a random share of the windows, NaN (= use the
    head's prediction) for the rest and for windows without one; None when off."""
    if cfg.pat_teacher <= 0:
        return None
    pat = batch["pat"]
    pick = torch.rand(pat.shape, generator=gen, device=gen.device).to(pat.device) < cfg.pat_teacher
    return torch.where(pick & torch.isfinite(pat), pat, torch.full_like(pat, float("nan")))


def loss_terms(
    model: P2ES,
    schedule: Schedule,
    batch: dict[str, torch.Tensor],
    cfg: TrainConfig,
    gen: torch.Generator,
    V: torch.Tensor,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> tuple[torch.Tensor, dict[str, float], Cond, torch.Tensor]:
    x0 = batch["x0"]
    B = x0.shape[0]
    x_t = t = None
    if model.cfg.diffusion != "none":
        # stratified t over the batch; the forward process runs in fp32 outside autocast
        u = torch.rand((), generator=gen, device=gen.device)
        t = ((u + torch.arange(B, device=x0.device) / B) % 1.0).clamp(1e-4, 1.0)
        noise = torch.randn(x0.shape, generator=gen, device=gen.device)
        x_t = cast(FrequencySchedule, schedule).q_sample(x0, t, noise)  # diffusion: a frequency schedule
    rpeak_logits: torch.Tensor | None = None
    with autocast():
        cond = model.encode(
            batch["ppg"], batch["demo"], batch["demo_mask"], shift_pat=_teacher_pat(batch, cfg, gen)
        )
        if cfg.w_rpeak > 0 and cond.rpeak is not None:  # rpeak_cond: the encoder's beat map
            rpeak_logits = cond.rpeak
            x0_hat = model.denoise(x_t, t, cond)
        elif cfg.w_rpeak > 0:
            x0_hat, rpeak_logits = model.denoise_with_rpeak(x_t, t, cond)
        else:
            x0_hat = model.denoise(x_t, t, cond)
    x0_hat = x0_hat.float()
    mse = F.mse_loss(x0_hat, x0)
    spec = (x0_hat @ V.T - x0 @ V.T).abs().mean() if cfg.w_spec > 0 else x0.new_zeros(())
    loss = cfg.w_mse * mse + cfg.w_spec * spec
    terms = {"mse": mse.item(), "spec": spec.item()}
    if cond.z is not None and cfg.w_contrast > 0:
        pos = demographic_positives(batch["demo"], batch["demo_mask"], cfg.contrast_k, batch.get("subject"))
        con = supcon_loss(cond.z.float(), pos, cfg.contrast_temp)
        loss = loss + cfg.w_contrast * con
        terms["con"] = con.item()
    if cfg.w_qrs > 0:  # mean x0 MSE over the samples within +-60 ms of an annotated R peak
        m = batch["qrs_mask"].to(x0.dtype)[:, None, :]
        qrs = ((x0_hat - x0) ** 2 * m).sum() / (m.sum() * x0.shape[1]).clamp_min(1.0)
        loss = loss + cfg.w_qrs * qrs
        terms["qrs"] = qrs.item()
    if cfg.w_pat > 0:  # PAT of the demographic alignment, in units of 20 ms, windows that have one
        assert cond.pat is not None  # pat_align is checked before training starts
        target = batch["pat"].to(cond.pat.dtype)
        ok = torch.isfinite(target)
        err = torch.where(ok, (cond.pat.float() - torch.nan_to_num(target)) / 0.02, torch.zeros_like(target))
        pat_loss = (err**2).sum() / ok.sum().clamp_min(1)
        loss = loss + cfg.w_pat * pat_loss
        terms["pat"] = pat_loss.item()
    if cfg.w_rpeak > 0:
        assert rpeak_logits is not None  # denoise_with_rpeak ran above
        rpk = F.binary_cross_entropy_with_logits(rpeak_logits.float(), batch["rpeak_heat"].float())
        loss = loss + cfg.w_rpeak * rpk
        terms["rpeak"] = rpk.item()
    terms["loss"] = loss.item()
    return loss, terms, cond, x0_hat


def _rng_device(dev: torch.device) -> torch.device:
    """The device of the training noise generator: the model's own (``cuda:1`` stays ``cuda:1``)."""
    return dev if dev.type == "cuda" else torch.device("cpu")


def _check_resume_schedule(path: str, st: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to continue a run under another forward process than it was trained with.  Resume
    files written before the field existed trained with the legacy blur (``blur_power`` 2)."""
    saved = st.get("schedule_config")
    if saved is None:
        saved = {**current, "blur_power": 2} if current.get("kind") == "blur" else current
    if saved != current:
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise P2esError(
            f"resume file {path} was trained with schedule "
            + ", ".join(f"{k}={saved.get(k)!r}" for k in diff)
            + " but this run has "
            + ", ".join(f"{k}={current.get(k)!r}" for k in diff)
            + "; pass the same --schedule (e.g. --schedule '{\"blur_power\": 2}') or start a new --out"
        )


def train_tiny(out_path: str | os.PathLike[str]) -> str:
    """A checkpoint set with one tiny ``p2es`` trained 2 steps on stand-in data: fast to build and
    to run (its ECG is noise).  The one recipe of the tests' ``tiny_ckpt`` fixture and of the
    benches that measure the pipeline around the model (chaos, hostile, scale-out)."""
    train(
        TrainConfig(
            variant="p2es",
            model=dict(widths=(8, 16, 16), emb_dim=32, n_groups=4, group_dim=8),
            steps=2,
            batch_size=4,
            data="fake",
            chunk_records=8,
            ckpt_every=0,
            group_refit_every=1,
            group_reservoir=16,
            progress=False,
        ),
        out_path,
    )
    return os.fspath(out_path)


def train(cfg: TrainConfig, out_path: str | os.PathLike[str], resume: bool = False) -> dict[str, Any]:
    """Train one variant; returns ``{"name", "steps", "history", "params", "seconds"}``."""
    out_path = os.fspath(out_path)
    name = cfg.name or cfg.variant
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise P2esError("device 'cuda' requested but no CUDA GPU is available")
    torch.manual_seed(cfg.seed)
    model, schedule = build(cfg)
    if cfg.w_pat > 0 and model.pat is None:
        raise P2esError("w-pat > 0 needs the demographic alignment: --model '{\"pat_align\": true}'")
    if cfg.w_rpeak > 0 and model.rpeak is None and model.beat is None:
        raise P2esError(
            "w-rpeak > 0 needs an R-peak head: --model '{\"rpeak_head\": true}' or '{\"rpeak_cond\": true}'"
        )
    model.to(dev)
    if model.groups is not None:
        model.groups.reservoir = model.groups.reservoir.new_zeros(cfg.group_reservoir, model.cfg.group_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    disc: Discriminators | None = None
    opt_d: torch.optim.Adam | None = None
    if VARIANTS[cfg.variant].adversarial:
        disc = Discriminators(model.cfg.n_leads, model.cfg.ppg_channels, model.cfg.fs).to(dev)
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_disc, betas=(0.5, 0.999))
    gen = torch.Generator(device=_rng_device(dev)).manual_seed(cfg.seed + 1)
    step = 0
    history: list[dict[str, Any]] = []
    if os.path.exists(out_path):  # fail now, not after hours of training, if the set is unusable
        ckpt.read_set(out_path)
    rpath = ckpt.resume_path(out_path, name)
    if resume and os.path.exists(rpath):
        st = ckpt.load_resume(rpath)
        if st.get("train_config", {}).get("variant") != cfg.variant:
            raise P2esError(
                f"resume file {rpath} is for variant {st.get('train_config', {}).get('variant')!r}"
            )
        _check_resume_schedule(rpath, st, to_dict(schedule.cfg))
        model.load_state_dict(st["model"])
        ema.model.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        if disc is not None:
            assert opt_d is not None  # created together with disc
            disc.load_state_dict(st["disc"])
            opt_d.load_state_dict(st["opt_d"])
        step, history = int(st["step"]), list(st.get("history_json") and json.loads(st["history_json"]) or [])
        if model.groups is not None and "reservoir" in st:
            model.groups.reservoir.copy_(st["reservoir"].to(dev))
            model.groups.reservoir_seen = int(st["reservoir_seen"])
    elif resume:
        print(f"p2es: no resume file {rpath}; starting from step 0", file=sys.stderr)
    V = dct_matrix(model.cfg.T).to(dev)
    source = make_stream(cfg, model.cfg.ecg_scale, start_batch=step, ppg_onset=model.cfg.ppg_onset_channel)
    stream: Iterable[dict[str, torch.Tensor]] = source
    if cfg.workers > 0 and cfg.data in ("sim", "fake"):
        stream = torch.utils.data.DataLoader(
            source, batch_size=None, num_workers=cfg.workers, persistent_workers=True, prefetch_factor=2
        )
    it = iter(stream)

    if dev.type == "cuda":

        def autocast() -> AbstractContextManager[Any]:
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        autocast = _null_ctx

    def save(final: bool = False) -> None:
        meta = {
            "steps": step,
            "seed": cfg.seed,
            "variant": cfg.variant,
            "params": model.num_params(),
            "data": _data_description(cfg),
            "final": final,
            "last_loss": history[-1] if history else None,
        }
        ckpt.add_to_set(
            out_path,
            name,
            ckpt.pack(ema.model, schedule, train_config=to_dict(cfg), meta=meta, half=cfg.half_weights),
        )
        st = {
            "train_config": to_dict(cfg),
            "schedule_config": to_dict(schedule.cfg),
            "step": step,
            "model": model.state_dict(),
            "ema": ema.model.state_dict(),
            "opt": opt.state_dict(),
            "gen": gen.get_state(),
            "history_json": json.dumps(history),
        }
        if disc is not None:
            assert opt_d is not None  # created together with disc
            st["disc"], st["opt_d"] = disc.state_dict(), opt_d.state_dict()
        if model.groups is not None:
            st["reservoir"] = model.groups.reservoir.detach().cpu()
            st["reservoir_seen"] = model.groups.reservoir_seen
        ckpt.save_resume(rpath, st)

    bar = None
    if cfg.progress:
        bar = tqdm(total=cfg.steps, initial=step, desc=name, unit="step", dynamic_ncols=True)
    model.train()
    t_start, smooth, n_win, t_win = time.perf_counter(), None, 0, time.perf_counter()
    last = min(cfg.steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.steps
    while step < last:
        batch = {k: v.to(dev, non_blocking=True) for k, v in next(it).items()}
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss, terms, cond, x0_hat = loss_terms(model, schedule, batch, cfg, gen, V, autocast)
        if disc is not None:  # generator's adversarial term, then one discriminator step
            adv = disc.g_loss(x0_hat, batch["ppg"])
            loss = loss + cfg.w_adv * adv
            terms["adv"], terms["loss"] = adv.item(), loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if disc is not None:
            assert opt_d is not None  # created together with disc
            d_loss = disc.d_loss(batch["x0"], x0_hat, batch["ppg"])
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated
            opt_d.step()
            terms["disc"] = d_loss.item()
        step += 1
        if model.groups is not None:
            assert cond.z is not None  # a model with groups returns its embedding
            model.groups.remember(cond.z)
            if cfg.group_refit_every > 0 and step % cfg.group_refit_every == 0:
                model.groups.refit(seed=cfg.seed)
        ema.update(model, step)
        smooth = terms["loss"] if smooth is None else 0.98 * smooth + 0.02 * terms["loss"]
        n_win += batch["x0"].shape[0]
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append(
                {"step": step, **{k: round(v, 6) for k, v in terms.items()}, "lr": lr_at(step - 1, cfg)}
            )
            if bar is None:  # no bar (logs, background runs): one line per log interval
                el = time.perf_counter() - t_start
                print(
                    f"{name} step {step}/{cfg.steps} loss {smooth:.4f} "
                    f"({', '.join(f'{k} {v:.4f}' for k, v in terms.items() if k != 'loss')}) "
                    f"{el:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        if bar is not None:
            bar.update(1)
            if step % 5 == 0 or step == cfg.steps:
                el = time.perf_counter() - t_win
                bar.set_postfix(loss=f"{smooth:.4f}", win_s=f"{n_win / max(el, 1e-9):.1f}")
                n_win, t_win = 0, time.perf_counter()
        if cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0 and step < cfg.steps:
            save()
    if bar is not None:
        bar.close()
    save(final=step >= cfg.steps)
    return {
        "name": name,
        "steps": step,
        "history": history,
        "params": model.num_params(),
        "seconds": time.perf_counter() - t_start,
        "model": ema.model,
        "schedule": schedule,
    }


class _null_ctx:
    def __enter__(self) -> _null_ctx:
        return self

    def __exit__(self, *a: object) -> Literal[False]:
        return False


def _data_description(cfg: TrainConfig) -> str:
    if cfg.data in ("sim", "fake"):
        return (
            f"{cfg.data}: on-the-fly, train split seeds {cfg.seed}, {cfg.duration_s} s at {cfg.fs} Hz, "
            f"noise {cfg.noise}, rhythm_mix {cfg.rhythm_mix or 'default'}"
        )
    return f"npz: {os.path.basename(cfg.data)}"


# ---------------------------------------------------------------------------------------
# command line glue (engine/cli.py registers the sub-command)
# ---------------------------------------------------------------------------------------


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``p2es train`` options to an argparse parser: every TrainConfig field as
    ``--field`` plus ``--out``, ``--resume`` and ``--config FILE.json|yaml``."""
    p.add_argument("--out", required=True, help="checkpoint set to create / update (.pt)")
    p.add_argument("--resume", action="store_true", help="continue from <out>.<name>.resume.pt if present")
    p.add_argument("--config", help="JSON or YAML file with TrainConfig fields (command line wins)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("model", "schedule"):
            p.add_argument(flag, type=json.loads, default=None, help=f"{f.name} overrides as JSON")
        elif f.type in ("bool", bool):
            p.add_argument(flag, type=_bool, default=None, metavar="true|false")
        elif f.name == "rhythm_mix":
            p.add_argument(flag, default=None)
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=None)


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(s)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    d: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            with open(args.config) as fh:
                text = fh.read()
        except OSError as e:
            raise P2esError(f"cannot read {args.config}: {e.strerror}") from None
        if args.config.endswith((".yaml", ".yml")):
            d = yaml.safe_load(text) or {}
        else:
            d = json.loads(text)
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            d[f.name] = v
    return from_dict(TrainConfig, d)


def train_main(args: argparse.Namespace) -> int:
    """Entry point for ``p2es train`` (args from :func:`add_train_arguments`)."""
    cfg = config_from_args(args)
    res = train(cfg, args.out, resume=bool(getattr(args, "resume", False)))
    last = res["history"][-1] if res["history"] else {}
    print(
        f"trained {res['name']}: {res['steps']} steps, {res['params']} params, "
        f"{res['seconds']:.0f} s, last loss {last.get('loss', float('nan')):.4f} -> {args.out}"
    )
    return 0
