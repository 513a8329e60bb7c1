"""Runtime backends: selection, ONNX Runtime == torch for the whole reconstruction, the graphable
loop == the sampler, and the live pipeline end to end on ONNX Runtime against the real Mosquitto.

TensorRT and CUDA graphs need a GPU (+ TensorRT): those tests run only where they import."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest
import services

TINY = dict(widths=(8, 16, 16), emb_dim=32, n_groups=4, group_dim=8)


def _tiny_set(path, names=("p2es",)):
    import torch

    from engine.model.checkpoint import pack, save_set
    from engine.model.config import variant
    from engine.model.network import P2ES
    from engine.model.schedule import make_schedule

    torch.manual_seed(0)
    models = {}
    for n in names:
        mc, sc = variant(n, **TINY)
        m = P2ES(mc).eval()
        with torch.no_grad():  # untrained FiLM/deblur start at zero/identity: perturb so they matter
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        models[n] = pack(m, make_schedule(sc, mc.T))
    save_set(path, models)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return _tiny_set(
        tmp_path_factory.mktemp("bk") / "tiny.pt", ("p2es", "ddpm", "unet_regression", "p2es_no_groups")
    )


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("P2ES_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "p2es-cache"))


def _inputs(B, seed=3):
    from engine.serve.runtime import WindowRequest, prepare_batch
    from wearable.sim import synthesize

    d = synthesize(B, seed=seed)
    reqs = [
        WindowRequest(
            f"p{i}",
            1e9,
            128.0,
            d["ppg"][i],
            {"age": float(d["age"][i]), "sex": int(d["sex"][i])} if i % 2 == 0 else None,
            0.9,
        )
        for i in range(B)
    ]
    return prepare_batch(reqs)


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-12))


# ------------------------------------------------------------------------------ selection
def test_backend_selection_by_name_and_auto(monkeypatch):
    import engine.serve.backends as B
    from p2es.errors import P2esError

    assert B.available_backends("cpu") == ["torch", "onnxruntime"]
    assert B.resolve_backend("auto", "cpu") == "onnxruntime"
    assert B.resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(P2esError, match="unknown backend"):
        B.resolve_backend("tensorflow", "cpu")
    with pytest.raises(P2esError, match="CUDA GPU only"):
        B.resolve_backend("tensorrt", "cpu")
    # CUDA: tensorrt when it imports, else torch (CUDA graphs)
    monkeypatch.setattr(B, "_cuda_ok", lambda: True)
    monkeypatch.setattr(B, "_tensorrt_ok", lambda: True)
    assert B.resolve_backend("auto", "cuda") == "tensorrt"
    monkeypatch.setattr(B, "_tensorrt_ok", lambda: False)
    assert B.resolve_backend("auto", "cuda") == "torch"
    # without onnxruntime: auto falls back to torch, asking for it is one clear line
    real = B._importable
    monkeypatch.setattr(B, "_importable", lambda m: False if m == "onnxruntime" else real(m))
    assert B.available_backends("cpu") == ["torch"]
    assert B.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(P2esError, match="pip install"):
        B.resolve_backend("onnxruntime", "cpu")


def test_tensorrt_absent_is_one_line():
    from engine.serve.backends.tensorrt import require_tensorrt, tensorrt_available
    from p2es.errors import P2esError

    if tensorrt_available():
        pytest.skip("tensorrt is installed here")
    with pytest.raises(P2esError, match="TensorRT is not installed"):
        require_tensorrt()


def test_make_backend_types_and_old_import(tiny_ckpt):
    import engine.serve.backends as B
    from engine.model.checkpoint import load_model
    from engine.serve.backends.ort import OrtBackend
    from engine.serve.runtime import TorchBackend

    e = load_model(tiny_ckpt, "p2es")
    assert B.TorchBackend is TorchBackend
    tb = B.make_backend("torch", e, steps=2, k=1, threads=1)
    ob = B.make_backend("auto", e, steps=2, k=1, threads=1)
    assert isinstance(tb, TorchBackend) and isinstance(ob, OrtBackend)
    assert ob.T == tb.T == 1024 and ob.fs == tb.fs == 128.0


def test_ort_backend_only_loads_and_verifies_nothing(tiny_ckpt, tmp_path, monkeypatch):
    """Building an OrtBackend loads its artefact (exporting it on a cache miss) and nothing more:
    no TorchBackend is built and no check against torch runs (that is ``p2es export``'s job)."""
    import json

    import engine.serve.runtime as rt
    from engine.model.checkpoint import load_model
    from engine.serve.backends.ort import OrtBackend

    built = []
    real_init = rt.TorchBackend.__init__

    def spy(self, *args, **kwargs):
        built.append(args)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(rt.TorchBackend, "__init__", spy)
    cache = tmp_path / "cache"  # empty: the backend has to export
    ob = OrtBackend(load_model(tiny_ckpt, "p2es"), steps=2, k=1, threads=1, cache_dir=cache)
    assert built == []
    assert ob.model_dir.parent == cache / "onnx"
    meta = json.loads((ob.model_dir / "meta.json").read_text())
    assert "check_passes_rel_err" not in meta and "check_reconstruction_rel_err" not in meta


# ------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("name", ["p2es", "ddpm", "unet_regression", "p2es_no_groups"])
def test_onnxruntime_matches_torch_whole_reconstruction(tiny_ckpt, name):
    """Same seed => same x_T: the whole loop (encode, every DDIM step, 12-lead finish) agrees."""
    from engine.model.checkpoint import load_model
    from engine.serve.backends.ort import OrtBackend
    from engine.serve.runtime import TorchBackend

    e = load_model(tiny_ckpt, name)
    feats, demo, mask = _inputs(3)
    tb = TorchBackend(e, steps=4, k=2, seed=5, threads=1)
    ob = OrtBackend(e, steps=4, k=2, seed=5, threads=1)
    for _ in range(2):  # the per-call seed advances identically
        m_t, s_t = tb.run(feats, demo, mask)
        m_o, s_o = ob.run(feats, demo, mask)
        assert m_o.shape == (3, 12, 1024) and s_o.shape == (3, 12, 1024)
        assert rel(m_o, m_t) < 1e-4, rel(m_o, m_t)
        if name != "unet_regression":
            assert rel(s_o, s_t) < 1e-4 and np.all(s_o >= 0)
        else:
            assert np.all(s_o == 0)


def test_graphable_loop_equals_sampler_on_cpu(tiny_ckpt):
    """The loop that gets CUDA-graph captured (and drives TensorRT) is the sampler's loop."""
    import torch

    from engine.model import sampler
    from engine.model.checkpoint import load_model
    from engine.serve.backends.common import draw_noise
    from engine.serve.backends.torch_loop import GraphableLoop

    e = load_model(tiny_ckpt, "p2es")
    feats, demo, mask = (torch.as_tensor(a) for a in _inputs(2))
    ref = sampler.sample(
        e.model,
        e.schedule,
        feats,
        (demo, mask),
        steps=3,
        k=2,
        generator=torch.Generator().manual_seed(11),
        keep_samples=False,
    )
    loop = GraphableLoop(e.model, e.schedule, steps=3, k=2, device="cpu")
    with torch.no_grad():
        mean, std = loop(feats, demo, mask, torch.as_tensor(draw_noise(11, (4, 8, 1024))))
    assert rel(mean.numpy(), ref.mean.numpy()) < 1e-6 and rel(std.numpy(), ref.std.numpy()) < 1e-6


def _keyed(be, reqs):
    from engine.serve.runtime import prepare_batch

    feats, demo, mask = prepare_batch(reqs)
    return be.run(feats, demo, mask, [(r.patient, r.t0) for r in reqs])


def _reqs(n, seed=3):
    from engine.serve.runtime import WindowRequest
    from wearable.sim import synthesize

    d = synthesize(n, seed=seed)
    return [WindowRequest(f"bed-{i}", 1.7e9 + 4.0 * i, 128.0, d["ppg"][i], None, 0.9) for i in range(n)]


@pytest.mark.parametrize("name", ["p2es", "ddpm"])
def test_onnxruntime_per_window_noise_matches_torch_and_ignores_the_batch(tiny_ckpt, name):
    """Issue #15 item 1 on ONNX Runtime (the CPU default): with window keys both backends draw
    the same per-window x_T, so they agree, and a window's ORT output is the same alone and in a
    batch with other windows (and does not depend on the backends' call counters)."""
    from engine.model.checkpoint import load_model
    from engine.serve.backends.ort import OrtBackend
    from engine.serve.runtime import TorchBackend

    e = load_model(tiny_ckpt, name)
    tb = TorchBackend(e, steps=4, k=2, seed=5, threads=1)
    ob = OrtBackend(e, steps=4, k=2, seed=5, threads=1)
    assert ob.model_key == tb.model_key and len(tb.model_key) == 16
    w = _reqs(4)
    batch_o, batch_t = _keyed(ob, [w[3], w[1], w[0]]), _keyed(tb, [w[3], w[1], w[0]])
    alone_o = _keyed(ob, [w[1]])
    pair_o = _keyed(ob, [w[1], w[2]])
    assert rel(batch_o[0], batch_t[0]) < 1e-4 and rel(batch_o[1], batch_t[1]) < 1e-4
    for got in (batch_o[0][1], pair_o[0][0]):
        assert np.max(np.abs(got - alone_o[0][0])) <= 1e-5
    assert np.max(np.abs(batch_o[1][1] - alone_o[1][0])) <= 1e-5


def _at_temperature(src, tmp_path, name, temperature):
    """(entry at temperature 1, entry at ``temperature``): the same weights, the second from a
    copy of the set whose ``name`` got ``temperature`` through ``set_sampler``."""
    import shutil

    from engine.model.checkpoint import load_model, set_sampler
    from engine.model.config import SamplerConfig

    path = tmp_path / "tempered.pt"
    shutil.copyfile(src, path)
    set_sampler(path, name, SamplerConfig(temperature))
    return load_model(src, name), load_model(path, name)


def _trt_without_tensorrt(entry, *, steps, k, seed):
    """A TensorRTBackend whose ``run`` (host-side noise, temperature, the GraphableLoop) drives
    the torch passes on the CPU instead of engines: its noise path is checked where TensorRT
    cannot be installed (the engines themselves: test_tensorrt_backend_matches_torch)."""
    from engine.serve.backends.tensorrt import TensorRTBackend
    from engine.serve.backends.torch_loop import GraphableLoop

    be = TensorRTBackend.__new__(TensorRTBackend)
    be.device = __import__("torch").device("cpu")
    be.entry, be.cfg = entry, entry.model.cfg
    be.steps, be.k, be.seed = steps, k, seed
    be.temperature = float(entry.sampler_config.temperature)
    be.T, be.fs = int(entry.model.cfg.T), float(entry.model.cfg.fs)
    be.loop = GraphableLoop(entry.model, entry.schedule, steps=steps, k=k, device="cpu")
    be.runner, be._calls, be._model_key = None, 0, None
    return be


@pytest.mark.parametrize("name", ["p2es", "ddpm"])
def test_saved_temperature_reaches_every_backend_alike(tiny_ckpt, tmp_path, name):
    """A model saved at temperature 0.7 (set_sampler): torch and ONNX Runtime give the same
    reconstruction, keyed (live path) and per-call seeded, and it is not the temperature-1 one;
    the TensorRT backend's host-side noise path agrees too.  The noise keys do not change."""
    from engine.serve.backends.ort import OrtBackend
    from engine.serve.runtime import TorchBackend

    e1, e7 = _at_temperature(tiny_ckpt, tmp_path, name, 0.7)
    assert e1.sampler_config.temperature == 1.0 and e7.sampler_config.temperature == 0.7
    tb, ob = (
        TorchBackend(e7, steps=4, k=2, seed=5, threads=1),
        OrtBackend(e7, steps=4, k=2, seed=5, threads=1),
    )
    tb1, ob1 = (
        TorchBackend(e1, steps=4, k=2, seed=5, threads=1),
        OrtBackend(e1, steps=4, k=2, seed=5, threads=1),
    )
    rt = _trt_without_tensorrt(e7, steps=4, k=2, seed=5)
    assert ob.temperature == tb.temperature == 0.7 and tb.model_key == tb1.model_key == rt.model_key
    w = _reqs(3)
    keyed = {be: _keyed(be, w) for be in (tb, ob, tb1, ob1, rt)}
    feats, demo, mask = _inputs(3)
    plain = {be: be.run(feats, demo, mask) for be in (tb, ob, tb1, ob1, rt)}
    for got in (keyed, plain):
        for i in (0, 1):  # mean, std
            assert rel(got[ob][i], got[tb][i]) < 1e-4, (i, rel(got[ob][i], got[tb][i]))
            assert rel(got[rt][i], got[tb][i]) < 1e-4, (i, rel(got[rt][i], got[tb][i]))
            assert rel(got[ob1][i], got[tb1][i]) < 1e-4
        assert rel(got[tb][0], got[tb1][0]) > 1e-2 and rel(got[ob][0], got[ob1][0]) > 1e-2
        assert np.mean(got[tb][1]) < np.mean(got[tb1][1])  # cooler start: less spread between samples


def test_temperature_one_is_bit_identical_to_no_sampler_config(tiny_ckpt, tmp_path):
    """An explicit temperature 1 (set_sampler) multiplies nothing: every backend's output is
    bit-identical to the same model without a sampler config."""
    from engine.serve.backends.ort import OrtBackend
    from engine.serve.runtime import TorchBackend

    e0, e1 = _at_temperature(tiny_ckpt, tmp_path, "p2es", 1.0)
    w = _reqs(2)
    for make in (TorchBackend, OrtBackend, _trt_without_tensorrt):
        a, b = (_keyed(make(e, steps=3, k=2, seed=2), w) for e in (e0, e1))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), make


