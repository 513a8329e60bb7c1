"""The contracts are defined once (p2es/contracts) and everybody uses them: docs/contracts.md is
generated from them, dashboard queries and alert rules name only declared measurements, fields
and metrics, and no other module keeps its own list of vitals fields or builds topic strings."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from p2es.contracts.influx import MEASUREMENTS, PIPELINE, VITALS
from p2es.contracts.vitals import VITALS_METRICS, Vitals, parse_vitals

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("p2es", "engine", "ingest", "sink", "alerts", "dashboards", "wearable")


def test_contracts_doc_is_current() -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "contracts_doc.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def _queries(obj: object) -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("query", "rawSql") and isinstance(v, str):
                out.append(v)
            elif isinstance(v, dict) and k == "query" and isinstance(v.get("query"), str):
                out.append(v["query"])
            else:
                out += _queries(v)
    elif isinstance(obj, list):
        for v in obj:
            out += _queries(v)
    return out


def test_dashboard_queries_name_declared_measurements_and_fields() -> None:
    files = sorted((REPO / "dashboards" / "json").glob("*.json"))
    assert files
    n = 0
    for f in files:
        for q in _queries(json.loads(f.read_text())):
            meas = re.findall(r'FROM "([^"]+)"', q)
            assert meas, (f.name, q)
            for m in meas:
                assert m in MEASUREMENTS, (f.name, m)
            allowed = {m for m in meas} | set(re.findall(r'AS "([^"]+)"', q))
            for m in meas:
                allowed |= set(MEASUREMENTS[m].fields) | set(MEASUREMENTS[m].tags)
            for ident in re.findall(r'"([^"]+)"', q):
                assert ident in allowed, f"{f.name}: {ident!r} is not declared in p2es.contracts.influx ({q})"
            n += 1
    assert n >= 20


def test_alert_rules_name_declared_metrics() -> None:
    from alerts.rules import METRICS, load_rules

    assert set(METRICS) == set(VITALS_METRICS) | {"no_data"}
    for path in (REPO / "alerts" / "default_rules.yaml",):
        rules = load_rules(str(path))
        assert rules.rules
        for r in rules.rules:
            assert r.metric in METRICS, (path.name, r.name, r.metric)


def test_vitals_round_trip_and_non_finite_as_null() -> None:
    v = Vitals(patient="bed-1", t=1_718_000_000.5, hr_bpm=72.1234567, qtc_ms=float("nan"), sqi=0.9)
    text = v.to_json()
    d = json.loads(text)
    assert d["hr_bpm"] == 72.123457 and d["qtc_ms"] is None and d["t"] == 1_718_000_000.5
    assert set(d) == {"patient", "t", *VITALS_METRICS}
    back = parse_vitals("p2es/v1/patients/bed-1/vitals", text.encode())
    assert isinstance(back, Vitals) and back.hr_bpm == pytest.approx(72.123457)
    assert parse_vitals("p2es/v1/patients/bed-2/vitals", text.encode()).startswith("invalid_vitals: patient")
    assert VITALS.fields == VITALS_METRICS


def test_pipeline_health_fields_are_the_declared_ones() -> None:
    src = (REPO / "engine" / "app" / "pipeline.py").read_text()
    tree = ast.parse(src)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "health_fields")
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
    assert isinstance(ret.value, ast.Dict)
    keys = tuple(k.value for k in ret.value.keys if isinstance(k, ast.Constant))
    assert keys == PIPELINE.fields


def _py_files() -> list[Path]:
    return [
        p
        for pkg in PACKAGES
        for p in sorted((REPO / pkg).rglob("*.py"))
        if "contracts" not in p.relative_to(REPO).parts
    ]


def test_no_second_list_of_fields() -> None:
    """No module outside p2es/contracts spells out a list of three or more declared fields."""
    # (the ECG fields are the lead names of p2es.leads, which layouts legitimately arrange)
    declared = [set(m.fields) for m in MEASUREMENTS.values() if len(m.fields) >= 3 and m.name != "ecg"]
    bad = []
    for p in _py_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {
                    e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
                }
                if any(len(names & d) >= 3 for d in declared):
                    bad.append(f"{p.relative_to(REPO)}:{node.lineno}")
    assert bad == []


def test_topics_are_built_only_in_contracts() -> None:
    """Topic strings (``.../patients/...``, ``.../deadletter``, ``.../alerts/ack``) are built by
    p2es.contracts.topics only."""
    pat = re.compile(r"(^|/)patients/|/deadletter$|/alerts/ack$")
    bad = []
    for p in _py_files():
        for node in ast.walk(ast.parse(p.read_text())):
            parts: list[str] = []
            if isinstance(node, ast.JoinedStr):
                parts = [
                    v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
                ]
            if any(pat.search(s) for s in parts):
                bad.append(f"{p.relative_to(REPO)}:{node.lineno}")
    assert bad == []


def test_sink_has_no_vitals_field_list() -> None:
    import sink
    import sink.lineprotocol as lp

    assert not hasattr(sink, "VITALS_FIELDS") and not hasattr(lp, "VITALS_FIELDS")
    with pytest.raises(ValueError, match="undeclared"):
        lp.vitals_line("p", 1, {"heart_rate": 60.0})
    assert np.isfinite(1.0)
