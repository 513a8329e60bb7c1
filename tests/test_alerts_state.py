"""The alert state machine (alerts/state.py): pure, explicit clocks, no services."""

from __future__ import annotations

import json

import pytest

from alerts.rules import load_rules_text
from alerts.state import AlertEngine, Silence, fingerprint, load_state, save_state

T0 = 1_718_000_000.0
HOP = 4.0

RULES = """
defaults:
  gate: {max_uncertainty_mv: 0.05, min_sqi: 0.6}
  repeat: 40s
  max_gap: 30s
  forget_after: 1h
rules:
  - name: hr_high
    metric: hr_bpm
    op: ">"
    threshold: 120
    for: 20s
    clear_threshold: 110
    clear_for: 8s
    priority: medium
    labels: {team: ward}
    summary: "HR {value:.0f} bpm > {threshold:g}"
  - name: st_inf
    metric: st_inferior_mv
    op: ">="
    threshold: 0.1
    for: 8s
    clear_threshold: 0.05
    priority: high
    repeat: 0s
    summary: "ST {value:+.2f} mV inferior"
  - name: no_data
    metric: no_data
    op: ">"
    threshold: 30
    repeat: 60s
    summary: "no vitals for {value:.0f} s"
"""


def engine() -> AlertEngine:
    return AlertEngine(load_rules_text(RULES, "t.yaml"))


def feed(e: AlertEngine, hrs, *, start: int = 0, patient: str = "bed-1", now0: float = 0.0, **extra):
    """Feed one window per HR value (event time T0 + 4 s * i); return the events."""
    out = []
    for i, hr in enumerate(hrs, start=start):
        vals = {"hr_bpm": hr, "sqi": 0.9, "uncertainty": 0.02}
        vals.update(extra)
        out += e.observe(patient, T0 + HOP * i, vals, now=now0 + i)
    return out


def kinds(events):
    return [(ev.kind, ev.rule) for ev in events]


def test_sustained_breach_fires_once_after_for_repeats_and_resolves_with_hysteresis():
    e = engine()
    ev = feed(e, [80] * 3 + [140] * 30 + [115] * 5 + [100] * 4)
    assert kinds(ev) == [
        ("firing", "hr_high"),
        ("repeat", "hr_high"),
        ("repeat", "hr_high"),
        ("resolved", "hr_high"),
    ]
    firing, r1, r2, res = ev
    # first breach at window 3 (t = T0 + 12); for 20 s -> fires at window 8
    assert firing.t == T0 + HOP * 8 and firing.starts_at == firing.t
    assert r1.t - firing.t == 40 and r2.t - r1.t == 40  # repeat 40 s, event time
    # 115 is above the clear threshold 110: still firing; 100 from window 38, clear_for 8 s -> 40
    assert res.t == T0 + HOP * 40 and res.ends_at == res.t and res.starts_at == firing.t
    assert all(x.notify for x in ev)
    assert firing.labels == {"alertname": "hr_high", "patient": "bed-1", "priority": "medium", "team": "ward"}
    assert firing.fingerprint == fingerprint("hr_high", "bed-1") == res.fingerprint
    assert firing.message == "HR 140 bpm > 120"
    assert e.alerts[("hr_high", "bed-1")].state == "resolved"


def test_brief_excursion_shorter_than_for_notifies_nothing():
    e = engine()
    assert feed(e, [80] * 3 + [140] * 5 + [80] * 10) == []  # 5 windows = 16 s < 20 s
    assert e.alerts[("hr_high", "bed-1")].state == "inactive"


def test_null_windows_neither_advance_nor_clear():
    e = engine()
    ev = feed(e, [140, 140, None, None, None, 140, 140, 140])
    # windows 0..1 and 5..7 breach, 2..4 are null (skipped); duration from window 0 to 5 = 20 s
    assert kinds(ev) == [("firing", "hr_high")] and ev[0].t == T0 + HOP * 5
    ev = feed(e, [100, None, None, 100], start=8)  # clear windows 8 and 11: 12 s >= clear_for
    assert kinds(ev) == [("resolved", "hr_high")] and ev[0].t == T0 + HOP * 11


