"""Per-patient budget: one device publishing far above its rate must not take the engine from the
others.  Pure and synchronous: every call takes ``now`` explicitly; nothing here does I/O.

Two token buckets per patient (either may be off):

* **messages**: ``msgs_per_s`` tokens per second up to ``msgs_burst``; every input message of the
  patient (``ppg``, ``ppg/bin``, ``profile``; valid or not) costs one.  The ingest services check
  it *before* parsing, so a message flood costs a topic match and a dead letter, not a JSON parse.
* **samples**, relative to the fs the chunk declares: tokens are seconds of signal, refilled at
  ``factor`` seconds of signal per second up to ``burst_s``; a chunk of ``n`` samples at ``fs``
  costs ``n / fs``.  A patient may send ``factor x fs`` samples/s sustained (4 x 128 = 512 at the
  recommended factor 4) plus a burst of ``burst_s x fs`` samples (a device catching up after a
  network outage).  ``burst_s`` must be >= 10 s, the longest chunk the contract allows, so that
  every valid chunk fits an idle bucket.

A message is admitted whole or refused whole (the ingest dead-letters it as ``rate_limited``);
a refused message takes no tokens, so a flooder gets exactly its budget and no less.  Over any
interval of ``T`` seconds a patient has at most ``msgs_burst + msgs_per_s x T`` messages and
``(burst_s + factor x T) x fs`` samples admitted.

Episodes: a patient is *limited* from its first refusal until ``quiet_s`` pass without one.
:meth:`PatientBudget.admit_message` / :meth:`PatientBudget.admit_chunk` return a
:class:`Limited` whose ``first`` is True for the refusal that starts an episode, and
:meth:`PatientBudget.tick` returns the episodes that ended (:class:`Episode`), so a service logs
two lines per episode, not one per message.

Memory bound
------------
One slot per patient (two buckets, the offered-rate and episode bookkeeping: about 0.5 kB of
Python objects), at most ``max_patients`` (10 000 by default: about 5 MB), whatever devices
send.  A slot whose buckets have refilled and that is not limited carries no information (a
fresh slot is the same), so :meth:`PatientBudget.tick` drops it: only patients that sent within
the last ``burst_s / factor`` (or ``msgs_burst / msgs_per_s``) seconds, or are limited, are held.
Beyond ``max_patients`` the least recently active slot is dropped: that patient starts again
with full buckets (it gains at most one burst, and only while ``max_patients`` other patients
are active).  Ended episodes wait for the next :meth:`tick` in a queue of at most 1024.  With
both buckets off nothing is held.

Clock: ``now`` is seconds on any clock that does not run backwards much (monotonic time in the
MQTT ingest, JetStream's stored time of each message in the bus ingest).  A ``now`` earlier than
a bucket's last update refills nothing and is not an error.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "MIN_BURST_S",
    "TokenBucket",
    "Limited",
    "Episode",
    "PatientBudget",
]

#: the longest chunk the contract allows (``p2es.contracts.ppg.MAX_CHUNK_S``): the least burst
MIN_BURST_S = 10.0
_MIN_RATE_SPAN_S = 0.1  # offered rates are averaged over at least this long (a burst at one instant)
_ENDED_MAX = 1024


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity``; starts full."""

    __slots__ = ("rate", "capacity", "tokens", "t")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if not (rate > 0 and capacity > 0 and math.isfinite(rate) and math.isfinite(capacity)):
            raise ValueError("a token bucket needs a finite rate > 0 and capacity > 0")
        self.rate, self.capacity = float(rate), float(capacity)
        self.tokens, self.t = float(capacity), float(now)

    def refill(self, now: float) -> float:
        """The tokens at ``now`` (an earlier ``now`` than the last update refills nothing)."""
        if now > self.t:
            self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
            self.t = now
        return self.tokens

    def full(self, now: float) -> bool:
        return self.refill(now) >= self.capacity

    def take(self, cost: float, now: float) -> bool:
        """Take ``cost`` tokens if there are that many (then True); otherwise take nothing."""
        if self.refill(now) >= cost - 1e-9 * self.capacity:  # float slack of the refill sums
            self.tokens = max(0.0, self.tokens - cost)
            return True
        return False


@dataclass(frozen=True)
class Limited:
    """A refused message: ``detail`` is the dead letter's reason after ``rate_limited: ``."""

    patient: str
    detail: str
    first: bool  # this refusal starts an episode (log it)

    @property
    def reason(self) -> str:
        return f"rate_limited: {self.detail}"


