"""The alert state machine: pure (no I/O, no clock reads); every call gets ``now`` passed in.

Data flow::

    vitals (patient, t, values)  --observe(…, now)-->  AlertEngine  --> [AlertEvent, ...]
    wall clock                   --tick(now)-------->  (no_data rules, silence expiry)
    ack / silence commands       --ack()/add_silence()/remove_silence()

One :class:`Alert` per fingerprint = (rule, patient).  States::

    inactive --breach--> pending --breach held `for`--> firing --clear held `clear_for`--> resolved
        ^                  |  (a clear window: back to inactive,                            |
        |                  |   nothing was notified)                                        |
        +------------------+----------------------------------------------------------------+
                               (resolved behaves like inactive: the next breach starts over)

Clocks.  Rules on vitals fields run on **event time**: the ``t`` of the vitals message (the
device clock of the window start), so ``for``, ``clear_for`` and ``repeat`` are measured between
windows and a replay at any speed gives the same result.  ``no_data`` (seconds since the last
vitals message of the patient) runs on the **wall clock**, on :meth:`AlertEngine.tick`.
Silences expire on the wall clock; acknowledgements last until the alert resolves.

Windows that are skipped: a window whose metric is null, or, for a gated rule (morphology
metrics ``st_*``, ``qtc_ms``, ``qrs_ms``, or any rule with a ``gate:``), whose uncertainty is above
``max_uncertainty_mv`` or SQI below ``min_sqi`` (a null uncertainty/SQI fails the gate), or, for
a rule with ``rate_agreement``, whose reconstructed rate is off the PPG's pulse rate by more than
that fraction (either rate null: off), is not
evaluated: it neither advances nor clears anything -- a pending alert stays pending, a firing
alert stays firing and a running ``clear_for`` keeps running.  Durations are measured between
evaluated windows; if more than ``max_gap`` passes between two evaluated windows, a pending
condition starts over from the newer one.

Events (:class:`AlertEvent`): ``firing`` (once per episode), ``repeat`` (every ``repeat`` while
firing, unless acknowledged or silenced), ``resolved`` (once, after the hysteresis) and
``acknowledged``.  ``event.notify`` says whether the event goes to webhooks; every event is
recorded (MQTT, InfluxDB) regardless -- the Alertmanager model:

* a **silence** (matchers patient and/or rule, until ``ends_at``) suppresses webhook
  notifications of matching alerts; the state machine runs unchanged and the events are still
  recorded, flagged ``silenced_by``.  No repeats are generated while silenced.  If an alert
  started firing under a silence that has since expired, the next evaluated window sends the
  ``firing`` notification then.  A ``resolved`` notification is only sent for an alert whose
  ``firing`` was notified and that is not silenced when it resolves.
* an **acknowledgement** stops the ``repeat`` notifications of one alert until it resolves; the
  ``resolved`` notification is still sent (receivers close their incident), and the ack itself is
  recorded as an ``acknowledged`` event (not sent to webhooks).  Acking an alert that is not
  firing changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from alerts.rules import UNITS, Gate, Rule, RuleFile, format_duration
from p2es.errors import P2esError
from p2es.files import atomic_write_text

__all__ = ["Alert", "AlertEvent", "Silence", "AlertEngine", "fingerprint", "save_state", "load_state"]

EventKind = Literal["firing", "repeat", "resolved", "acknowledged"]
_NEG = {">": "<=", ">=": "<", "<": ">=", "<=": ">"}
_SYM = {">=": "≥", "<=": "≤", ">": ">", "<": "<"}


def fingerprint(rule: str, patient: str) -> str:
    """Stable 16-hex-digit id of the alert (rule, patient), as Alertmanager's fingerprints."""
    return hashlib.sha256(f"alertname={rule}\x00patient={patient}".encode()).hexdigest()[:16]


@dataclass
class Alert:
    rule: str
    patient: str
    state: Literal["inactive", "pending", "firing", "resolved"] = "inactive"
    pending_since: float | None = None
    last_eval: float | None = None  # time of the last evaluated (not skipped) window
    fired_at: float | None = None  # startsAt of the current / last episode
    resolved_at: float | None = None
    clear_since: float | None = None
    notified: bool = False  # the firing of this episode went to the webhooks
    last_notified: float | None = None  # time of the last firing/repeat notification
    acked_by: str | None = None
    acked_at: float | None = None
    value: float | None = None
    gate: dict[str, float | None] | None = None
    fired_value: float | None = None  # the value of the window that fired this episode


