"""One PPG preprocessing path: the live stream hands the network the same tensor as the
offline path (training / `p2es reconstruct`) for the same signal."""

from __future__ import annotations

import numpy as np

from engine.model.preprocess import ppg_features
from engine.model.reconstruct import plan_windows
from engine.serve.runtime import prepare_batch, request_from_window
from ingest.stream import PatientStream, StreamConfig
from p2es.contracts.ppg import PpgChunk
from wearable.sim import synthesize

FS = 128.0
T0 = 1_718_000_000.0


def _live_windows(x: np.ndarray, chunk_n: int) -> list:
    st = PatientStream("p-live", StreamConfig(fs_model=FS))
    out = []
    for seq, a in enumerate(range(0, x.size, chunk_n)):
        part = x[a : a + chunk_n]
        out += st.push(PpgChunk(seq=seq, t0=T0 + a / FS, fs=FS, samples=part), now=0.0)
    return out


def test_live_path_feeds_the_network_what_the_offline_path_does() -> None:
    rec = synthesize(1, 11, duration_s=40.0, fs=FS)
    x = np.asarray(rec["ppg"][0], dtype=np.float64)
    cfg = StreamConfig(fs_model=FS)
    T, hop = cfg.window_n, cfg.hop_n

    # offline: the windows p2es reconstruct plans over a clean signal, featurised in one batch
    starts = plan_windows(np.ones(x.size, dtype=bool), T, hop)
    offline = ppg_features(np.stack([x[s : s + T] for s in starts]), FS)

    # live: 1 s chunks through the ingest stream, then the engine's hand-over and batching
    wins = _live_windows(x, int(FS))
    assert len(wins) >= 7
    for w in wins:
        assert w.fs == FS and w.samples.size == T
    live, _, _ = prepare_batch([request_from_window(w) for w in wins])

    by_start = {int(s): i for i, s in enumerate(starts)}
    matched = 0
    for j, w in enumerate(wins):
        s = int(round((w.t0 - T0) * FS))
        assert s == w.index * hop
        if s in by_start:
            np.testing.assert_allclose(live[j], offline[by_start[s]], rtol=0, atol=2e-4)
            # the samples themselves are the device samples (128 Hz: no resampling involved)
            np.testing.assert_allclose(w.samples, x[s : s + T].astype(np.float32), rtol=0, atol=1e-5)
            matched += 1
    assert matched >= 7


def test_window_samples_are_not_filtered() -> None:
    """The stream no longer band-passes: a constant offset survives into the window (the model's
    preprocessing removes it), so filtering happens exactly once."""
    rec = synthesize(1, 12, duration_s=20.0, fs=FS)
    x = np.asarray(rec["ppg"][0], dtype=np.float64) + 5.0
    wins = _live_windows(x, 64)
    assert wins
    assert abs(float(np.mean(wins[0].samples)) - float(np.mean(x[: wins[0].samples.size]))) < 1e-3