@dataclass(frozen=True)
class Episode:
    """A patient that was limited and has stopped being so (or whose slot was evicted)."""

    patient: str
    duration_s: float  # first refusal -> last refusal
    messages: int  # messages refused in the episode
    samples: int  # samples refused in the episode (chunks refused by the sample budget)


class _BudgetConfig(Protocol):  # ingest.stream.StreamConfig (frozen), without importing it
    @property
    def rate_limit_factor(self) -> float | None: ...
    @property
    def rate_limit_burst_s(self) -> float: ...
    @property
    def rate_limit_msgs_per_s(self) -> float | None: ...
    @property
    def rate_limit_msgs_burst(self) -> int: ...


class _Slot:
    __slots__ = (
        "msgs",
        "samples",
        "m_since",
        "m_offered",
        "s_since",
        "s_offered",
        "ep_start",
        "ep_last",
        "ep_msgs",
        "ep_samples",
        "admitted_msgs",
        "admitted_samples",
        "refused_msgs",
        "refused_samples",
    )

    def __init__(self, msgs: TokenBucket | None, samples: TokenBucket | None, now: float) -> None:
        self.msgs, self.samples = msgs, samples
        self.m_since = self.s_since = now  # start of the current busy period (bucket last full)
        self.m_offered = 0  # messages offered since m_since
        self.s_offered = 0  # samples offered since s_since
        self.ep_start: float | None = None  # first refusal of the current episode
        self.ep_last = 0.0
        self.ep_msgs = self.ep_samples = 0
        self.admitted_msgs = self.admitted_samples = 0
        self.refused_msgs = self.refused_samples = 0

    def idle(self, now: float) -> bool:
        return (
            self.ep_start is None
            and (self.msgs is None or self.msgs.full(now))
            and (self.samples is None or self.samples.full(now))
        )