def test_pending_restarts_after_max_gap():
    e = engine()
    assert feed(e, [140, 140]) == []
    # next evaluated window 40 s later (> max_gap 30 s): pending starts over there
    assert feed(e, [140], start=12) == []
    ev = feed(e, [140] * 5, start=13)
    assert kinds(ev) == [("firing", "hr_high")] and ev[0].t == T0 + HOP * 17


def test_morphology_gate_blocks_high_uncertainty_and_message_states_the_gate():
    e = engine()
    assert feed(e, [80] * 6, st_inferior_mv=0.21, uncertainty=0.08) == []  # above 0.05 mV
    assert ("st_inf", "bed-1") not in e.alerts and e.stats["gated_out"] >= 6
    assert feed(e, [80] * 6, start=6, st_inferior_mv=0.21, sqi=0.4) == []  # SQI below 0.6
    ev = feed(e, [80] * 3, start=12, st_inferior_mv=0.21, uncertainty=0.03, sqi=0.91)
    assert kinds(ev) == [("firing", "st_inf")]
    assert ev[0].message == "ST +0.21 mV inferior; gated: uncertainty 0.030 ≤ 0.05 mV, SQI 0.91 ≥ 0.6"
    assert ev[0].gate == {"uncertainty": 0.03, "max_uncertainty_mv": 0.05, "sqi": 0.91, "min_sqi": 0.6}
    # gated-out windows do not clear a firing alert either
    assert feed(e, [80] * 5, start=15, st_inferior_mv=0.0, uncertainty=0.2) == []
    assert e.alerts[("st_inf", "bed-1")].state == "firing"
    ev = feed(e, [80], start=20, st_inferior_mv=0.0, uncertainty=0.02)  # clear_for 0
    assert kinds(ev) == [("resolved", "st_inf")]


def test_ack_stops_repeats_until_resolved_then_next_episode_repeats_again():
    e = engine()
    ev = feed(e, [140] * 6)
    assert kinds(ev) == [("firing", "hr_high")]
    ack = e.ack("bed-1", "hr_high", now=100.0, by="nurse")
    assert (
        ack is not None and ack.kind == "acknowledged" and not ack.notify and ack.acknowledged_by == "nurse"
    )
    ev = feed(e, [140] * 30 + [100] * 3, start=6)
    assert kinds(ev) == [("resolved", "hr_high")]  # no repeats, but resolved is still notified
    assert ev[0].notify
    ev = feed(e, [140] * 17, start=39)  # a new episode: not acknowledged any more
    assert kinds(ev) == [("firing", "hr_high"), ("repeat", "hr_high")]
    assert e.ack("bed-1", "st_inf", now=1.0) is None  # not firing: nothing
    with pytest.raises(KeyError):
        e.ack("bed-1", "nope", now=1.0)


def test_silence_suppresses_webhooks_but_records_and_notifies_after_expiry():
    e = engine()
    e.add_silence(Silence("s1", ends_at=50.0, patient="bed-1", created_at=0.0))
    ev = feed(e, [140] * 20, now0=0.0)  # wall clock 0..19 < 50: silenced
    assert kinds(ev) == [("firing", "hr_high")]
    assert ev[0].silenced_by == "s1" and not ev[0].notify  # recorded, not sent
    ev = feed(e, [140] * 3, start=20, now0=40.0)  # wall 60..62: silence expired
    assert kinds(ev) == [("firing", "hr_high")] and ev[0].notify and ev[0].silenced_by is None
    assert ev[0].starts_at == T0 + HOP * 5  # the episode's start, not the notification's
    assert e.tick(70.0) == [] and "s1" not in e.silences  # expired silences are dropped
    # another patient is not matched by a patient silence
    e.add_silence(Silence("s2", ends_at=1e12, rule="hr_high"))
    ev = feed(e, [140] * 6, patient="bed-2", now0=200.0)
    assert kinds(ev) == [("firing", "hr_high")] and ev[0].silenced_by == "s2"
    assert e.remove_silence("s2") and not e.remove_silence("s2")


