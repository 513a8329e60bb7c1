"""``p2es bench`` end to end on a tiny (untrained) checkpoint: engine, sustained patients, live run."""

from __future__ import annotations

import json
import math

import pytest


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny p2es model saved as a checkpoint set (random weights: the bench times, not scores)."""
    import torch

    from engine.model.checkpoint import pack, save_set
    from engine.model.config import variant
    from engine.model.network import P2ES
    from engine.model.schedule import make_schedule

    torch.manual_seed(0)
    mc, sc = variant("p2es", widths=(8, 16, 16), emb_dim=32, n_groups=4, group_dim=8)
    model = P2ES(mc).eval()
    path = tmp_path_factory.mktemp("bench") / "tiny.pt"
    save_set(path, {"p2es": pack(model, make_schedule(sc, mc.T))})
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """ONNX exports of the tiny model go to a temp cache, not ~/.cache."""
    monkeypatch.setenv("P2ES_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "p2es-cache"))


def _main(monkeypatch, argv):
    """p2es.cli.main with ``bench`` registered (also before engine/cli.py wires it in)."""
    import engine.app.cli as engine_cli
    from engine.app.cli_bench import register_bench
    from p2es.cli import main

    orig = engine_cli.register

    def register(sub):
        orig(sub)
        if "bench" not in sub.choices:
            register_bench(sub)

    monkeypatch.setattr(engine_cli, "register", register)
    return main(argv)


def _finite_pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_end_to_end(tiny_ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    rc = _main(
        monkeypatch,
        [
            "bench",
            "--json",
            str(out),
            "--checkpoint",
            str(tiny_ckpt),
            "--threads",
            "1",
            "--steps",
            "2",
            "--k",
            "2",
            "--batch-sizes",
            "1,2",
            "--repeats",
            "2",
            "--live-patients",
            "1",
            "--live-duration",
            "12",
            "--no-progress",
        ],
    )
    assert rc == 0
    res = json.loads(out.read_text())
    for key in (
        "device",
        "cpu_count",
        "threads",
        "steps",
        "k",
        "window_s",
        "hop_s",
        "engine",
        "patients_sustained",
        "live",
        "checkpoint",
    ):
        assert key in res, key
    assert res["device"] == "cpu" and res["threads"] == 1 and res["steps"] == 2 and res["k"] == 2
    assert [r["batch"] for r in res["engine"]] == [1, 2]
    for r in res["engine"]:
        for f in ("windows_per_s", "latency_ms_p50", "latency_ms_p99"):
            assert _finite_pos(r[f]), (r["batch"], f, r[f])
        assert r["latency_ms_p99"] >= r["latency_ms_p50"]
    best = max(r["windows_per_s"] for r in res["engine"])
    assert res["patients_sustained"] == math.floor(best * res["hop_s"]) and res["patients_sustained"] >= 1
    live = res["live"]
    assert live["patients"] == 1 and live["duration_s"] == 12
    assert _finite_pos(live["e2e_latency_ms_p50"]) and _finite_pos(live["e2e_latency_ms_p99"])
    assert live["e2e_latency_ms_p99"] >= live["e2e_latency_ms_p50"]
    assert isinstance(live["kept_up"], bool) and live["windows"] >= 1
    text = capsys.readouterr().out
    assert "patients sustained" in text and "windows/s" in text


def test_bench_backends_ratio_and_patients(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """torch (the eager baseline) and onnxruntime in one run: per-backend rows, ratio, capacity, FLOPs."""
    out = tmp_path / "bench.json"
    rc = _main(
        monkeypatch,
        [
            "bench",
            "--json",
            str(out),
            "--checkpoint",
            str(tiny_ckpt),
            "--threads",
            "1",
            "--steps",
            "2",
            "--k",
            "2",
            "--batch-sizes",
            "1,3",
            "--repeats",
            "1",
            "--backends",
            "torch,onnxruntime",
            "--live-patients",
            "0",
            "--no-progress",
        ],
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["baseline"] == "torch"
    by = {b["backend"]: b for b in res["backends"]}
    assert set(by) == {"torch", "onnxruntime"}
    for b in by.values():
        assert [r["batch"] for r in b["engine"]] == [1, 3]
        assert b["patients_sustained"] == math.floor(b["best_windows_per_s"] * res["hop_s"])
        for r in b["engine"]:
            assert _finite_pos(r["ratio_vs_baseline"]) and _finite_pos(r["achieved_gflops_per_s"])
            assert r["fraction_of_peak"] is None  # CPU: no known peak
    assert all(r["ratio_vs_baseline"] == 1.0 for r in by["torch"]["engine"])
    ort_wps = {r["batch"]: r["windows_per_s"] for r in by["onnxruntime"]["engine"]}
    for r in by["onnxruntime"]["engine"]:
        base = next(x for x in by["torch"]["engine"] if x["batch"] == r["batch"])
        assert r["ratio_vs_baseline"] == pytest.approx(ort_wps[r["batch"]] / base["windows_per_s"])
    fastest = max(by.values(), key=lambda b: b["best_windows_per_s"])
    assert res["backend"] == fastest["backend"] and res["patients_sustained"] == fastest["patients_sustained"]
    assert res["flops"]["window_step"] == res["flops_per_window_step"] > res["flops"]["denoise"] > 0
    assert res["flops_per_window"] == pytest.approx(
        res["flops"]["encode"] + 2 * 2 * res["flops"]["denoise"] + 1 * 2 * res["flops"]["ddim_step"]
    )
    text = capsys.readouterr().out
    assert "onnxruntime" in text and "x torch" in text and "per backend" in text


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--backends", "tflite"], "--backends"),
        (["--backends", "all,torch"], "--backends"),
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--k", "0"], "--k"),
        (["--hop-s", "9"], "--hop-s"),
        (["--live-duration", "5"], "--live-duration"),
        (["--window-s", "4"], "--window-s"),  # the model takes 8 s windows
        (["--checkpoint", "/nonexistent/x.pt"], "checkpoint not found"),
    ],
)
def test_bench_bad_input_is_one_line(tiny_ckpt, tmp_path, monkeypatch, capsys, argv, msg):
    args = [
        "bench",
        "--json",
        str(tmp_path / "o.json"),
        "--no-progress",
        "--steps",
        "1",
        "--k",
        "1",
        "--batch-sizes",
        "1",
        "--repeats",
        "1",
    ]
    if "--live-duration" not in argv:
        args += ["--live-patients", "0"]
    if "--checkpoint" not in argv:
        args += ["--checkpoint", str(tiny_ckpt)]
    rc = _main(monkeypatch, args + argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and msg in err and err.startswith("p2es: error:")
    assert not (tmp_path / "o.json").exists()