def test_buckets():
    from engine.serve.backends.torch_loop import bucket_for, default_buckets

    assert default_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert default_buckets(24) == [1, 2, 4, 8, 16, 24]
    assert [bucket_for(n, [1, 2, 4, 8]) for n in (1, 3, 5, 8, 9)] == [1, 4, 8, 8, 8]


# ------------------------------------------------------------------------------ GPU only
def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


def test_torch_cuda_graphs_match_eager(tiny_ckpt):
    _cuda()
    from engine.model.checkpoint import load_model
    from engine.serve.runtime import TorchBackend

    feats, demo, mask = _inputs(3)
    eager = TorchBackend(
        load_model(tiny_ckpt, "p2es"), device="cuda", steps=4, k=2, precision="fp32", cuda_graphs=False
    )
    graph = TorchBackend(
        load_model(tiny_ckpt, "p2es"),
        device="cuda",
        steps=4,
        k=2,
        precision="fp32",
        cuda_graphs=True,
        max_batch=4,
    )
    for _ in range(2):  # capture, then replay
        a, b = eager.run(feats, demo, mask), graph.run(feats, demo, mask)
        assert rel(b[0], a[0]) < 1e-4


def test_torch_cuda_per_window_noise_matches_cpu_and_ignores_the_batch(tiny_ckpt):
    """The per-window x_T is drawn on the CPU for every device: CUDA (eager and CUDA graphs,
    whose buckets pad a batch) gives a window the same output as the CPU, alone or in a batch."""
    _cuda()
    from engine.model.checkpoint import load_model
    from engine.serve.runtime import TorchBackend

    w = _reqs(3)
    cpu = TorchBackend(load_model(tiny_ckpt, "p2es"), device="cpu", steps=4, k=2, threads=1)
    ref = _keyed(cpu, [w[1]])[0][0]
    for graphs in (False, True):
        gpu = TorchBackend(
            load_model(tiny_ckpt, "p2es"),
            device="cuda",
            steps=4,
            k=2,
            precision="fp32",
            cuda_graphs=graphs,
            max_batch=4,
        )
        alone, crowd = _keyed(gpu, [w[1]])[0][0], _keyed(gpu, [w[0], w[1], w[2]])[0][1]
        assert rel(alone, ref) < 1e-3 and rel(crowd, ref) < 1e-3, graphs
        assert np.max(np.abs(crowd - alone)) <= 1e-3, graphs