def test_resolved_is_not_sent_for_an_alert_whose_firing_was_never_sent():
    e = engine()
    e.add_silence(Silence("s", ends_at=1e12, patient="bed-1"))
    ev = feed(e, [140] * 6 + [100] * 3)
    assert kinds(ev) == [("firing", "hr_high"), ("resolved", "hr_high")]
    assert not any(x.notify for x in ev)


def test_no_data_on_wall_clock_ticks():
    e = engine()
    feed(e, [80], now0=1000.0)
    assert e.tick(1020.0) == []
    ev = e.tick(1031.0)
    assert kinds(ev) == [("firing", "no_data")] and ev[0].value == pytest.approx(31.0)
    assert e.tick(1060.0) == []
    assert kinds(e.tick(1092.0)) == [("repeat", "no_data")]  # repeat 60 s
    ev = e.observe("bed-1", T0 + 100, {"hr_bpm": 80}, now=1100.0)
    assert kinds(ev) == [("resolved", "no_data")]
    # forgotten after forget_after (1 h): a firing no_data alert resolves, the patient is dropped
    e.tick(1200.0)
    ev = e.tick(1100.0 + 3601)
    assert kinds(ev) == [("resolved", "no_data")] and "bed-1" not in e.last_seen
    assert e.tick(1100.0 + 7200) == []


def test_state_round_trip_does_not_refire_and_keeps_silences(tmp_path):
    e = engine()
    feed(e, [140] * 6)
    e.add_silence(Silence("s9", ends_at=10_000.0, rule="st_inf", comment="ct", by="me"))
    e.ack("bed-1", "hr_high", now=6.0, by="nurse")
    path = tmp_path / "state" / "alerts.json"
    save_state(e, path)
    assert json.loads(path.read_text())["version"] == 1
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temp file
    e2 = engine()
    assert load_state(e2, path, now=7.0)
    assert (
        e2.alerts[("hr_high", "bed-1")].state == "firing"
        and e2.alerts[("hr_high", "bed-1")].acked_by == "nurse"
    )
    assert e2.silences["s9"].comment == "ct"
    ev = feed(e2, [140] * 25 + [100] * 3, start=6, now0=7.0)
    assert kinds(ev) == [("resolved", "hr_high")]  # no second firing, ack still holds
    assert not load_state(engine(), tmp_path / "missing.json", now=0.0)


def test_rules_hysteresis_side_and_defaults():
    rf = load_rules_text(RULES)
    r = rf.by_name()["hr_high"]
    assert r.breaches(121) and not r.breaches(120)
    assert r.still_active(111) and not r.still_active(110)
    assert rf.repeat_for(rf.by_name()["st_inf"]) == 0 and rf.repeat_for(r) == 40
    assert rf.gate_for(r) is None and rf.gate_for(rf.by_name()["st_inf"]).max_uncertainty_mv == 0.05


def test_hr_gate_holds_st_rules_during_tachycardia():
    e = AlertEngine(
        load_rules_text(
            RULES.replace(
                '    summary: "ST {value:+.2f} mV inferior"',
                '    gate: {max_hr_bpm: 120}\n    summary: "ST {value:+.2f} mV inferior"',
            )
        )
    )
    assert (
        feed(e, [135] * 6, st_inferior_mv=0.21, uncertainty=0.03, sqi=0.9) == []
        or ("st_inf", "bed-1") not in e.alerts
    )  # ST held while HR > 120 (hr_high may fire)
    assert ("st_inf", "bed-1") not in e.alerts
    ev = feed(e, [90] * 3, start=6, st_inferior_mv=0.21, uncertainty=0.03, sqi=0.9)
    st = [x for x in ev if x.rule == "st_inf"]
    assert [x.kind for x in st] == ["firing"]
    assert st[0].message.endswith("SQI 0.90 ≥ 0.6, HR 90 ≤ 120 bpm")


