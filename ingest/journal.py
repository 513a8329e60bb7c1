"""The ingest journal: the PPG chunks and profiles the MQTT ingest accepted, on local disk, so that
an engine killed with ``kill -9`` (OOM killer, node loss) and restarted rebuilds every patient's
stream from its last seconds instead of starting each one empty.

Why: the broker's persistent session redelivers only what the engine had not acknowledged, and
an acknowledged chunk lives only in the engine's memory (ring buffer, re-order buffer, the
stitcher's last hop, the writer's batch) until its ECG is written.  Without the journal a restart
leaves a gap of up to two hops and a chunk in every patient's ECG; with it there is none (the
replayed windows re-write their overlap at the same timestamps: one point per series and
timestamp, as after a scale-out handover).

What it is (no asyncio, no MQTT: the service calls it):

* :meth:`Journal.append` writes one record per accepted message to the current file, in one
  ``write`` and a flush to the operating system (no ``fsync``: it survives the death of the
  process, not of the machine);
* a new file is started every ``segment_s`` of wall time, and files whose last write is older
  than ``retain_s`` are deleted, so the journal holds about ``retain_s + segment_s`` of input;
* :meth:`Journal.read` returns every intact record of every file, oldest first; a record cut by
  the kill (or otherwise damaged: length or CRC-32 wrong) ends its file's reading and is counted;
* :func:`replay_plan` picks, per patient, the last ``replay_s`` seconds of chunks (by device time)
  and the patient's last profile.

Record: ``<crc32 u32><topic length u32><payload length u32><receive time f64>`` then the topic
(UTF-8) and the payload bytes as received; the CRC covers everything after itself.

Memory: nothing but the open file; disk: the input of ``retain_s + segment_s`` seconds
(about 1 kB per patient per second for JSON chunks at 128 Hz), in owner-only files (0600).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from p2es.contracts.ppg import ParsedPpg, ParsedProfile, parse_message

__all__ = ["Journal", "Record", "ReplayPlan", "replay_plan"]

log = logging.getLogger("p2es.ingest.journal")

_HEAD = struct.Struct("<IIId")
_NAME = re.compile(r"^chunks-(\d{13})-(\d{6})\.wal$")
_MAX_FIELD = 64 << 20  # a length above this is damage, not a record


def _order(name: str) -> tuple[int, int]:
    m = _NAME.match(name)
    return (int(m[1]), int(m[2])) if m else (0, 0)


@dataclass(frozen=True)
class Record:
    topic: str
    payload: bytes
    received_at: float  # wall time


class Journal:
    """An append-only, rotating, self-pruning journal in ``directory`` (see the module docstring).
    ``clock`` is wall time (tests pass their own)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        segment_s: float = 4.0,
        retain_s: float = 24.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if segment_s <= 0 or retain_s < segment_s:
            raise ValueError("journal: segment_s must be > 0 and retain_s >= segment_s")
        self.directory, self.segment_s, self.retain_s = Path(directory), float(segment_s), float(retain_s)
        self.clock = clock
        self.torn = 0  # damaged tails seen by read()
        self.appended = 0
        self._f: BinaryIO | None = None
        self._opened_at = 0.0
        self._current = ""
        self._n = 0
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- writing ----------------------------------------------------------------------------
    def append(self, topic: str, payload: bytes, received_at: float | None = None) -> None:
        now = self.clock()
        t = now if received_at is None else float(received_at)
        if self._f is None or now - self._opened_at >= self.segment_s:
            self._rotate(now)
        assert self._f is not None
        tb = topic.encode()
        body = struct.pack("<IId", len(tb), len(payload), t) + tb + payload
        self._f.write(struct.pack("<I", zlib.crc32(body)) + body)
        self._f.flush()
        self.appended += 1

    def _rotate(self, now: float) -> None:
        self.close()
        if self._n == 0:  # a restarted journal continues after the highest number on disk
            self._n = max((int(m[2]) for m in map(_NAME.match, self._names()) if m), default=0)
        self._n += 1  # unique (and ordered) names within one millisecond too
        name = f"chunks-{int(now * 1000):013d}-{self._n % 1_000_000:06d}.wal"
        # owner-only: raw PPG of patients (the directory is made 0700 too)
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._f = os.fdopen(fd, "ab")
        self._current = name
        self._opened_at = now
        self.prune(now)

    def prune(self, now: float | None = None) -> int:
        """Delete the files last written more than ``retain_s`` ago (never the open one)."""
        now = self.clock() if now is None else now
        current = self._current if self._f is not None else None
        gone = 0
        for name in self._names():
            if name == current:
                continue
            p = self.directory / name
            try:
                if now - p.stat().st_mtime > self.retain_s:
                    p.unlink()
                    gone += 1
            except FileNotFoundError:
                continue
        return gone

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    # -- reading ----------------------------------------------------------------------------
    def _names(self) -> list[str]:
        try:
            names = [n for n in os.listdir(self.directory) if _NAME.match(n)]
        except FileNotFoundError:
            return []
        return sorted(names, key=_order)

    def read(self) -> list[Record]:
        """Every intact record, oldest file first; a damaged tail ends its file (``torn`` += 1)."""
        out: list[Record] = []
        for name in self._names():
            out.extend(self._read_file(self.directory / name))
        return out

    def _read_file(self, path: Path) -> Iterator[Record]:
        try:
            data = path.read_bytes()
        except OSError as e:
            log.warning("journal: cannot read %s: %s", path.name, e.strerror or e)
            return
        i = 0
        while i < len(data):
            if len(data) - i < _HEAD.size:
                self.torn += 1
                return
            crc, nt, npl, t = _HEAD.unpack_from(data, i)
            end = i + _HEAD.size + nt + npl
            if nt > _MAX_FIELD or npl > _MAX_FIELD or end > len(data) or zlib.crc32(data[i + 4 : end]) != crc:
                self.torn += 1
                return
            j = i + _HEAD.size
            try:
                topic = data[j : j + nt].decode()
            except UnicodeDecodeError:
                self.torn += 1
                return
            yield Record(topic, data[j + nt : end], t)
            i = end