def test_tensorrt_backend_matches_torch(tiny_ckpt):
    _cuda()
    pytest.importorskip("tensorrt")
    from engine.model.checkpoint import load_model
    from engine.serve.backends.tensorrt import TensorRTBackend
    from engine.serve.runtime import TorchBackend

    feats, demo, mask = _inputs(3)
    rt = TensorRTBackend(load_model(tiny_ckpt, "p2es"), steps=4, k=2, max_batch=4, fp16=False)
    m_t, _ = TorchBackend(load_model(tiny_ckpt, "p2es"), device="cpu", steps=4, k=2).run(feats, demo, mask)
    m_r, _ = rt.run(feats, demo, mask)  # TensorRT draws x_T like the CPU backends
    assert rel(m_r, m_t) < 1e-3
    # per-window noise: the same x_T as the CPU torch backend, whatever the batch
    w = _reqs(3)
    cpu = TorchBackend(load_model(tiny_ckpt, "p2es"), device="cpu", steps=4, k=2)
    ref = _keyed(cpu, [w[1]])[0][0]
    assert rel(_keyed(rt, [w[1]])[0][0], ref) < 1e-3
    assert rel(_keyed(rt, [w[2], w[1], w[0]])[0][1], ref) < 1e-3


def test_cuda_backends_sample_at_the_saved_temperature(tiny_ckpt, tmp_path):
    """On the GPU: torch (eager and CUDA graphs) and, where it imports, TensorRT scale the
    keyed x_T by the saved temperature exactly as the CPU torch backend does."""
    _cuda()
    from engine.serve.runtime import TorchBackend

    e1, e7 = _at_temperature(tiny_ckpt, tmp_path, "p2es", 0.7)
    w = _reqs(3)
    ref = _keyed(TorchBackend(e7, device="cpu", steps=4, k=2), w)[0]
    ref1 = _keyed(TorchBackend(e1, device="cpu", steps=4, k=2), w)[0]
    assert rel(ref, ref1) > 1e-2
    for graphs in (False, True):
        gpu = TorchBackend(e7, device="cuda", steps=4, k=2, precision="fp32", cuda_graphs=graphs, max_batch=4)
        assert rel(_keyed(gpu, w)[0], ref) < 1e-3, graphs
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken: the torch part above still ran
        return
    from engine.serve.backends.tensorrt import TensorRTBackend

    rt = TensorRTBackend(e7, steps=4, k=2, max_batch=4, fp16=False)
    assert rel(_keyed(rt, w)[0], ref) < 1e-3


