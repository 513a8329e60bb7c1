"""``p2es data ...`` and ``p2es simulate``: the simulator, the simulated wearables and the real-data
tools on the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from p2es.argtypes import finite_float as _float
from p2es.argtypes import positive_int as _positive_int
from p2es.errors import P2esError
from p2es.leads import LEADS
from p2es.transport.settings import add_broker_flags, mqtt_tls_from_flags
from wearable.readers import read_any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    data = sub.add_parser("data", help="simulate, read and plot paired PPG / 12-lead ECG data")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(data))
    dsub.required = True

    s = dsub.add_parser("synth", help="generate paired PPG + 12-lead ECG records (.npz)")
    s.add_argument("--records", type=_positive_int, required=True, help="number of records N")
    s.add_argument("--seed", type=int, default=0, help="seed; different seeds give disjoint subjects")
    s.add_argument("--out", required=True, help="output .npz path")
    s.add_argument("--duration", type=_float, default=8.0, help="record length in seconds (default 8)")
    s.add_argument("--fs", type=_float, default=128.0, help="sampling rate in Hz, >= 50 (default 128)")
    s.add_argument("--subjects", type=_positive_int, default=None, help="number of subjects (default N/4)")
    s.add_argument(
        "--rhythm",
        default=None,
        help="rhythm mix, e.g. 'sinus=0.6,af=0.4' or one name; names: "
        "sinus, sinus_brady, sinus_tachy, af, pvc, long_qt, st_elevation, st_depression",
    )
    s.add_argument("--hr", type=_float, default=None, help="force this heart rate (bpm) for every record")
    s.add_argument("--noise", type=_float, default=1.0, help="noise scale (0 = clean, default 1)")
    s.add_argument("--no-noisy-ecg", action="store_true", help="do not store the noisy ECG copy")
    s.add_argument(
        "--ppg-frontend",
        type=_float,
        default=0.5,
        help="fraction of records whose PPG passes a random sensor front-end "
        "(AC coupling, low-pass, ADC clipping; default 0.5)",
    )
    s.add_argument(
        "--rate-profile",
        choices=("v1", "wide"),
        default="v1",
        help="heart-rate profile: v1 (default) or wide (sinus 35-180 bpm, AF 50-170 bpm: what the "
        "shipped set was trained on; see docs/simulator.md)",
    )
    s.set_defaults(func=cmd_synth)

    p = dsub.add_parser("plot", help="draw a record as a 12-lead ECG on ECG paper (PNG)")
    p.add_argument("file", help="simulator .npz")
    p.add_argument("--index", type=int, default=0, help="record index (default 0)")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--noisy", action="store_true", help="plot the noisy ECG copy instead of the clean one")
    p.set_defaults(func=cmd_plot)

    r = dsub.add_parser("read", help="read a real recording (WFDB, DICOM, CSV) and summarise or plot it")
    r.add_argument("file", help="WFDB record (.hea), DICOM waveform (.dcm) or CSV")
    r.add_argument("--fs", type=_float, default=None, help="sampling rate for a CSV without a time column")
    r.add_argument("--plot", default=None, help="draw the 12-lead ECG (if present) to this PNG")
    r.set_defaults(func=cmd_read)


def register_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``p2es simulate``: simulated wearables publishing PPG over MQTT (:func:`wearable.publisher.simulate`)."""
    s = sub.add_parser("simulate", help="publish simulated wearables' PPG over MQTT (real time x speed)")
    s.add_argument("--patients", type=int, default=3)
    s.add_argument("--speed", type=float, default=1.0, help="time-lapse factor (1 = real time)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--duration", type=float, default=None, help="seconds of signal (default: until stopped)")
    s.add_argument("--chunk-s", type=float, default=1.0)
    s.add_argument("--binary", type=float, default=0.0, help="fraction of chunks sent as ppg/bin")
    s.add_argument("--prefix", default="sim", help="patient ids are PREFIX-000, PREFIX-001, ...")
    add_broker_flags(s, broker_default="mqtt://127.0.0.1:1883", version_default="5")
    s.set_defaults(func=cmd_simulate)