class PatientBudget:
    """The per-patient buckets (see the module docstring).  ``factor`` / ``msgs_per_s`` None or
    0: that bucket is off."""

    def __init__(
        self,
        *,
        factor: float | None = None,
        burst_s: float = MIN_BURST_S,
        msgs_per_s: float | None = None,
        msgs_burst: int = 100,
        max_patients: int = 10_000,
        quiet_s: float = 10.0,
    ) -> None:
        self.factor = float(factor) if factor else None
        self.msgs_per_s = float(msgs_per_s) if msgs_per_s else None
        self.burst_s, self.msgs_burst = float(burst_s), int(msgs_burst)
        self.max_patients, self.quiet_s = int(max_patients), float(quiet_s)
        if self.factor is not None and not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError("rate_limit_factor must be a finite number > 0 (or None/0: off)")
        if self.factor is not None and not (math.isfinite(self.burst_s) and self.burst_s >= MIN_BURST_S):
            raise ValueError(
                f"rate_limit_burst_s must be a finite number >= {MIN_BURST_S:g} (the longest chunk)"
            )
        if self.msgs_per_s is not None and not (math.isfinite(self.msgs_per_s) and self.msgs_per_s > 0):
            raise ValueError("rate_limit_msgs_per_s must be a finite number > 0 (or None/0: off)")
        if self.msgs_per_s is not None and self.msgs_burst < 1:
            raise ValueError("rate_limit_msgs_burst must be >= 1")
        if self.max_patients < 1 or not self.quiet_s > 0:
            raise ValueError("max_patients must be >= 1 and quiet_s > 0")
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # least recently active first
        self._ended: deque[Episode] = deque(maxlen=_ENDED_MAX)
        self.evicted = 0
        self.refused_msgs = 0  # totals over every patient, for the metrics
        self.refused_samples = 0

    @classmethod
    def from_config(cls, cfg: _BudgetConfig, *, max_patients: int = 10_000) -> PatientBudget:
        """The budget of an ``ingest.stream.StreamConfig`` (its ``rate_limit_*`` fields)."""
        return cls(
            factor=cfg.rate_limit_factor,
            burst_s=cfg.rate_limit_burst_s,
            msgs_per_s=cfg.rate_limit_msgs_per_s,
            msgs_burst=cfg.rate_limit_msgs_burst,
            max_patients=max_patients,
        )

    @property
    def enabled(self) -> bool:
        return self.factor is not None or self.msgs_per_s is not None

    def __len__(self) -> int:
        return len(self._slots)

    # -- admission ------------------------------------------------------------------------
    def _slot(self, patient: str, now: float) -> _Slot:
        s = self._slots.get(patient)
        if s is not None:
            self._slots.move_to_end(patient)
            return s
        if len(self._slots) >= self.max_patients:
            old_pid, old = self._slots.popitem(last=False)
            self.evicted += 1
            self._end(old_pid, old)
        s = _Slot(
            TokenBucket(self.msgs_per_s, self.msgs_burst, now) if self.msgs_per_s else None,
            TokenBucket(self.factor, self.burst_s, now) if self.factor else None,
            now,
        )
        self._slots[patient] = s
        return s

    def _refuse(self, patient: str, s: _Slot, now: float, detail: str, samples: int) -> Limited:
        first = s.ep_start is None
        if first:
            s.ep_start, s.ep_msgs, s.ep_samples = now, 0, 0
        s.ep_last = max(s.ep_last, now) if not first else now
        s.ep_msgs += 1
        s.ep_samples += samples
        s.refused_msgs += 1
        s.refused_samples += samples
        self.refused_msgs += 1
        self.refused_samples += samples
        return Limited(patient, detail, first)

    def admit_message(self, patient: str, now: float) -> Limited | None:
        """One input message of ``patient`` (before parsing): None when admitted."""
        if self.msgs_per_s is None:
            return None
        s = self._slot(patient, now)
        b = s.msgs
        assert b is not None
        if b.full(now):  # a new busy period: the offered rate is measured from here
            s.m_since, s.m_offered = now, 0
        s.m_offered += 1
        if b.take(1.0, now):
            s.admitted_msgs += 1
            return None
        rate = s.m_offered / max(now - s.m_since, _MIN_RATE_SPAN_S)
        detail = (
            f"patient {patient}: {rate:.0f} messages/s over the budget of "
            f"{self.msgs_per_s:g} messages/s (burst {self.msgs_burst})"
        )
        return self._refuse(patient, s, now, detail, 0)

    def admit_chunk(self, patient: str, n: int, fs: float, now: float) -> Limited | None:
        """A parsed chunk of ``n`` samples at the declared ``fs``: None when admitted."""
        if self.factor is None:
            return None
        s = self._slot(patient, now)
        b = s.samples
        assert b is not None
        if b.full(now):
            s.s_since, s.s_offered = now, 0
        s.s_offered += int(n)
        if b.take(n / fs, now):
            s.admitted_samples += int(n)
            return None
        rate = s.s_offered / max(now - s.s_since, _MIN_RATE_SPAN_S)
        detail = (
            f"patient {patient}: {rate:.0f} samples/s over the budget of {self.factor * fs:.0f} "
            f"samples/s ({self.factor:g} x fs {fs:g}, burst {self.burst_s:g} s)"
        )
        return self._refuse(patient, s, now, detail, int(n))

    # -- housekeeping ---------------------------------------------------------------------
    def _end(self, patient: str, s: _Slot) -> None:
        if s.ep_start is not None:
            self._ended.append(Episode(patient, s.ep_last - s.ep_start, s.ep_msgs, s.ep_samples))
            s.ep_start = None

    def tick(self, now: float) -> list[Episode]:
        """End the episodes of patients refused nothing for ``quiet_s``, drop idle slots; the
        episodes that ended since the last call (also those of evicted slots)."""
        drop = []
        for pid, s in self._slots.items():
            if s.ep_start is not None and now - s.ep_last >= self.quiet_s:
                self._end(pid, s)
            if s.idle(now):
                drop.append(pid)
        for pid in drop:
            del self._slots[pid]
        out = list(self._ended)
        self._ended.clear()
        return out

    def forget(self, patients: list[str] | set[str]) -> None:
        """Drop these patients' slots (scale-out: their shard went to another worker)."""
        for pid in patients:
            s = self._slots.pop(pid, None)
            if s is not None:
                self._end(pid, s)

    # -- introspection --------------------------------------------------------------------
    def limited(self) -> list[str]:
        """Patients in an episode now (least recently active first)."""
        return [pid for pid, s in self._slots.items() if s.ep_start is not None]

    def usage(self, patient: str) -> dict[str, int] | None:
        """Admitted / refused messages and samples of a patient still held (None otherwise)."""
        s = self._slots.get(patient)
        if s is None:
            return None
        return {
            "admitted_messages": s.admitted_msgs,
            "admitted_samples": s.admitted_samples,
            "refused_messages": s.refused_msgs,
            "refused_samples": s.refused_samples,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "patients_tracked": len(self._slots),
            "patients_limited": sum(1 for s in self._slots.values() if s.ep_start is not None),
            "refused_messages": self.refused_msgs,
            "refused_samples": self.refused_samples,
            "evicted": self.evicted,
        }
