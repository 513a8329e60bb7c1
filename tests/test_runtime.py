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
        self.keys = []

    def run(self, feats, demo, mask, keys=None):
        self.batches.append(feats.shape[0])
        self.keys.append(keys)
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
    # every batch names its windows (patient, t0) for their noise seeds, in batch order
    assert sorted(k for ks in backend.keys for k in ks) == sorted((q.patient, 0.0) for q in reqs)
    assert [len(ks) for ks in backend.keys] == backend.batches
    feats, demo, mask = prepare_batch(reqs[:2])
    assert feats.shape == (2, 3, 1024) and mask[0, 0] == 1 and mask[0, 2] == 0  # height unknown


def test_backend_failure_reaches_the_callers():
    class Broken(FakeBackend):
        def run(self, feats, demo, mask, keys=None):
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


# ------------------------------------------------------------------------------ batch independence
def _windows(n: int, seed: int = 5) -> list[WindowRequest]:
    from wearable.sim import synthesize

    d = synthesize(n, seed=seed, noisy_ecg=False)
    return [
        WindowRequest(
            f"bed-{i}",
            1.7e9 + 4.0 * i,
            128.0,
            d["ppg"][i],
            {"age": float(d["age"][i]), "sex": int(d["sex"][i])},
        )
        for i in range(n)
    ]


def _run(be, reqs, *, keyed: bool = True):
    feats, demo, mask = prepare_batch(reqs)
    return be.run(feats, demo, mask, [(r.patient, r.t0) for r in reqs] if keyed else None)


def test_a_windows_output_does_not_depend_on_who_shares_its_batch(tiny_ckpt):
    """Issue #15 item 1.  Each window's noise is seeded from (seed, model, patient, window start):
    the same window gives the same reconstruction alone, in any batch with any neighbours at any
    position, and after any number of earlier calls.  Bitwise for equal batch sizes; across batch
    sizes up to float32 rounding (the CPU kernels pick their blocking by batch size: ~1e-6 mV).
    Before (one generator per batch, seeded seed + call) the same window differed by the noise."""
    from engine.model.checkpoint import load_model
    from engine.serve.runtime import TorchBackend

    be = TorchBackend(load_model(tiny_ckpt, "p2es"), steps=3, k=2, seed=0, threads=1)
    w = _windows(6)
    me = w[2]
    alone = _run(be, [me])
    pair_a, pair_b = _run(be, [me, w[0]]), _run(be, [w[4], me])
    trio_a, trio_b = _run(be, [w[1], me, w[3]]), _run(be, [w[5], w[0], me])
    six = _run(be, [w[5], w[4], w[3], me, w[1], w[0]])
    again = _run(be, [me])  # five calls later
    for i in (0, 1):  # mean and std
        assert np.array_equal(pair_a[i][0], pair_b[i][1])
        assert np.array_equal(trio_a[i][1], trio_b[i][2])
        assert np.array_equal(alone[i][0], again[i][0])
        for other in (pair_a[i][0], trio_a[i][1], six[i][3]):
            assert np.max(np.abs(other - alone[i][0])) <= 1e-5
    assert np.max(np.abs(alone[0][0])) > 0.01  # a real output, not zeros
    # the noise is the window's own: another patient, or another start, gets other noise
    moved = WindowRequest(me.patient, me.t0 + 4.0, me.fs, me.ppg, me.demographics)
    renamed = WindowRequest("bed-x", me.t0, me.fs, me.ppg, me.demographics)
    for other in (moved, renamed):
        assert np.max(np.abs(_run(be, [other])[0][0] - alone[0][0])) > 1e-3
    # the old per-batch seeding (still what a call without keys does): the output followed the batch
    old_alone = _run(be, [me], keyed=False)[0][0]
    old_pair = _run(be, [w[0], me], keyed=False)[0][1]
    assert np.max(np.abs(old_alone - old_pair)) > 1e-3


def test_micro_batcher_gives_a_window_the_same_ecg_alone_and_in_traffic(tiny_ckpt):
    """Through the MicroBatcher (the live path): one patient's window submitted alone and then
    together with five other patients' windows gives the same reconstruction."""
    from engine.model.checkpoint import load_model
    from engine.serve.runtime import TorchBackend

    be = TorchBackend(load_model(tiny_ckpt, "p2es"), steps=3, k=2, seed=0, threads=1)
    w = _windows(6)

    async def main():
        mb = MicroBatcher(be, max_batch=8, max_wait_ms=50)
        task = asyncio.create_task(mb.run())
        alone = await mb.submit(w[2])
        crowd = await asyncio.gather(*(mb.submit(r) for r in [w[0], w[1], w[2], w[3], w[4], w[5]]))
        task.cancel()
        return alone, crowd[2]

    alone, crowd = asyncio.run(main())
    assert alone.batch_size == 1 and crowd.batch_size == 6
    assert np.max(np.abs(crowd.ecg - alone.ecg)) <= 1e-5 and np.max(np.abs(crowd.std - alone.std)) <= 1e-5


# ------------------------------------------------------------------------------ sampler temperature
def test_torch_backend_samples_keyed_noise_at_the_saved_temperature(tiny_ckpt, tmp_path):
    """A model saved at temperature 0.7: the torch runtime's output is exactly the sampler's for
    the window's keyed x_T at 0.7 (the keys, hence x_T, are those of the temperature-1 model);
    at the default temperature it is the sampler's without one, and the two differ."""
    import shutil

    import torch

    from engine.model.checkpoint import load_model, set_sampler
    from engine.model.config import SamplerConfig
    from engine.model.sampler import sample
    from engine.serve.backends.common import keyed_noise
    from engine.serve.runtime import TorchBackend
    from p2es.errors import P2esError

    path = tmp_path / "tempered.pt"
    shutil.copyfile(tiny_ckpt, path)
    set_sampler(path, "p2es", SamplerConfig(0.7))
    e1, e7 = load_model(tiny_ckpt, "p2es"), load_model(path, "p2es")
    reqs = _windows(3)
    keys = [(r.patient, r.t0) for r in reqs]
    feats, demo, mask = prepare_batch(reqs)
    got = {}
    for e in (e1, e7):
        be = TorchBackend(e, steps=3, k=2, seed=4, threads=1)
        x_t = keyed_noise(keys, seed=4, model=be.model_key, k=2, shape=(8, 1024), batch=3)
        mean, std = be.run(feats, demo, mask, keys)
        ref = sample(
            e.model,
            e.schedule,
            torch.as_tensor(feats),
            (torch.as_tensor(demo), torch.as_tensor(mask)),
            steps=3,
            k=2,
            noise=torch.as_tensor(x_t),
            keep_samples=False,
            **({"temperature": 0.7} if e is e7 else {}),
        )
        assert np.array_equal(mean, ref.mean.numpy()) and np.array_equal(std, ref.std.numpy())
        got[e.sampler_config.temperature] = (mean, std, be.model_key)
    assert got[0.7][2] == got[1.0][2]  # the same noise keys
    assert np.max(np.abs(got[0.7][0] - got[1.0][0])) > 1e-2
    with pytest.raises(P2esError, match="temperature"):
        SamplerConfig(1.01)
