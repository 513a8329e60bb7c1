"""``p2es train`` / ``p2es eval`` / ``p2es reconstruct``: the model on the command line."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from engine.train import add_train_arguments, train_main

    t = sub.add_parser("train", help="train a model variant into a checkpoint set (config saved inside)")
    add_train_arguments(t)
    t.set_defaults(func=train_main)

    register_eval(sub)
    register_reconstruct(sub)

    from engine.cli_live import register_live

    register_live(sub)

    from engine.cli_bench import register_bench

    register_bench(sub)

    try:
        from engine.cli_export import register_export
    except ModuleNotFoundError as e:
        if e.name != "engine.cli_export":
            raise
    else:
        register_export(sub)


# --------------------------------------------------------------------------- p2es eval


def register_eval(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="score a checkpoint set on held-out simulated subjects (markdown table + JSON)")
    e.add_argument("--checkpoint", default=None,
                   help="checkpoint set (default: the shipped engine/weights/p2es_set.pt)")
    e.add_argument("--records", type=int, default=512, help="held-out test windows (default 512)")
    e.add_argument("--seed", type=int, default=0, help="test-split seed 0..99 (default 0)")
    e.add_argument("--json", default=None, metavar="OUT.json", help="write the full result here")
    e.add_argument("--steps", type=int, default=10, help="reverse diffusion steps (default 10)")
    e.add_argument("--k", type=int, default=4, help="samples per window for p2es_mean_of_k / uncertainty (default 4)")
    e.add_argument("--batch", type=int, default=64, help="windows per sampling batch (default 64)")
    e.add_argument("--models", default=None,
                   help="comma-separated rows, e.g. p2es,ddpm (default: all + p2es_shuffled_demographics, p2es_mean_of_k)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    e.add_argument("--data", default="sim", help="sim (default), fake, or a .npz with the simulator's keys")
    e.add_argument("--figure", default=None, metavar="OUT.png",
                   help="also draw record 0: true vs p2es reconstruction with its uncertainty band")
    e.add_argument("--no-uncertainty", action="store_true",
                   help="skip the k-sample uncertainty runs of the non-p2es diffusion models")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=eval_main)


def eval_main(args: argparse.Namespace) -> int:
    from engine.evaluate import evaluate, figure, markdown_table, plan_rows, save_json
    from engine import checkpoint as ckpt
    from p2es.errors import P2esError

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
    plan_rows(ckpt.list_models(args.checkpoint or _default_checkpoint()), args.models)
    res = evaluate(args.checkpoint, records=args.records, seed=args.seed, steps=args.steps, k=args.k,
                   batch=args.batch, models=args.models, threads=args.threads,
                   progress=not args.no_progress, data=args.data, uncertainty=not args.no_uncertainty)
    print(markdown_table(res))
    if args.json:
        print(f"wrote {save_json(res, args.json)}")
    if args.figure:
        p = figure(args.checkpoint, args.figure, args.seed, steps=args.steps, k=args.k, data=args.data,
                   threads=args.threads)
        print(f"wrote {p}")
    print(f"eval took {res['seconds']:.1f} s")
    return 0


def _default_checkpoint():
    from engine.evaluate import DEFAULT_CHECKPOINT

    return DEFAULT_CHECKPOINT


# --------------------------------------------------------------------------- p2es reconstruct


def register_reconstruct(sub: argparse._SubParsersAction) -> None:
    from engine.reconstruct import add_reconstruct_arguments, reconstruct_main

    r = sub.add_parser("reconstruct", help="reconstruct a 12-lead ECG (CSV, mV) from a PPG recording")
    add_reconstruct_arguments(r)
    r.set_defaults(func=reconstruct_main)
