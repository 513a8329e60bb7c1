"""Durable webhook outbox: an SQLite file (WAL) that holds every notification until delivered.

Data flow::

    AlertEvent --enqueue()--> outbox row (body bytes + webhook-id, committed before any send)
               --WebhookSender (alerts/delivery.py)--> POST, signed per attempt
               --> 2xx: row deleted, `delivered` counter + 1
               --> 4xx except 408/429: `dead_letter` row with the reason (permanent)
               --> otherwise: attempts + 1, next_attempt = now + backoff; after max_age_s the
                   row goes to `dead_letter` ("gave up after N attempts ...")

Rows of one webhook are delivered strictly in order (the oldest pending row first), so a
receiver never sees ``resolved`` before its ``firing``.  The ``webhook-id`` is fixed when the row
is written (derived from the event: :func:`alerts.webhook.event_message_id`), so every retry --
also after a process restart -- carries the same id and receivers can de-duplicate; a row
whose id is already pending is not written again (:meth:`Outbox.enqueue` returns 0).  Backoff: full jitter, ``uniform(0, min(cap, base * 2**attempt))``,
at least a ``Retry-After`` the receiver sent (capped at ``cap``).

Commits use ``synchronous=FULL``: an enqueued notification survives a crash or power loss.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Outbox", "OutboxRow", "backoff_delay"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook      TEXT    NOT NULL,
    msg_id       TEXT    NOT NULL UNIQUE,
    body         BLOB    NOT NULL,
    created      REAL    NOT NULL,
    next_attempt REAL    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS outbox_webhook ON outbox (webhook, seq);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook   TEXT    NOT NULL,
    msg_id    TEXT    NOT NULL,
    body      BLOB    NOT NULL,
    created   REAL    NOT NULL,
    failed_at REAL    NOT NULL,
    attempts  INTEGER NOT NULL,
    reason    TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    webhook: str
    msg_id: str
    body: bytes
    created: float
    next_attempt: float
    attempts: int
    last_error: str | None


def backoff_delay(
    attempt: int, base: float, cap: float, rng: random.Random | None = None, retry_after: float | None = None
) -> float:
    """Seconds before retry ``attempt`` (0-based): full jitter, at least Retry-After (<= cap)."""
    r = rng or random
    d = r.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 60)))
    if retry_after is not None:
        d = max(d, min(retry_after, cap))
    return d


class Outbox:
    """The SQLite outbox (one file, ``<dir>/outbox.sqlite3``).  Use from one thread."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "outbox.sqlite3"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.closed = False

    def close(self) -> None:
        self.db.close()
        self.closed = True

    # ------------------------------------------------------------------ writes
    def enqueue(self, webhook: str, msg_id: str, body: bytes, now: float | None = None) -> int:
        """Store a row; its ``seq``, or 0 when a row with ``msg_id`` is already pending (the same
        notification generated twice: kept once, with its first body)."""
        now = time.time() if now is None else now
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            cur = self.db.execute(
                "INSERT INTO outbox (webhook, msg_id, body, created, next_attempt) VALUES (?,?,?,?,?) "
                "ON CONFLICT(msg_id) DO NOTHING",
                (webhook, msg_id, body, now, now),
            )
            if cur.rowcount == 0:
                self._bump("duplicates_ignored")
                return 0
            self._bump("enqueued")
        assert cur.lastrowid is not None  # set by every successful INSERT
        return int(cur.lastrowid)

    def delivered(self, row: OutboxRow) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM outbox WHERE seq = ?", (row.seq,))
            self._bump("delivered")

    def failed(self, row: OutboxRow, error: str, next_attempt: float) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt = ? WHERE seq = ?",
                (error, next_attempt, row.seq),
            )
            self._bump("failed_attempts")

    def dead_letter(
        self, row: OutboxRow, reason: str, now: float | None = None, *, attempts: int | None = None
    ) -> None:
        now = time.time() if now is None else now
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO dead_letter (webhook, msg_id, body, created, failed_at, attempts, reason) "
                "VALUES (?,?,?,?,?,?,?)",
                (
                    row.webhook,
                    row.msg_id,
                    row.body,
                    row.created,
                    now,
                    row.attempts if attempts is None else attempts,
                    reason,
                ),
            )
            self.db.execute("DELETE FROM outbox WHERE seq = ?", (row.seq,))
            self._bump("dead_letters")

    def _bump(self, name: str) -> None:
        self.db.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1",
            (name,),
        )

    # ------------------------------------------------------------------ reads
    def head(self, webhook: str) -> OutboxRow | None:
        """The oldest pending row of ``webhook`` (delivery is in order per webhook)."""
        r = self.db.execute(
            "SELECT seq, webhook, msg_id, body, created, next_attempt, attempts, last_error "
            "FROM outbox WHERE webhook = ? ORDER BY seq LIMIT 1",
            (webhook,),
        ).fetchone()
        return OutboxRow(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7]) if r else None

    def pending(self, webhook: str | None = None) -> int:
        if webhook is None:
            return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE webhook = ?", (webhook,)).fetchone()[0])

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT webhook, msg_id, created, failed_at, attempts, reason FROM dead_letter ORDER BY seq"
        ).fetchall()
        return [
            dict(zip(("webhook", "msg_id", "created", "failed_at", "attempts", "reason"), r)) for r in rows
        ]

    def counters(self) -> dict[str, int]:
        d = {k: 0 for k in ("enqueued", "delivered", "failed_attempts", "dead_letters")}
        d.update({n: int(v) for n, v in self.db.execute("SELECT name, value FROM counters")})
        d["pending"] = self.pending()
        return d
