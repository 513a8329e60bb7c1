"""The engine's commands on the ``p2es`` command line, each registered next to what it runs:
``p2es demo`` (:mod:`engine.app.demo`), ``p2es train`` (:mod:`engine.model.train`), ``p2es eval``
(here), ``p2es reconstruct`` (:mod:`engine.model.reconstruct`), ``p2es run``
(:mod:`engine.app.cli_live`), ``p2es bench`` (:mod:`engine.app.cli_bench`), ``p2es export``
(:mod:`engine.app.cli_export`) and ``p2es set-sampler`` (here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.app.cli_bench import register_bench
from engine.app.cli_export import register_export
from engine.app.cli_live import register_live
from engine.app.demo import register_demo
from engine.model import checkpoint as ckpt
from engine.model.config import SamplerConfig
from engine.model.reconstruct import add_reconstruct_arguments, reconstruct_main
from engine.model.train import add_train_arguments, train_main
from p2es.argtypes import finite_float
from p2es.errors import P2esError
from wearable.cli import register_simulate


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Every engine command, in the order ``p2es --help`` lists them; ``p2es simulate`` (registered
    in :mod:`wearable.cli`, next to its publisher) keeps its place there, after ``p2es run``."""
    register_demo(sub)

    t = sub.add_parser("train", help="train a model variant into a checkpoint set (config saved inside)")
    add_train_arguments(t)
    t.set_defaults(func=train_main)

    register_eval(sub)
    register_reconstruct(sub)
    register_live(sub)
    register_simulate(sub)
    register_bench(sub)
    register_export(sub)
    register_set_sampler(sub)


# --------------------------------------------------------------------------- p2es eval


def register_eval(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser(
        "eval", help="score a checkpoint set on held-out simulated subjects (markdown table + JSON)"
    )
    e.add_argument(
        "--checkpoint", default=None, help="checkpoint set (default: the shipped engine/weights/p2es_set.pt)"
    )
    e.add_argument("--records", type=int, default=512, help="held-out test windows (default 512)")
    e.add_argument("--seed", type=int, default=0, help="test-split seed 0..99 (default 0)")
    e.add_argument("--json", default=None, metavar="OUT.json", help="write the full result here")
    e.add_argument("--steps", type=int, default=10, help="reverse diffusion steps (default 10)")
    e.add_argument(
        "--k", type=int, default=4, help="samples per window for p2es_mean_of_k / uncertainty (default 4)"
    )
    e.add_argument("--batch", type=int, default=64, help="windows per sampling batch (default 64)")
    e.add_argument(
        "--models",
        default=None,
        help="comma-separated rows, e.g. p2es,ddpm (default: all + p2es_shuffled_demographics, p2es_mean_of_k, and the floor rows zero, template)",
    )
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    e.add_argument("--data", default="sim", help="sim (default), fake, or a .npz with the simulator's keys")
    e.add_argument(
        "--rate-profile",
        default=None,
        choices=("v1", "wide"),
        help="simulator heart-rate profile of the test records (default: the one the set's p2es was "
        "trained on; v1, or wide: sinus 35-180 bpm)",
    )
    e.add_argument(
        "--figure",
        default=None,
        metavar="OUT.png",
        help="also draw record 0: true vs p2es reconstruction with its uncertainty band",
    )
    e.add_argument(
        "--no-uncertainty",
        action="store_true",
        help="skip the k-sample uncertainty runs of the non-p2es diffusion models",
    )
    e.add_argument(
        "--fd-interval",
        action="store_true",
        help="also a paired subject-level interval for FD vs p2es (delete-one-subject jackknife; "
        "slow: ~20 ms per lead, model and subject)",
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=eval_main)


def eval_main(args: argparse.Namespace) -> int:
    from engine.model.evaluate import (  # lazy: CLI start-up time (only `p2es eval` needs it)
        evaluate,
        figure,
        markdown_table,
        plan_rows,
        save_json,
    )

    if args.records < 1:
        raise P2esError(f"--records must be >= 1, got {args.records}")
    if args.steps < 1:
        raise P2esError(f"--steps must be >= 1, got {args.steps}")
    if args.k < 1:
        raise P2esError(f"--k must be >= 1, got {args.k}")
    if args.batch < 1:
        raise P2esError(f"--batch must be >= 1, got {args.batch}")
    if args.threads is not None and args.threads < 1:
        raise P2esError(f"--threads must be >= 1, got {args.threads}")
    if args.figure is not None:  # fail before the long run, not after it
        names = ckpt.list_models(args.checkpoint or _default_checkpoint())
        if "p2es" not in names:
            raise P2esError("--figure needs a 'p2es' model in the checkpoint set")
    plan_rows(list(ckpt.list_models(args.checkpoint or _default_checkpoint())), args.models)
    res = evaluate(
        args.checkpoint,
        records=args.records,
        seed=args.seed,
        steps=args.steps,
        k=args.k,
        batch=args.batch,
        models=args.models,
        threads=args.threads,
        progress=not args.no_progress,
        data=args.data,
        uncertainty=not args.no_uncertainty,
        fd_interval=args.fd_interval,
        rate_profile=args.rate_profile,
    )
    print(markdown_table(res))
    if args.json:
        print(f"wrote {save_json(res, args.json)}")
    if args.figure:
        p = figure(
            args.checkpoint,
            args.figure,
            args.seed,
            steps=args.steps,
            k=args.k,
            data=args.data,
            threads=args.threads,
            rate_profile=res.get("rate_profile"),
        )
        print(f"wrote {p}")
    print(f"eval took {res['seconds']:.1f} s")
    return 0


def _default_checkpoint() -> Path:
    return ckpt.DEFAULT_CHECKPOINT


# --------------------------------------------------------------------------- p2es reconstruct


def register_reconstruct(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("reconstruct", help="reconstruct a 12-lead ECG (CSV, mV) from a PPG recording")
    add_reconstruct_arguments(r)
    r.set_defaults(func=reconstruct_main)


# --------------------------------------------------------------------------- p2es set-sampler


def register_set_sampler(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "set-sampler",
        help="set a model's sampler config (initial-noise temperature) in a checkpoint set",
    )
    s.add_argument("--checkpoint", required=True, help="checkpoint set to rewrite (atomically)")
    s.add_argument("--model", default="p2es", help="model name in the set (default p2es)")
    s.add_argument(
        "--temperature",
        type=finite_float,
        required=True,
        help="scale of the initial noise x_T, 0..1 (1: the learned distribution, as before)",
    )
    s.set_defaults(func=set_sampler_main)


def set_sampler_main(args: argparse.Namespace) -> int:
    """Store the sampler config in the set; every sampling path (eval, reconstruct, the live
    backends) then uses it for that model."""
    cfg = SamplerConfig(temperature=args.temperature)  # out of range -> one-line P2esError
    old = ckpt.set_sampler(args.checkpoint, args.model, cfg)
    print(f"{args.checkpoint}: model {args.model!r} temperature {old.temperature:g} -> {cfg.temperature:g}")
    return 0
