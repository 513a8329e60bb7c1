"""Every InfluxQL query of every dashboard (panel targets, template-variable queries, annotations)
runs against the REAL InfluxDB 1.6.7 after a short simulated run through the real pipeline, with
the template variables filled in the way Grafana fills them, and returns data.

No Grafana server can run here, so Grafana's part is emulated by :func:`render` below, which
follows the InfluxQL data source's substitution rules for the cases the dashboards use:

* ``$timeFilter`` -> ``time >= <from>ms and time <= <to>ms`` (an absolute range, which is also
  what a panel with ``timeFrom`` / ``timeShift`` gets);
* ``$__interval`` -> the interval (here ``1s``, or the panel's minimum ``interval`` if larger);
* a single-value variable is inserted as is; a multi-value / "All" variable has each value
  regex-escaped and several joined as ``(a|b|c)`` (Grafana's ``interpolateQueryExpr``).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import numpy as np
import pytest
import services

from dashboards.build import ECG_LAYOUT, all_dashboards
from dashboards.validate import iter_queries

pytestmark = pytest.mark.services

FS = 128.0
T, HOP = 1024, 512
DURATION = 32.0


# ------------------------------------------------------------------------- Grafana emulation
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def escape_regex(v: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), v)


def duration_ms(text: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    assert m, text
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2)]


def render(
    query: str,
    *,
    from_ms: int,
    to_ms: int,
    interval: str = "1s",
    variables: dict[str, tuple[list[str], bool]] | None = None,
) -> str:
    """Grafana's substitution. ``variables``: name -> (selected values, multi_or_all)."""
    q = query.replace("$timeFilter", f"time >= {from_ms}ms and time <= {to_ms}ms")
    q = q.replace("$__interval_ms", str(duration_ms(interval))).replace("$__interval", interval)
    for name, (values, multi) in sorted((variables or {}).items(), key=lambda kv: -len(kv[0])):
        if not multi:
            assert len(values) == 1
            text = values[0]
        else:
            esc = [escape_regex(v) for v in values]
            text = esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"
        q = q.replace("${" + name + "}", text)
        q = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m, text=text: text, q)
    left = set(re.findall(r"\$\{?([A-Za-z_]\w*)", q)) - {"col"}
    assert not {v for v in left if not v.startswith("tag_")}, q  # every variable was filled in
    return q


def panel_range(panel: dict, from_ms: int, to_ms: int, now_ms: int) -> tuple[int, int]:
    """Apply a panel's relative time (``timeFrom``) and ``timeShift`` as Grafana does."""
    shift = duration_ms(panel["timeShift"]) if panel.get("timeShift") else 0
    if panel.get("timeFrom"):
        to = now_ms - shift
        return to - duration_ms(panel["timeFrom"]), to
    return from_ms - shift, to_ms - shift


def run(q: str, db: str) -> list[dict]:
    """InfluxDB's answer: the series of the (single) statement."""
    res = services.influx_query(q, db)["results"]
    assert len(res) == 1, (q, res)
    return res[0].get("series", [])