@dataclass
class ReplayPlan:
    """What a restarted ingest feeds its streams before it goes live: ``records`` in journal order
    (each patient's last profile first, then its chunks from ``replay_s`` before its newest)."""

    records: list[Record]
    patients: int
    chunks: int
    profiles: int
    span_s: dict[str, float]  # patient -> device seconds rebuilt (first replayed chunk -> newest end)
    unusable: int  # records that no longer parse (e.g. written by another version): skipped
    stale: int = 0  # records received longer ago than the plan's max_age_s: skipped


def replay_plan(
    records: list[Record],
    replay_s: float,
    prefix: str,
    *,
    now: float | None = None,
    max_age_s: float | None = None,
) -> ReplayPlan:
    """Pick the records to replay (pure): a patient's chunks that end less than ``replay_s``
    before its newest chunk's end (device time), in journal order, after its last profile.
    With ``now`` and ``max_age_s``: records received more than ``max_age_s`` before ``now`` are
    left out (``stale``) — the journal of an engine that was down that long is history, not a
    stream the broker still continues."""
    chunk_of: list[tuple[int, str, float, float]] = []  # (record index, patient, t0, t_end)
    profile_at: dict[str, int] = {}
    unusable = stale = 0
    for i, r in enumerate(records):
        if now is not None and max_age_s is not None and now - r.received_at > max_age_s:
            stale += 1
            continue
        # the device clock was checked when the record was accepted; it is not checked again
        # against the time of the restart
        res = parse_message(r.topic, r.payload, prefix=prefix, max_clock_skew_s=None)
        if isinstance(res, ParsedPpg):
            chunk_of.append((i, res.patient_id, res.chunk.t0, res.chunk.t_end))
        elif isinstance(res, ParsedProfile):
            profile_at[res.patient_id] = i
        else:
            unusable += 1
    newest: dict[str, float] = {}
    for _, pid, _, t_end in chunk_of:
        newest[pid] = max(newest.get(pid, float("-inf")), t_end)
    keep = {i for i, pid, _, t_end in chunk_of if t_end > newest[pid] - replay_s}
    first: dict[str, float] = {}
    for i, pid, t0, _ in chunk_of:
        if i in keep:
            first[pid] = min(first.get(pid, float("inf")), t0)
    prof = {i for pid, i in profile_at.items() if pid in newest}
    order = sorted(prof) + sorted(keep)  # profiles first: the replayed windows carry them
    return ReplayPlan(
        records=[records[i] for i in order],
        patients=len(newest),
        chunks=len(keep),
        profiles=len(prof),
        span_s={pid: newest[pid] - first[pid] for pid in newest},
        unusable=unusable,
        stale=stale,
    )