@dataclass(frozen=True)
class AlertEvent:
    kind: EventKind
    rule: str
    patient: str
    priority: str
    metric: str
    op: str
    threshold: float
    t: float
    value: float | None
    message: str
    starts_at: float
    ends_at: float | None
    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    notify: bool  # goes to the webhooks
    gate: dict[str, float | None] | None = None
    silenced_by: str | None = None
    acknowledged_by: str | None = None


@dataclass
class Silence:
    id: str
    ends_at: float  # wall clock, Unix seconds
    patient: str | None = None
    rule: str | None = None
    created_at: float = 0.0
    by: str | None = None
    comment: str | None = None

    def matches(self, patient: str, rule: str, now: float) -> bool:
        return (
            now < self.ends_at
            and (self.patient is None or self.patient == patient)
            and (self.rule is None or self.rule == rule)
        )


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:  # templates are validated at load; belt and braces
        return "{" + key + "}"


class AlertEngine:
    """All alerts of all patients for one rules file (see the module docstring)."""

    def __init__(self, rules: RuleFile) -> None:
        self.rules = rules
        self._by_name = rules.by_name()
        self._vitals_rules = [r for r in rules.rules if r.metric != "no_data"]
        self._nodata_rules = [r for r in rules.rules if r.metric == "no_data"]
        self.alerts: dict[tuple[str, str], Alert] = {}
        self.silences: dict[str, Silence] = {}
        self.last_seen: dict[str, float] = {}  # patient -> wall clock of the last vitals
        self.stats: dict[str, int] = {
            "observed": 0,
            "skipped_null": 0,
            "gated_out": 0,
            "rate_mismatch": 0,
            "events": 0,
        }
        self.dirty = False  # state changed since the last save

    # ------------------------------------------------------------------ inputs
    def observe(
        self, patient: str, t: float, values: Mapping[str, float | None], now: float
    ) -> list[AlertEvent]:
        """One vitals window of ``patient`` at event time ``t`` (arrived at wall time ``now``)."""
        self.stats["observed"] += 1
        self.last_seen[patient] = now
        self.dirty = True
        out: list[AlertEvent] = []
        for rule in self._vitals_rules:
            v = values.get(rule.metric)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                self.stats["skipped_null"] += 1
                continue
            gate = self.rules.gate_for(rule)
            ginfo = None
            if gate is not None:
                ginfo = self._gate_info(gate, values)
                if not ginfo["passed"]:
                    self.stats["gated_out"] += 1
                    continue
            if rule.rate_agreement is not None:
                rinfo = self._rate_info(rule.rate_agreement, values)
                if not rinfo["passed"]:
                    self.stats["rate_mismatch"] += 1
                    continue
                ginfo = {**(ginfo or {}), **rinfo}
            out += self._advance(rule, patient, t, float(v), now, ginfo)
        for rule in self._nodata_rules:  # data arrived: the no_data condition is clear now
            out += self._advance(rule, patient, now, 0.0, now, None)
        self.stats["events"] += len(out)
        return out

    def tick(self, now: float) -> list[AlertEvent]:
        """Wall-clock housekeeping: ``no_data`` rules, expired silences, forgotten patients."""
        out: list[AlertEvent] = []
        for sid in [s.id for s in self.silences.values() if s.ends_at <= now]:
            del self.silences[sid]
            self.dirty = True
        forget = self.rules.defaults.forget_after
        for patient, seen in list(self.last_seen.items()):
            age = max(0.0, now - seen)
            if forget > 0 and age > forget:
                del self.last_seen[patient]
                self.dirty = True
                for rule in self._nodata_rules:
                    a = self.alerts.get((rule.name, patient))
                    if a is not None and a.state == "firing":
                        out.append(self._resolve(rule, a, now, age, now, forgotten=True))
                    self.alerts.pop((rule.name, patient), None)
                continue
            for rule in self._nodata_rules:
                out += self._advance(rule, patient, now, age, now, None)
        self.stats["events"] += len(out)
        return out

    def ack(self, patient: str, rule: str, now: float, by: str | None = None) -> AlertEvent | None:
        """Acknowledge the alert (rule, patient); an ``acknowledged`` event if it was firing.

        Raises ``KeyError`` for a rule that is not in the rules file."""
        r = self._by_name[rule]
        a = self.alerts.get((rule, patient))
        if a is None or a.state != "firing":
            return None
        a.acked_by, a.acked_at = (by or "unknown"), now
        self.dirty = True
        ev = self._event(
            "acknowledged",
            r,
            a,
            now,
            a.value,
            notify=False,
            message=f"acknowledged by {a.acked_by}: {self._summary(r, a, a.value)}",
        )
        self.stats["events"] += 1
        return ev

    def add_silence(self, s: Silence) -> Silence:
        self.silences[s.id] = s
        self.dirty = True
        return s

    def remove_silence(self, sid: str) -> bool:
        self.dirty = True
        return self.silences.pop(sid, None) is not None

    def silenced_by(self, patient: str, rule: str, now: float) -> str | None:
        for s in self.silences.values():
            if s.matches(patient, rule, now):
                return s.id
        return None

    def has_rule(self, name: str) -> bool:
        return name in self._by_name

    # ------------------------------------------------------------------ the machine
    @staticmethod
    def _gate_info(gate: Gate, values: Mapping[str, float | None]) -> dict[str, Any]:
        unc, sqi = values.get("uncertainty"), values.get("sqi")
        ok = (
            unc is not None
            and math.isfinite(unc)
            and unc <= gate.max_uncertainty_mv
            and sqi is not None
            and math.isfinite(sqi)
            and sqi >= gate.min_sqi
        )
        info = {
            "uncertainty": unc,
            "max_uncertainty_mv": gate.max_uncertainty_mv,
            "sqi": sqi,
            "min_sqi": gate.min_sqi,
        }
        if gate.max_hr_bpm is not None:
            # the faster of the reconstructed and the PPG's own rate: a reconstruction that
            # misses beats must not open the gate during a tachycardia
            rates = [
                r
                for r in (values.get("hr_bpm"), values.get("hr_ppg_bpm"))
                if r is not None and math.isfinite(r)
            ]
            hr = max(rates) if rates else None
            ok = ok and hr is not None and hr <= gate.max_hr_bpm
            info.update(hr_bpm=hr, max_hr_bpm=gate.max_hr_bpm)
        info["passed"] = ok
        return info

    @staticmethod
    def _rate_info(tol: float, values: Mapping[str, float | None]) -> dict[str, Any]:
        ecg, ppg = values.get("hr_bpm"), values.get("hr_ppg_bpm")
        ok = (
            ecg is not None
            and ppg is not None
            and math.isfinite(ecg)
            and math.isfinite(ppg)
            and ppg > 0
            and abs(ecg - ppg) <= tol * ppg
        )
        return {"hr_ecg_bpm": ecg, "hr_ppg_bpm": ppg, "rate_agreement": tol, "passed": ok}

    def _alert(self, rule: Rule, patient: str) -> Alert:
        key = (rule.name, patient)
        a = self.alerts.get(key)
        if a is None:
            a = self.alerts[key] = Alert(rule.name, patient)
        return a

    def _advance(
        self, rule: Rule, patient: str, t: float, value: float, now: float, ginfo: dict[str, Any] | None
    ) -> list[AlertEvent]:
        a = self.alerts.get((rule.name, patient))
        if a is None:
            if not rule.breaches(value):
                return []  # nothing to remember about a quiet alert
            a = self._alert(rule, patient)
        self.dirty = True
        gate = None if ginfo is None else {k: v for k, v in ginfo.items() if k != "passed"}
        prev_eval, a.last_eval = a.last_eval, t
        a.value, a.gate = value, gate
        out: list[AlertEvent] = []
        if a.state in ("inactive", "resolved"):
            if not rule.breaches(value):
                return out
            a.state, a.pending_since = "pending", t
        elif a.state == "pending":
            if not rule.breaches(value):
                a.state, a.pending_since = "inactive", None
                return out
            if prev_eval is not None and t - prev_eval > self.rules.defaults.max_gap:
                a.pending_since = t  # too long without an evaluated window: start over
        if a.state == "pending":
            if t - (a.pending_since if a.pending_since is not None else t) >= rule.for_:
                a.state, a.fired_at, a.resolved_at, a.clear_since = "firing", t, None, None
                a.fired_value = value
                a.acked_by = a.acked_at = None
                a.notified, a.last_notified = False, None
                sil = self.silenced_by(patient, rule.name, now)
                if sil is None:
                    a.notified, a.last_notified = True, t
                out.append(self._event("firing", rule, a, t, value, notify=sil is None, silenced_by=sil))
            return out
        # firing
        if rule.still_active(value):
            a.clear_since = None
            sil = self.silenced_by(patient, rule.name, now)
            if sil is not None:
                return out
            if not a.notified:  # fired under a silence that has expired since
                a.notified, a.last_notified = True, t
                out.append(self._event("firing", rule, a, t, value, notify=True))
                return out
            rep = self.rules.repeat_for(rule)
            if rep > 0 and a.acked_by is None and a.last_notified is not None and t - a.last_notified >= rep:
                a.last_notified = t
                out.append(self._event("repeat", rule, a, t, value, notify=True))
            return out
        if a.clear_since is None:
            a.clear_since = t
        if t - a.clear_since >= rule.clear_for:
            out.append(self._resolve(rule, a, t, value, now))
        return out

    def _resolve(
        self, rule: Rule, a: Alert, t: float, value: float, now: float, *, forgotten: bool = False
    ) -> AlertEvent:
        """The ``resolved`` event.  Its message and summary say that it resolved, with the value
        that resolved it, and what had fired (the rule's summary rendered with the value of the
        firing window) -- never the firing summary re-rendered with the resolving value."""
        sil = self.silenced_by(a.patient, rule.name, now)
        a.state, a.resolved_at, a.clear_since, a.pending_since = "resolved", t, None, None
        unit = UNITS.get(rule.metric, "")
        cleared = f"{_NEG[rule.op]} {rule.clear_level:g}{(' ' + unit) if unit else ''}"
        msg = (
            f"resolved: no_data patient forgotten after {format_duration(value)}"
            if forgotten
            else f"resolved: {rule.metric} {value:g}{(' ' + unit) if unit else ''} "
            f"({cleared} for {format_duration(rule.clear_for)})"
        )
        if a.fired_value is not None:
            msg += f"; had fired: {self._summary(rule, a, a.fired_value)}"
        notify = a.notified and sil is None
        ev = self._event(
            "resolved",
            rule,
            a,
            t,
            value,
            notify=notify,
            message=msg,
            summary=msg,
            silenced_by=sil,
            ends_at=t,
        )
        a.notified = False
        a.acked_by = a.acked_at = None
        return ev

    # ------------------------------------------------------------------ rendering
    @staticmethod
    def _fields(rule: Rule, a: Alert, value: float | None, gate: str) -> _Fields:
        """What a rule's ``summary`` / ``description`` template may name."""
        return _Fields(
            patient=a.patient,
            rule=rule.name,
            metric=rule.metric,
            op=rule.op,
            threshold=rule.threshold,
            clear_threshold=rule.clear_level,
            value=value if value is not None else math.nan,
            unit=UNITS.get(rule.metric, ""),
            priority=rule.priority,
            labels=rule.labels,
            gate=gate,
            **{"for": format_duration(rule.for_)},
        )

    def _summary(self, rule: Rule, a: Alert, value: float | None) -> str:
        return rule.summary.format_map(self._fields(rule, a, value, ""))

    @staticmethod
    def gate_text(gate: Mapping[str, Any] | None) -> str:
        """``gated: uncertainty 0.030 ≤ 0.05 mV, SQI 0.91 ≥ 0.6`` (and the HR limit / the rate
        agreement, where the rule has them)."""
        if not gate:
            return ""
        parts = []
        if "uncertainty" in gate:
            parts.append(
                f"uncertainty {gate['uncertainty']:.3f} ≤ {gate['max_uncertainty_mv']:g} mV, "
                f"SQI {gate['sqi']:.2f} ≥ {gate['min_sqi']:g}"
            )
        if gate.get("max_hr_bpm") is not None:
            parts.append(f"HR {gate['hr_bpm']:.0f} ≤ {gate['max_hr_bpm']:g} bpm")
        if gate.get("rate_agreement") is not None:
            parts.append(
                f"ECG rate {gate['hr_ecg_bpm']:.0f} bpm within {100 * gate['rate_agreement']:g} % "
                f"of the PPG's {gate['hr_ppg_bpm']:.0f} bpm"
            )
        return "gated: " + ", ".join(parts)

    def _event(
        self,
        kind: EventKind,
        rule: Rule,
        a: Alert,
        t: float,
        value: float | None,
        *,
        notify: bool,
        message: str | None = None,
        summary: str | None = None,
        silenced_by: str | None = None,
        ends_at: float | None = None,
    ) -> AlertEvent:
        # a resolved event describes what had fired: its description renders the firing value
        shown = a.fired_value if kind == "resolved" and a.fired_value is not None else value
        if summary is None:
            summary = self._summary(rule, a, value)
        if message is None:
            message = summary
            if a.gate:
                message += "; " + self.gate_text(a.gate)
            if kind == "repeat":
                message = f"still firing since {format_duration(t - (a.fired_at or t))}: {message}"
        labels = {"alertname": rule.name, "patient": a.patient, "priority": rule.priority, **rule.labels}
        desc = (
            rule.description.format_map(self._fields(rule, a, shown, self.gate_text(a.gate)))
            if rule.description
            else ""
        )
        if a.gate and kind != "resolved":
            desc = (desc + " " if desc else "") + self.gate_text(a.gate)
        return AlertEvent(
            kind=kind,
            rule=rule.name,
            patient=a.patient,
            priority=rule.priority,
            metric=rule.metric,
            op=rule.op,
            threshold=rule.threshold,
            t=t,
            value=value,
            message=message,
            starts_at=a.fired_at if a.fired_at is not None else t,
            ends_at=ends_at,
            fingerprint=fingerprint(rule.name, a.patient),
            labels=labels,
            annotations={"summary": summary, "description": desc},
            notify=notify,
            gate=a.gate,
            silenced_by=silenced_by,
            acknowledged_by=a.acked_by,
        )

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "alerts": [asdict(a) for a in self.alerts.values() if a.state != "inactive"],
            "silences": [asdict(s) for s in self.silences.values()],
            "last_seen": dict(self.last_seen),
        }

    def restore(self, data: Mapping[str, Any], now: float) -> None:
        """Load a saved state.  Alerts of rules no longer in the file are dropped; patients are
        treated as seen at ``now`` (``no_data`` counts from the restart, so vitals the broker
        queued while the service was away can arrive first)."""
        if data.get("version") != 1:
            raise ValueError(f"unsupported alert state version {data.get('version')!r}")
        self.alerts.clear()
        for d in data.get("alerts", []):
            a = Alert(**d)
            if a.rule in self._by_name:
                self.alerts[(a.rule, a.patient)] = a
        self.silences = {s["id"]: Silence(**s) for s in data.get("silences", []) if s["ends_at"] > now}
        self.last_seen = {p: max(float(t), now) for p, t in data.get("last_seen", {}).items()}
        self.dirty = False


def save_state(engine: AlertEngine, path: str | os.PathLike[str]) -> None:
    """Write the engine state atomically (temp file in the same directory, fsync, rename)."""
    data = json.dumps(engine.to_dict(), separators=(",", ":"), allow_nan=False, default=_nan_none)
    atomic_write_text(path, data, durable=True)
    engine.dirty = False


def load_state(engine: AlertEngine, path: str | os.PathLike[str], now: float) -> bool:
    """Restore from ``path`` if it exists; False when there is no state file yet."""
    p = Path(path)
    if not p.exists():
        return False
    try:
        engine.restore(json.loads(p.read_text(encoding="utf-8")), now)
    except (ValueError, TypeError, KeyError) as e:
        raise P2esError(f"alert state file {p} is unreadable ({e}); move it away to start fresh") from None
    return True


def _nan_none(o: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True
