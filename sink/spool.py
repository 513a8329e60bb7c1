"""Append-only on-disk spool: keeps write batches, in order, while the database is unreachable.

Layout of the spool directory::

    000000000007.seg   segment files, records appended in order (name = sequence number)
    cursor             {"segment": S, "offset": O}: the oldest record not yet acknowledged
    .lock              flock()ed by the one process that owns the directory

A record is a 20-byte header -- magic ``P2S1``, payload length (u32), CRC-32 of the payload
(u32), a caller tag (u64; the writer stores its batch number) -- followed by the payload.

Crash safety.  Records are written with ``os.write`` straight to the file (they survive a
crash of the process at once); the segment is fsync()ed on rotation, :meth:`Spool.sync` and
:meth:`Spool.close` (so they survive power loss from then on).  On open every segment is
scanned: a record that is cut short or whose CRC does not match (a write torn by a crash) ends
that segment -- the file is truncated there and the event is counted (``torn_records``,
``torn_bytes``).  A fresh segment is started on every open; old segments are only read.

Acknowledging (:meth:`Spool.ack`) moves the cursor past the head record and deletes segments
that have been read completely.  The cursor file is replaced atomically but not fsync()ed: after
a power loss a few records may be delivered twice, which InfluxDB absorbs (a point with the same
measurement, tag set and timestamp overwrites the old one).

Size bound and policy.  ``max_bytes`` (default 1 GiB) bounds the bytes of all segment files.
When an append would exceed it, the **oldest** segments are deleted (oldest data is dropped,
the most recent data is kept) and what they still held is counted in ``dropped_records`` /
``dropped_bytes`` and logged.  A record larger than the bound itself is dropped and counted.
Segments are at most ``max_bytes / 4`` so that dropping whole segments always makes room.

A full disk.  An append the file system refuses (``ENOSPC``, ``EDQUOT``, ``EFBIG``, ``EIO``...)
keeps nothing: a partly written record is cut off again, :class:`SpoolWriteError` is raised and
counted (``write_errors``), and the spool stays consistent (the caller decides what to do with
the record; :class:`sink.writer.Writer` keeps it in memory).  A cursor or fsync that cannot be
written is counted and logged once per streak, never raised: the records are in the segment
files, and a stale cursor only means some records are delivered twice after a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from p2es.errors import P2esError
from p2es.files import atomic_write_text

__all__ = ["Spool", "SpoolPos", "SpoolRecord", "SpoolLockedError", "SpoolWriteError", "DEFAULT_MAX_BYTES"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_SEGMENT_BYTES = 64 << 20
MAGIC = b"P2S1"
_HDR = struct.Struct("<4sIIQ")
HEADER_SIZE = _HDR.size
_SEG_SUFFIX = ".seg"


class SpoolLockedError(P2esError):
    """Another process (or another open Spool) already owns this spool directory."""


class SpoolWriteError(P2esError):
    """The file system refused an append (disk full, quota, file size limit, I/O error); the
    record was not kept and the spool is unchanged.  ``errno`` / ``strerror`` of the OSError."""

    def __init__(self, message: str, err: OSError) -> None:
        super().__init__(message)
        self.errno, self.strerror = err.errno, err.strerror or str(err)


@dataclass(frozen=True, order=True, slots=True)
class SpoolPos:
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    pos: SpoolPos
    tag: int
    payload: bytes


@dataclass(slots=True)
class _Entry:
    segment: int
    offset: int
    length: int  # payload length
    tag: int

    @property
    def size(self) -> int:
        return HEADER_SIZE + self.length

    @property
    def pos(self) -> SpoolPos:
        return SpoolPos(self.segment, self.offset)


def _seg_name(seq: int) -> str:
    return f"{seq:012d}{_SEG_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Spool:
    """Ordered, crash-safe, size-bounded on-disk FIFO of byte records (see module doc)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int | None = None,
    ) -> None:
        if max_bytes < 4 * (HEADER_SIZE + 1):
            raise ValueError(f"spool max_bytes {max_bytes} is too small")
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        seg = DEFAULT_SEGMENT_BYTES if segment_bytes is None else int(segment_bytes)
        self.segment_bytes = max(HEADER_SIZE + 1, min(seg, self.max_bytes // 4))
        self._lock = threading.RLock()
        # counters (plain ints; read them any time)
        self.appended_records = 0
        self.acked_records = 0
        self.dropped_records = 0
        self.dropped_bytes = 0
        self.torn_records = 0
        self.torn_bytes = 0
        self.write_errors = 0  # appends the file system refused (SpoolWriteError)
        self.cursor_errors = 0  # cursor saves / fsyncs that failed (logged once per streak)
        self._cursor_failing = False

        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise SpoolLockedError(f"spool directory {self.dir} is in use by another writer") from None
        self._closed = False
        self._index: deque[_Entry] = deque()
        self._sizes: dict[int, int] = {}  # segment seq -> bytes on disk
        self._read_fds: dict[int, int] = {}
        self._dirty = False
        try:
            self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------------ open / recovery
    def _seg_path(self, seq: int) -> Path:
        return self.dir / _seg_name(seq)

    def _read_cursor(self) -> SpoolPos | None:
        try:
            d = json.loads((self.dir / "cursor").read_text())
            return SpoolPos(int(d["segment"]), int(d["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_cursor(self) -> None:
        pos = self._index[0].pos if self._index else SpoolPos(self._wseq, self._sizes[self._wseq])
        try:
            atomic_write_text(self.dir / "cursor", json.dumps({"segment": pos.segment, "offset": pos.offset}))
        except OSError as e:  # e.g. the disk is full: a stale cursor only replays some records
            self._cursor_trouble("cannot save the cursor", e)
            return
        if self._cursor_failing:
            self._cursor_failing = False
            log.warning("spool %s: cursor saved again", self.dir)

    def _cursor_trouble(self, what: str, e: OSError) -> None:
        self.cursor_errors += 1
        if not self._cursor_failing:
            self._cursor_failing = True
            log.warning(
                "spool %s: %s (%s); records are kept, a crash now would deliver some twice (harmless)",
                self.dir,
                what,
                e.strerror or e,
            )

    def _scan_segment(self, seq: int, start: int) -> None:
        """Index the valid records of a segment at offsets >= start; truncate a torn tail."""
        path = self._seg_path(seq)
        size = path.stat().st_size
        off = 0
        with open(path, "rb") as f:
            while off < size:
                hdr = f.read(HEADER_SIZE)
                bad = len(hdr) < HEADER_SIZE
                if not bad:
                    magic, length, crc, tag = _HDR.unpack(hdr)
                    bad = magic != MAGIC or off + HEADER_SIZE + length > size
                    if not bad:
                        payload = f.read(length)
                        bad = len(payload) < length or zlib.crc32(payload) != crc
                if bad:
                    self.torn_records += 1
                    self.torn_bytes += size - off
                    log.warning(
                        "spool %s: torn/corrupt record at offset %d; dropping the %d bytes from there",
                        path,
                        off,
                        size - off,
                    )
                    os.truncate(path, off)
                    size = off
                    break
                if off >= start:
                    self._index.append(_Entry(seq, off, length, tag))
                off += HEADER_SIZE + length
        self._sizes[seq] = size

    def _recover(self) -> None:
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        seqs = sorted(
            int(p.name[: -len(_SEG_SUFFIX)])
            for p in self.dir.glob("*" + _SEG_SUFFIX)
            if p.name[: -len(_SEG_SUFFIX)].isdigit()
        )
        cur = self._read_cursor()
        for seq in seqs:
            if cur is not None and seq < cur.segment:
                self._seg_path(seq).unlink(missing_ok=True)
                continue
            start = cur.offset if (cur is not None and seq == cur.segment) else 0
            self._scan_segment(seq, start)
        # Segments with nothing left to read go; a new segment takes the appends.
        live = {e.segment for e in self._index}
        for seq in list(self._sizes):
            if seq not in live:
                self._seg_path(seq).unlink(missing_ok=True)
                del self._sizes[seq]
        self._wseq = max(seqs[-1] + 1 if seqs else 1, cur.segment + 1 if cur is not None else 1)
        self._open_write_segment()
        self._write_cursor()
        if self._index:
            log.info(
                "spool %s: %d record(s), %d bytes to replay", self.dir, len(self._index), self.pending_bytes
            )

    def _open_write_segment(self) -> None:
        path = self._seg_path(self._wseq)
        self._wfd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._sizes[self._wseq] = os.fstat(self._wfd).st_size
        _fsync_dir(self.dir)

    # ------------------------------------------------------------------ properties
    @property
    def empty(self) -> bool:
        return not self._index

    @property
    def dirty(self) -> bool:
        """True when records were appended since the last fsync."""
        return self._dirty

    @property
    def pending_records(self) -> int:
        return len(self._index)

    @property
    def pending_bytes(self) -> int:
        return sum(e.size for e in self._index)

    @property
    def disk_bytes(self) -> int:
        return sum(self._sizes.values())

    def head_tag(self) -> int | None:
        with self._lock:
            return self._index[0].tag if self._index else None

    def max_tag(self) -> int | None:
        with self._lock:
            return max((e.tag for e in self._index), default=None)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "spool_records": len(self._index),
                "spool_bytes": self.disk_bytes,
                "spool_pending_bytes": self.pending_bytes,
                "spool_appended_records": self.appended_records,
                "spool_dropped_records": self.dropped_records,
                "spool_dropped_bytes": self.dropped_bytes,
                "spool_torn_records": self.torn_records,
                "spool_torn_bytes": self.torn_bytes,
                "spool_write_errors": self.write_errors,
                "spool_cursor_errors": self.cursor_errors,
            }

    # ------------------------------------------------------------------ writing
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"spool {self.dir} is closed")

    def _rotate(self) -> None:
        old = self._wfd
        os.fsync(old)  # an error here changes nothing
        self._wseq += 1
        try:
            self._open_write_segment()
        except OSError:
            self._wseq -= 1  # keep writing the old segment (it may grow past segment_bytes)
            raise
        os.close(old)
        self._dirty = False

    def _drop_segment(self, seq: int) -> None:
        n = b = 0
        while self._index and self._index[0].segment == seq:
            e = self._index.popleft()
            n += 1
            b += e.size
        if n:
            self.dropped_records += n
            self.dropped_bytes += b
            log.warning(
                "spool %s over its bound of %d bytes: dropped the oldest %d record(s), %d bytes",
                self.dir,
                self.max_bytes,
                n,
                b,
            )
        self._delete_segment(seq)

    def _delete_segment(self, seq: int) -> None:
        fd = self._read_fds.pop(seq, None)
        if fd is not None:
            os.close(fd)
        self._seg_path(seq).unlink(missing_ok=True)
        self._sizes.pop(seq, None)

    def append(self, payload: bytes, tag: int = 0) -> SpoolPos | None:
        """Append one record; returns its position, or ``None`` if it was too big to keep."""
        with self._lock:
            self._check_open()
            need = HEADER_SIZE + len(payload)
            if need > self.max_bytes or len(payload) > 0xFFFFFFFF:
                self.dropped_records += 1
                self.dropped_bytes += need
                log.warning(
                    "spool %s: record of %d bytes exceeds the bound of %d; dropped",
                    self.dir,
                    need,
                    self.max_bytes,
                )
                return None
            try:
                if self._sizes[self._wseq] > 0 and self._sizes[self._wseq] + need > self.segment_bytes:
                    self._rotate()
            except OSError as e:
                self.write_errors += 1
                raise SpoolWriteError(
                    f"spool {self.dir}: cannot start a segment: {e.strerror or e}", e
                ) from e
            dropped = False
            while self.disk_bytes + need > self.max_bytes and len(self._sizes) > 1:
                self._drop_segment(min(s for s in self._sizes if s != self._wseq))
                dropped = True
            off = self._sizes[self._wseq]
            rec = _HDR.pack(MAGIC, len(payload), zlib.crc32(payload), tag) + payload
            view = memoryview(rec)
            try:
                while view:
                    n = os.write(self._wfd, view)
                    view = view[n:]
            except OSError as e:
                # keep nothing of it: a torn record would end the segment at the next open
                with contextlib.suppress(OSError):
                    os.ftruncate(self._wfd, off)
                self.write_errors += 1
                if dropped:
                    self._write_cursor()
                raise SpoolWriteError(f"spool {self.dir}: cannot append: {e.strerror or e}", e) from e
            self._sizes[self._wseq] = off + need
            self._index.append(_Entry(self._wseq, off, len(payload), tag))
            self.appended_records += 1
            self._dirty = True
            if dropped or len(self._index) == 1:
                self._write_cursor()
            return SpoolPos(self._wseq, off)

    def sync(self) -> None:
        """fsync() the segment being written (cheap when nothing was appended since).  A failed
        fsync is counted and logged once per streak (the data stays written; retried next time)."""
        with self._lock:
            if self._closed or not self._dirty:
                return
            try:
                os.fsync(self._wfd)
            except OSError as e:
                self._cursor_trouble("cannot fsync the segment", e)
                return
            self._dirty = False

    # ------------------------------------------------------------------ reading
    def _read_fd(self, seq: int) -> int:
        fd = self._read_fds.get(seq)
        if fd is None:
            fd = os.open(self._seg_path(seq), os.O_RDONLY)
            self._read_fds[seq] = fd
        return fd

    def peek(self) -> SpoolRecord | None:
        """The oldest unacknowledged record (not consumed), or ``None`` when empty."""
        with self._lock:
            self._check_open()
            while self._index:
                e = self._index[0]
                data = os.pread(self._read_fd(e.segment), e.size, e.offset)
                if len(data) == e.size:
                    magic, length, crc, tag = _HDR.unpack_from(data)
                    payload = data[HEADER_SIZE:]
                    if magic == MAGIC and length == e.length and zlib.crc32(payload) == crc:
                        return SpoolRecord(e.pos, tag, payload)
                # changed under us (disk error, someone else's hand): drop it, count it
                self.torn_records += 1
                self.torn_bytes += e.size
                log.error("spool %s: record at %s is unreadable; dropped", self.dir, e.pos)
                self._consume_head()
            return None

    def _consume_head(self) -> None:
        e = self._index.popleft()
        if not self._index or self._index[0].segment != e.segment:
            # everything before the new head has been read: delete finished segments
            head = self._index[0].segment if self._index else self._wseq
            for seq in [s for s in self._sizes if s < head and s != self._wseq]:
                self._delete_segment(seq)
        if not self._index and self._sizes.get(self._wseq, 0) > 0:
            # all caught up: empty the write segment instead of letting it grow
            os.ftruncate(self._wfd, 0)
            self._sizes[self._wseq] = 0
            fd = self._read_fds.pop(self._wseq, None)
            if fd is not None:
                os.close(fd)
        self._write_cursor()

    def ack(self, pos: SpoolPos) -> bool:
        """Consume the head record if it is at ``pos`` (True); otherwise do nothing (False)."""
        with self._lock:
            self._check_open()
            if self._index and self._index[0].pos == pos:
                self._consume_head()
                self.acked_records += 1
                return True
            return False

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                os.fsync(self._wfd)
            finally:
                os.close(self._wfd)
                for fd in self._read_fds.values():
                    os.close(fd)
                self._read_fds.clear()
                if not self._index and self._sizes.get(self._wseq, 0) == 0:
                    self._seg_path(self._wseq).unlink(missing_ok=True)
                os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Spool({str(self.dir)!r}, records={len(self._index)}, bytes={self.disk_bytes}, "
            f"max_bytes={self.max_bytes})"
        )