def cmd_synth(args: argparse.Namespace) -> int:
    from wearable.sim import save_npz, synthesize  # lazy: CLI start-up (scipy)

    if args.duration <= 0:
        raise P2esError(f"--duration must be positive, got {args.duration:g}")
    if args.fs < 50:
        raise P2esError(f"--fs must be at least 50 Hz, got {args.fs:g}")
    if args.fs > 2000:
        raise P2esError(f"--fs must be at most 2000 Hz, got {args.fs:g}")
    if args.noise < 0:
        raise P2esError(f"--noise must be >= 0, got {args.noise:g}")
    if not 0.0 <= args.ppg_frontend <= 1.0:
        raise P2esError(f"--ppg-frontend must be within 0-1, got {args.ppg_frontend:g}")
    if args.hr is not None and not 20 <= args.hr <= 250:
        raise P2esError(f"--hr must be within 20-250 bpm, got {args.hr:g}")
    t0 = time.perf_counter()
    try:
        data = synthesize(
            args.records,
            args.seed,
            duration_s=args.duration,
            fs=args.fs,
            n_subjects=args.subjects,
            rhythm_mix=args.rhythm,
            hr_bpm=args.hr,
            noise=args.noise,
            noisy_ecg=not args.no_noisy_ecg,
            ppg_frontend=args.ppg_frontend,
            rate_profile=args.rate_profile,
        )
    except ValueError as exc:
        raise P2esError(str(exc)) from None
    path = save_npz(args.out, data)
    dt = time.perf_counter() - t0
    counts = {k: int(v) for k, v in zip(*np.unique(data["rhythm"], return_counts=True))}
    print(
        f"wrote {path}: {args.records} records x {data['ppg'].shape[1]} samples at {args.fs:g} Hz, "
        f"{len(np.unique(data['subject']))} subjects, {dt:.2f} s; rhythms {counts}"
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from p2es.plot import plot_ecg_paper, record_header  # lazy: heavy dependency (matplotlib)
    from wearable.sim import load_npz  # lazy: CLI start-up (scipy)

    data = load_npz(args.file)
    n = data["ecg"].shape[0]
    if not 0 <= args.index < n:
        raise P2esError(f"--index {args.index} out of range: {args.file} has {n} records")
    key = "ecg_noisy" if args.noisy else "ecg"
    if key not in data:
        raise P2esError(f"{args.file} has no '{key}' array")
    title, subtitle = record_header(data, args.index)
    out = plot_ecg_paper(
        data[key][args.index],
        float(data["fs"]),
        args.out,
        ppg=data["ppg"][args.index],
        title=title,
        subtitle=subtitle,
        disclaimer="Simulated waveform - not a diagnostic ECG",
    )
    print(f"wrote {out}")
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    rec = read_any(args.file, fs=args.fs)
    t = rec.n_samples
    print(f"{rec.source}: fs {rec.fs:g} Hz, {t} samples ({t / rec.fs:.1f} s)")
    print(
        f"  PPG: {'yes' if rec.ppg is not None else 'no'}; ECG leads: {', '.join(rec.ecg_present) or 'none'}"
    )
    if args.plot:
        if rec.ecg is None:
            raise P2esError(f"{args.file} has no ECG to plot")
        from p2es.plot import plot_ecg_paper  # lazy: heavy dependency (matplotlib)

        ecg = np.where(np.isnan(rec.ecg), 0.0, rec.ecg)
        out = plot_ecg_paper(
            ecg,
            rec.fs,
            args.plot,
            ppg=rec.ppg,
            title=Path(args.file).name,
            subtitle=f"leads present: {', '.join(rec.ecg_present)}",
            disclaimer=None,
        )
        print(
            f"wrote {out} ({', '.join(lead for lead in LEADS if lead not in rec.ecg_present) or 'no'} leads missing)"
        )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """``p2es simulate``: stops cleanly on SIGINT/SIGTERM, after the chunk in flight; prints the
    publisher's counts as one JSON line.  Secrets may come from ``P2ES_MQTT_USERNAME`` /
    ``P2ES_MQTT_PASSWORD`` instead of the flags."""
    from p2es.contracts.topics import PATIENT_ID_RE  # lazy: CLI start-up time (only `p2es simulate` needs it)
    from wearable.publisher import simulate  # lazy: CLI start-up time (only `p2es simulate` needs it)

    if args.patients < 1:
        raise P2esError(f"--patients must be >= 1, got {args.patients}")
    if not args.speed > 0:
        raise P2esError(f"--speed must be > 0, got {args.speed}")
    if args.duration is not None and not args.duration >= args.chunk_s:
        raise P2esError(f"--duration must be >= --chunk-s ({args.chunk_s:g}), got {args.duration}")
    if not args.chunk_s > 0:
        raise P2esError(f"--chunk-s must be > 0, got {args.chunk_s}")
    if not 0 <= args.binary <= 1:
        raise P2esError("--binary must be within 0..1")
    if not PATIENT_ID_RE.fullmatch(f"{args.prefix}-000"):
        raise P2esError(f"--prefix must match [A-Za-z0-9_.-], got {args.prefix!r}")
    if not (args.broker.startswith("mqtt://") or args.broker.startswith("mqtts://")):
        raise P2esError(f"--broker must be mqtt://HOST:PORT or mqtts://HOST:PORT, got {args.broker!r}")
    tls = mqtt_tls_from_flags(args)
    res = simulate(
        args.broker,
        patients=args.patients,
        speed=args.speed,
        seed=args.seed,
        duration_s=args.duration,
        chunk_s=args.chunk_s,
        binary=args.binary,
        prefix=args.prefix,
        username=args.mqtt_username or os.environ.get("P2ES_MQTT_USERNAME"),
        password=args.mqtt_password or os.environ.get("P2ES_MQTT_PASSWORD"),
        mqtt_version=args.mqtt_version,
        tls_context=tls,
        ca_file=args.mqtt_ca_file,
    )
    print(json.dumps(res), file=sys.stdout)
    return 0
