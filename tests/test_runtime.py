"""Live-engine runtime: stitching emits every sample once, the micro-batcher batches across patients."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from engine.serve.runtime import MicroBatcher, PatientStitcher, WindowRequest, prepare_batch
from p2es.leads import derive_12, einthoven_residual

T, FS, HOP = 256, 32.0, 128


def smooth(n0: int, n: int) -> np.ndarray:
    """A known 12-lead signal as a function of the absolute sample index."""
    k = np.arange(n0, n0 + n)
    eight = np.stack([np.sin(2 * np.pi * (j + 1) * k / 97.0) for j in range(8)])
    return derive_12(eight, axis=0)


def feed(st: PatientStitcher, starts: list[int], t_ref: float = 1_700_000_000.0):
    chunks = []
    for s in starts:
        chunks += st.add(t_ref + s / FS, smooth(s, T), np.full((12, T), 0.1))
    chunks += st.flush()
    return chunks


def test_regular_windows_emit_every_sample_once_without_seams():
    st = PatientStitcher("p1", T, FS, HOP)
    chunks = feed(st, [0, 128, 256, 384, 512])
    t = np.concatenate([c.t0 + np.arange(c.ecg.shape[1]) / FS for c in chunks])
    x = np.concatenate([c.ecg for c in chunks], axis=1)
    assert x.shape[1] == 512 + T  # exactly the covered span, no duplicates
    np.testing.assert_allclose(np.diff(t), 1 / FS, atol=1e-6)  # continuous timestamps
    np.testing.assert_allclose(x, smooth(0, 512 + T), atol=1e-9)  # a consistent signal is reproduced
    assert einthoven_residual(x, axis=0) < 1e-9


def test_duplicates_and_gaps():
    st = PatientStitcher("p1", T, FS, HOP)
    chunks = feed(st, [0, 128, 128, 0, 1000, 1128])  # duplicate + stale windows, then a gap
    t = np.concatenate([c.t0 + np.arange(c.ecg.shape[1]) / FS for c in chunks])
    assert np.all(np.diff(t) > 0)  # strictly increasing: nothing emitted twice
    n = np.round((t - t[0]) * FS).astype(int)
    expected = np.concatenate([np.arange(0, 128 + T), np.arange(1000, 1128 + T)])
    np.testing.assert_array_equal(n, expected)


def test_windows_disagreeing_are_cross_faded_continuously():
    st = PatientStitcher("p1", T, FS, HOP)
    chunks = []
    for i, s in enumerate([0, 128, 256]):
        chunks += st.add(1e9 + s / FS, np.full((12, T), float(i)), np.zeros((12, T)))
    chunks += st.flush()
    x = np.concatenate([c.ecg for c in chunks], axis=1)[0]
    assert np.max(np.abs(np.diff(x))) < 0.05  # a smooth ramp between windows, no step


class FakeBackend:
    name = "fake"

    def __init__(self):
        self.batches = []

    def run(self, feats, demo, mask):
        self.batches.append(feats.shape[0])
        b, _, t = feats.shape
        mean = np.repeat(feats[:, :1, :], 12, axis=1).astype(np.float64)
        return mean, np.zeros((b, 12, t))


def test_micro_batcher_batches_across_patients():
    backend = FakeBackend()
    rng = np.random.default_rng(0)

    async def main():
        mb = MicroBatcher(backend, max_batch=8, max_wait_ms=30)
        task = asyncio.create_task(mb.run())
        reqs = [
            WindowRequest(f"p{i}", 0.0, 128.0, rng.standard_normal(1024), {"age": 40 + i, "sex": "F"})
            for i in range(20)
        ]
        results = await asyncio.gather(*(mb.submit(r) for r in reqs))
        task.cancel()
        return reqs, results, mb.stats

    reqs, results, stats = asyncio.run(main())
    assert [r.request.patient for r in results] == [q.patient for q in reqs]  # each gets its own result
    assert max(backend.batches) == 8 and sum(backend.batches) == 20 and len(backend.batches) <= 4
    assert stats["windows"] == 20
    feats, demo, mask = prepare_batch(reqs[:2])
    assert feats.shape == (2, 3, 1024) and mask[0, 0] == 1 and mask[0, 2] == 0  # height unknown


def test_backend_failure_reaches_the_callers():
    class Broken(FakeBackend):
        def run(self, feats, demo, mask):
            raise RuntimeError("boom")

    async def main():
        mb = MicroBatcher(Broken(), max_batch=4, max_wait_ms=5)
        task = asyncio.create_task(mb.run())
        with pytest.raises(RuntimeError, match="boom"):
            await mb.submit(WindowRequest("p", 0.0, 128.0, np.zeros(1024)))
        task.cancel()

    asyncio.run(main())


def test_torch_backend_and_vitals_on_a_tiny_model(tiny_ckpt):
    from engine.model.checkpoint import load_model
    from engine.serve.runtime import TorchBackend, WindowResult, window_vitals
    from wearable.sim import synthesize

    path = tiny_ckpt
    be = TorchBackend(load_model(path, "p2es"), steps=3, k=2, threads=1)
    d = synthesize(2, seed=5, noisy_ecg=False)
    reqs = [
        WindowRequest("p", 1e9, 128.0, d["ppg"][i], {"age": float(d["age"][i]), "sex": int(d["sex"][i])}, 0.9)
        for i in range(2)
    ]
    feats, demo, mask = prepare_batch(reqs)
    mean, std = be.run(feats, demo, mask)
    assert mean.shape == (2, 12, 1024) and std.shape == (2, 12, 1024)
    assert einthoven_residual(mean, axis=1) <= 1e-5 and np.all(std >= 0)
    v = window_vitals(WindowResult(reqs[0], mean[0], std[0], 2, 0.0, 0.0))
    assert v.patient == "p" and v.t == 1e9 and v.sqi == 0.9
    assert abs(v.hr_ppg_bpm - float(d["hr_bpm"][0])) < 10  # PPG rate from the window itself
    assert np.isfinite(v.uncertainty) and v.uncertainty > 0