# ------------------------------------------------------------------------- the simulated run
async def _wait_for(pred, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


@pytest.fixture(scope="module")
def run_data(influxdb, mqtt_broker, tmp_path_factory, tiny_ckpt):
    """3 simulated patients (24 s of signal, in the past) through the real Pipeline into a private
    database, health every second, then alert transitions written with ``alert_line``."""
    from engine.app.pipeline import Pipeline, PipelineConfig
    from sink.lineprotocol import alert_line
    from wearable.publisher import make_patients, simulate_async

    tmp = tmp_path_factory.mktemp("dash")
    tag = uuid.uuid4().hex[:6]
    db = f"p2es_dash_{tag}"
    services.influx_query(f'CREATE DATABASE "{db}"', db="")
    ckpt = tiny_ckpt
    t_start = float(int(time.time()) - 90)  # device clock 90 s in the past: a past time range
    client_id = f"p2es-dash-{tag}"
    n_win = int(np.ceil((DURATION * FS - T) / HOP))

    async def main():
        cfg = PipelineConfig(
            broker=services.mqtt_url(),
            client_id=client_id,
            influx_url=services.influx_url(),
            influx_db=db,
            steps=2,
            k=2,
            max_batch=16,
            max_wait_ms=20,
            checkpoint=ckpt,
            spool_dir=str(tmp / "spool"),
            writer_flush_interval_s=0.3,
            writer_backoff_cap_s=1.0,
            threads=1,
            stream_reorder_wait_s=1.0,
            idle_flush_s=1.5,
            health_interval_s=1.0,
            publish_vitals=False,
        )
        pipe = Pipeline(cfg)
        await pipe.start()
        try:
            await pipe.ingest.wait_connected(10)
            pats = make_patients(3, seed=11, duration_s=DURATION, fs_list=[64, 100, 125], prefix=f"d{tag}")
            await simulate_async(
                services.mqtt_url(), pats, speed=8, duration_s=DURATION, t_start=t_start, seed=1
            )

            def done():
                ps = pipe.stats()["patients"]
                return len(ps) == 3 and all(
                    p["windows"] >= n_win and p["ecg_samples"] == (p["windows"] - 1) * HOP + T
                    for p in ps.values()
                )

            assert await _wait_for(done, 60), pipe.stats()["patients"]
            await asyncio.sleep(2.5)  # a few more health points
        finally:
            await pipe.stop()
        return [p.id for p in pats]

    patients = asyncio.run(main())
    s = 1_000_000_000
    t0 = int(t_start) * s
    p0, p1, p2 = patients
    alerts = [
        alert_line(p0, "hr_high", "high", t0 + 10 * s, state="firing", value=131.0, message="HR 131/min"),
        alert_line(
            p1, "af_suspected", "medium", t0 + 10 * s, state="firing", value=0.21, message="irregular RR"
        ),
        alert_line(p1, "sqi_low", "low", t0 + 11 * s, state="firing", value=0.3, message="poor signal"),
        alert_line(p2, "qtc_long", "high", t0 + 5 * s, state="firing", value=520.0, message="QTc 520 ms"),
        alert_line(p2, "qtc_long", "high", t0 + 15 * s, state="resolved", value=450.0, message="QTc 450 ms"),
        alert_line(p2, "sqi_low", "low", t0 + 12 * s, state="repeat", value=0.2, message="poor signal"),
    ]
    services.influx_write("".join(alerts), db=db)
    from_ms = int(t_start * 1000) - 5_000
    to_ms = int(time.time() * 1000) + 5_000
    # The patient a viewer picks: the one whose vitals have the most fields measured (an
    # untrained tiny model cannot always measure e.g. QTc in every window of every patient).
    counts = {
        sr["tags"]["patient"]: sum(1 for c in sr["values"][0][1:] if c)
        for sr in run('SELECT count(*) FROM "vitals" GROUP BY "patient"', db)
    }
    viewed = max(patients, key=lambda p: counts.get(p, 0))
    yield {
        "db": db,
        "patients": patients,
        "viewed": viewed,
        "instance": client_id,
        "from_ms": from_ms,
        "to_ms": to_ms,
    }
    services.influx_query(f'DROP DATABASE "{db}"', db="")


def _variable_values(d: dict, data: dict) -> dict[str, tuple[list[str], bool]]:
    """Run each template-variable query like Grafana does and select a value."""
    out = {}
    for v in d["templating"]["list"]:
        series = run(v["query"], data["db"])
        assert series, f"variable ${v['name']} query returned nothing: {v['query']}"
        options = [row[1] for row in series[0]["values"]]
        multi = bool(v.get("multi") or v.get("includeAll"))
        if v["name"] == "patient":
            assert set(data["patients"]) <= set(options), options
            out["patient"] = ([data["viewed"]], multi)
        elif v["name"] == "instance":
            assert data["instance"] in options, options
            out["instance"] = (options, multi)  # "All"
        else:  # pragma: no cover - a new variable must get a value here
            raise AssertionError(f"test does not know variable ${v['name']}")
    return out


def _panel_of(d: dict, where: str) -> dict | None:
    for p in d["panels"]:
        if where.startswith(f"panel {p['id']} "):
            return p
    return None


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", ["ward-overview", "patient", "pipeline-health"])
def test_every_query_returns_data(run_data, name):
    d = all_dashboards()[name]
    data = run_data
    variables = _variable_values(d, data)
    ecg_last_ms = (
        run(f"SELECT last(\"II\") FROM ecg WHERE patient = '{data['viewed']}'", data["db"])[0]["values"][0][0]
        // 1_000_000
    )
    checked = 0
    for kind, where, obj in iter_queries(d):
        if kind == "variable":
            continue  # ran above
        panel = _panel_of(d, where) if kind == "target" else None
        lo, hi = data["from_ms"], data["to_ms"]
        if panel is not None and panel.get("timeFrom"):
            # as seen by a viewer at the moment the newest ECG sample enters the shifted panel
            now = ecg_last_ms + duration_ms(panel.get("timeShift", "0s"))
            lo, hi = panel_range(panel, lo, hi, now)
        interval = "1s"
        if panel is not None and panel.get("interval"):
            interval = max(interval, panel["interval"], key=duration_ms)
        q = render(obj["query"], from_ms=lo, to_ms=hi, interval=interval, variables=variables)
        series = run(q, data["db"])
        assert series and any(s.get("values") for s in series), f"{name}: {where}: no data for\n{q}"
        # every selected column has data somewhere (a misspelt field gives an all-null column)
        for col in {c for s in series for c in s["columns"]} - {"time"}:
            assert any(
                row[s["columns"].index(col)] is not None
                for s in series
                if col in s["columns"]
                for row in s["values"]
            ), f"{name}: {where}: column {col!r} is always null in\n{q}"
        checked += 1
    assert checked >= {"ward-overview": 7, "patient": 26, "pipeline-health": 13}[name]


def test_ecg_panels_show_ten_seconds_of_every_lead(run_data):
    """The 3x4 printout: each lead panel gets the full 10 s (1280 samples at 128 Hz)."""
    d = all_dashboards()["patient"]
    data = run_data
    variables = _variable_values(d, data)
    leads = [lead for row in ECG_LAYOUT for lead in row]
    assert sorted(leads) == sorted(
        ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    )
    ecg_last_ms = (
        run(f"SELECT last(\"I\") FROM ecg WHERE patient = '{data['viewed']}'", data["db"])[0]["values"][0][0]
        // 1_000_000
    )
    seen = []
    for p in d["panels"]:
        q = p.get("targets", [{}])[0].get("query", "")
        if 'FROM "ecg"' not in q:
            continue
        now = ecg_last_ms + duration_ms(p["timeShift"])
        lo, hi = panel_range(p, data["from_ms"], data["to_ms"], now)
        series = run(render(q, from_ms=lo, to_ms=hi, variables=variables), data["db"])
        n = len(series[0]["values"])
        assert 1270 <= n <= 1281, (p["title"], n)
        seen.append(series[0]["columns"][1])
    assert seen[:12] == leads and seen[12] == "II"  # printout order, then the rhythm strip


def test_ward_overview_alert_columns_are_right(run_data):
    """Active alerts by priority and the worst one per patient, from the real queries."""
    d = all_dashboards()["ward-overview"]
    data = run_data
    table = next(p for p in d["panels"] if p["title"] == "Patients")
    got: dict[str, dict[str, float]] = {}
    for t in table["targets"]:
        for s in run(render(t["query"], from_ms=data["from_ms"], to_ms=data["to_ms"]), data["db"]):
            row = dict(zip(s["columns"], s["values"][0]))
            got.setdefault(s["tags"]["patient"], {}).update(row)
    p0, p1, p2 = data["patients"]
    assert got[p0]["Worst alert"] == 3 and got[p0]["High"] == 1
    assert got[p1]["Worst alert"] == 2 and got[p1]["Medium"] == 1 and got[p1]["Low"] == 1
    # p2: its high alert resolved, a low one still repeating
    assert got[p2]["Worst alert"] == 1 and "High" not in got[p2] and got[p2]["Low"] == 1
    for p in (p0, p1, p2):
        assert 0 <= got[p]["SQI"] <= 1
    active = next(p for p in d["panels"] if p["title"] == "Active alerts")
    rows = run(
        render(active["targets"][0]["query"], from_ms=data["from_ms"], to_ms=data["to_ms"]), data["db"]
    )
    assert sorted((s["tags"]["patient"], s["tags"]["rule"]) for s in rows) == sorted(
        [(p0, "hr_high"), (p1, "af_suspected"), (p1, "sqi_low"), (p2, "sqi_low")]
    )


def test_render_follows_grafana_rules():
    q = "SELECT x FROM m WHERE \"instance\" =~ /^$instance$/ AND p = '$p' AND $timeFilter GROUP BY time($__interval)"
    out = render(
        q,
        from_ms=1000,
        to_ms=2000,
        interval="10s",
        variables={"instance": (["a.b", "c/d"], True), "p": (["x.y"], False)},
    )
    assert out == (
        "SELECT x FROM m WHERE \"instance\" =~ /^(a\\.b|c\\/d)$/ AND p = 'x.y' AND "
        "time >= 1000ms and time <= 2000ms GROUP BY time(10s)"
    )
    assert panel_range({"timeFrom": "10s", "timeShift": "15s"}, 0, 0, 100_000) == (75_000, 85_000)