def test_hr_gate_uses_the_faster_of_ecg_and_ppg_rate():
    """A reconstruction that misses beats (ECG 110 bpm while the pulse is 135) keeps ST held."""
    e = AlertEngine(
        load_rules_text(
            RULES.replace(
                '    summary: "ST {value:+.2f} mV inferior"',
                '    gate: {max_hr_bpm: 120}\n    summary: "ST {value:+.2f} mV inferior"',
            )
        )
    )
    feed(e, [110] * 6, st_inferior_mv=0.21, hr_ppg_bpm=135.0)
    assert ("st_inf", "bed-1") not in e.alerts
    ev = feed(e, [110] * 3, start=6, st_inferior_mv=0.21, hr_ppg_bpm=100.0)
    assert [x.kind for x in ev if x.rule == "st_inf"] == ["firing"]


RR_RULE = """
  - name: rr_irr
    metric: rr_irregularity
    op: ">"
    threshold: 0.10
    for: 12s
    clear_threshold: 0.08
    rate_agreement: 0.05
    summary: "nRMSSD {value:.2f}"
"""


def test_rate_agreement_skips_windows_whose_reconstructed_rate_is_off_the_pulse():
    """An irregularity measured on a reconstruction that missed a beat (ECG 70 bpm, pulse
    84 bpm) is not evaluated: it neither starts nor clears anything; windows whose rates agree
    within 5 % are, and the message says which rates agreed."""
    e = AlertEngine(load_rules_text(RULES + RR_RULE))
    # 40 s of 'irregular' windows, all with the ECG rate 17 % under the pulse rate: nothing
    feed(e, [70] * 10, rr_irregularity=0.3, hr_ppg_bpm=84.0)
    assert ("rr_irr", "bed-1") not in e.alerts and e.stats["rate_mismatch"] == 10
    # missing pulse rate: skipped too
    feed(e, [80] * 2, start=10, rr_irregularity=0.3)
    assert ("rr_irr", "bed-1") not in e.alerts and e.stats["rate_mismatch"] == 12
    # rates within 5 % (82 vs 84 bpm): evaluated, fires after `for`
    ev = feed(e, [82] * 5, start=12, rr_irregularity=0.3, hr_ppg_bpm=84.0)
    fired = [x for x in ev if x.rule == "rr_irr"]
    assert [x.kind for x in fired] == ["firing"]
    assert fired[0].message.endswith("gated: ECG rate 82 bpm within 5 % of the PPG's 84 bpm")
    assert fired[0].gate["rate_agreement"] == 0.05 and "uncertainty" not in fired[0].gate
    # a regular-looking window with mismatched rates does not clear it either
    feed(e, [60] * 5, start=17, rr_irregularity=0.01, hr_ppg_bpm=84.0)
    assert e.alerts[("rr_irr", "bed-1")].state == "firing"
    ev = feed(e, [83] * 3, start=22, rr_irregularity=0.01, hr_ppg_bpm=84.0)
    assert [x.kind for x in ev if x.rule == "rr_irr"] == ["resolved"]


def test_rate_agreement_validation():
    with pytest.raises(Exception, match="rate_agreement"):
        load_rules_text(RULES + RR_RULE.replace("rate_agreement: 0.05", "rate_agreement: 1.5"), "t.yaml")
    with pytest.raises(Exception, match="rate_agreement is not allowed on a no_data rule"):
        load_rules_text(
            RULES.replace("    repeat: 60s\n", "    repeat: 60s\n    rate_agreement: 0.1\n"), "t.yaml"
        )