# ------------------------------------------------------------------------------ live pipeline
def test_cli_run_accepts_every_backend():
    import argparse

    from engine.app.cli_live import load_config, register_live

    parser = argparse.ArgumentParser()
    register_live(parser.add_subparsers())
    for b in ("auto", "torch", "onnxruntime", "tensorrt"):
        assert load_config(parser.parse_args(["run", "--backend", b])).backend == b
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--backend", "tflite"])


def test_pipeline_end_to_end_on_onnxruntime(tiny_ckpt, mqtt_broker, tmp_path):
    """The live pipeline with backend="onnxruntime" (one flag): real Mosquitto, simulated wearables,
    every window reconstructed by ONNX Runtime, stitched ECG contiguous and each sample once."""
    from engine.app.pipeline import Pipeline, PipelineConfig
    from engine.serve.backends.ort import OrtBackend
    from wearable.publisher import make_patients, simulate_async

    tag = uuid.uuid4().hex[:6]
    t_start = float(int(time.time()))
    chunks, vitals = [], []

    async def main():
        cfg = PipelineConfig(
            broker=services.mqtt_url(),
            client_id=f"p2es-test-ort-{tag}",
            influx_url=None,
            steps=2,
            k=2,
            checkpoint=str(tiny_ckpt),
            threads=1,
            max_wait_ms=10,
            backend="onnxruntime",
            engine_cache_dir=str(tmp_path / "cache"),
            stream_reorder_wait_s=1.0,
        )
        pipe = Pipeline(cfg, on_ecg=chunks.append, on_vitals=vitals.append)
        await pipe.start()
        assert isinstance(pipe._backend, OrtBackend)
        await pipe.ingest.wait_connected(10)
        pats = make_patients(2, seed=9, duration_s=24, fs_list=[125, 64], prefix=f"o{tag}")
        await simulate_async(services.mqtt_url(), pats, speed=40, duration_s=24, t_start=t_start)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s = pipe.stats()
            if (
                len(s["patients"]) == 2
                and all(p["windows"] >= 4 for p in s["patients"].values())
                and not s["queue_depth"]["batcher"]
                and not any(p["pending"] for p in s["patients"].values())
            ):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        await pipe.stop()
        return pipe

    pipe = asyncio.run(main())
    s = pipe.stats()
    assert len(s["patients"]) == 2
    expected = int(np.ceil((24 * 128 - 1024) / 512))
    for pid, p in s["patients"].items():
        assert p["windows"] == expected and p["errors"] == 0, (pid, p)
        mine = [c for c in chunks if c.patient == pid]
        n = sum(c.ecg.shape[1] for c in mine)
        assert n == p["ecg_samples"] == (p["windows"] - 1) * 512 + 1024
        assert mine[0].t0 == t_start
        for a, b in zip(mine, mine[1:]):
            assert abs(b.t0 - (a.t0 + a.ecg.shape[1] / 128.0)) < 1e-6
        assert all(np.isfinite(c.ecg).all() for c in mine)
    assert len(vitals) == sum(p["windows"] for p in s["patients"].values())
    assert list((tmp_path / "cache" / "onnx").iterdir())  # exported on demand into the cache
