"""The three p2es Grafana dashboards and their provisioning files, as code.

``python -m dashboards.build`` (or ``p2es dashboards export --out dashboards``) regenerates the
committed files under ``dashboards/json/`` and ``dashboards/provisioning/``; a test checks the
committed files equal what this module builds.

Every query is raw **InfluxQL** against the ``vitals``, ``ecg``, ``ppg``, ``pipeline`` and
``alerts`` measurements of the README's InfluxDB contract, so the same dashboards work on
InfluxDB 1.8+, on 2.x (InfluxQL through a DBRP mapping and a token) and on 3.x.

Alert semantics used here: an alert (one ``patient, rule, priority`` series) is *active* when its
latest point in the time range has a ``state`` other than ``resolved`` (``firing``, ``repeat``,
...); priorities are ``high``, ``medium`` and ``low``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dashboards.model import (
    DATASOURCE_UID,
    annotation,
    dashboard,
    grid,
    query_variable,
    stat,
    table,
    target,
    text,
    timeseries,
)
from p2es.contracts.influx import ALERTS, ECG, PIPELINE, PPG, VITALS, Measurement

HERE = Path(__file__).resolve().parent
JSON_DIR = HERE / "json"
PROVISIONING_DIR = HERE / "provisioning"

#: printout order of a 12-lead ECG: 3 rows x 4 columns
ECG_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
#: the ECG panels show the 10 s ending this long before "now": a stitched sample is final only
#: after every window covering it (window 8 s, hop 4 s) is reconstructed, ~12 s after it happened
ECG_DELAY = "15s"
ECG_SPAN = "10s"
PRIORITIES = (("high", 3, "red"), ("medium", 2, "orange"), ("low", 1, "yellow"))
NOT_DIAGNOSTIC = (
    "Reconstructed from the wearable's PPG by a model — **not a diagnostic ECG**. "
    "Rhythm (beat timing, rate, regularity) is what it recovers best; morphology "
    "(QRS shape, ST level, QT) only within the reported uncertainty."
)

PATIENT_UID = "p2es-patient"
WARD_UID = "p2es-ward"
PIPELINE_UID = "p2es-pipeline"


# ------------------------------------------------------------------------------- InfluxQL
# Measurement, tag and field names come from the InfluxDB schemas (p2es.contracts.influx): a
# name a schema does not declare fails here, when the dashboards are built.
def _ident(name: str) -> str:
    """An InfluxQL identifier: the name in double quotes."""
    return f'"{name}"'


def _measurement(m: Measurement) -> str:
    return _ident(m.name)


def _field(m: Measurement, name: str) -> str:
    """The quoted field ``name`` of ``m``; ``ValueError`` if ``m`` does not declare it."""
    if name not in m.fields:
        raise ValueError(f"measurement {m.name!r} has no field {name!r}")
    return _ident(name)


def _tag(m: Measurement, name: str) -> str:
    """The quoted tag ``name`` of ``m``; ``ValueError`` if ``m`` does not declare it."""
    if name not in m.tags:
        raise ValueError(f"measurement {m.name!r} has no tag {name!r}")
    return _ident(name)


def _idents(names: Iterable[str]) -> str:
    return ", ".join(_ident(n) for n in names)


def _as(expr: str, alias: str) -> str:
    return f"{expr} AS {_ident(alias)}"


def _of_patient(m: Measurement) -> str:
    """WHERE clause: the dashboard's ``$patient`` within Grafana's time range."""
    return f"{_tag(m, 'patient')} = '$patient' AND $timeFilter"


#: one alert series: GROUP BY "patient", "rule", "priority"
ALERT_SERIES = _idents(ALERTS.tags)
_STATE = _field(ALERTS, "state")
_PRIORITY = _tag(ALERTS, "priority")
_ALERT_PATIENT = _tag(ALERTS, "patient")
#: "state", "value", "message"
_ALERT_FIELDS = _idents(ALERTS.fields)
_SQI = _field(VITALS, "sqi")


def _latest_alerts(extra_where: str = "") -> str:
    """Latest state of every alert series in the time range (one row per patient/rule/priority)."""
    where = "$timeFilter" + (f" AND {extra_where}" if extra_where else "")
    return (
        f"SELECT {_as(f'last({_STATE})', 'state')} FROM {_measurement(ALERTS)} WHERE {where} "
        f"GROUP BY {ALERT_SERIES}"
    )


def _active(priority: str) -> str:
    """WHERE clause over :func:`_latest_alerts`: not resolved, of this priority."""
    return f"{_STATE} != 'resolved' AND {_PRIORITY} = '{priority}'"


def active_count_query(priority: str, column: str) -> str:
    return (
        f"SELECT {_as(f'count({_STATE})', column)} FROM ({_latest_alerts()}) "
        f"WHERE {_active(priority)} GROUP BY {_ALERT_PATIENT}"
    )


def worst_query() -> str:
    """Per patient: 3 if a high-priority alert is active, else 2 for medium, 1 for low."""
    subs = ", ".join(
        f"(SELECT {_as(f'count({_STATE}) * 0 + {rank}', 'sev')} FROM ({_latest_alerts()}) "
        f"WHERE {_active(prio)} GROUP BY {_ALERT_PATIENT})"
        for prio, rank, _ in PRIORITIES
    )
    worst = _as(f"max({_ident('sev')})", "Worst alert")
    return f"SELECT {worst} FROM {subs} GROUP BY {_ALERT_PATIENT}"


def _link_to_patient(field: str) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": field},
        "properties": [
            {
                "id": "links",
                "value": [
                    {
                        "title": "Open patient ${__value.raw}",
                        "url": f"/d/{PATIENT_UID}/patient?var-patient=${{__value.raw}}&${{__url_time_range}}",
                    }
                ],
            }
        ],
    }


def _override(field: str, **props: Any) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": field},
        "properties": [{"id": k, "value": v} for k, v in props.items()],
    }


def _steps(*pairs: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in pairs]}


# ------------------------------------------------------------------------------- ward
def ward_overview() -> dict[str, Any]:
    worst_mappings = [
        {
            "type": "value",
            "options": {
                str(rank): {"text": prio.upper(), "color": color, "index": i}
                for i, (prio, rank, color) in enumerate(PRIORITIES)
            },
        },
        {
            "type": "special",
            "options": {"match": "null", "result": {"text": "none", "color": "green", "index": 3}},
        },
    ]
    targets = [
        target(
            f"SELECT {_as(f'last({_SQI})', 'SQI')}, {_as(_field(VITALS, 'hr_bpm'), 'HR')}, "
            f"{_as(_field(VITALS, 'hr_ppg_bpm'), 'HR (PPG)')}, "
            f"{_as(_field(VITALS, 'uncertainty'), 'Uncertainty')} FROM {_measurement(VITALS)} "
            f"WHERE $timeFilter GROUP BY {_tag(VITALS, 'patient')}",
            "A",
            fmt="table",
        ),
        target(active_count_query("high", "High"), "B", fmt="table"),
        target(active_count_query("medium", "Medium"), "C", fmt="table"),
        target(active_count_query("low", "Low"), "D", fmt="table"),
        target(worst_query(), "E", fmt="table"),
    ]
    transformations = [
        # the alert queries' time column is meaningless (aggregates over subqueries): drop it
        {
            "id": "filterFieldsByName",
            "filter": {"id": "byRefId", "options": "/^[BCDE]$/"},
            "options": {"include": {"pattern": "^(patient|High|Medium|Low|Worst alert)$"}},
        },
        {"id": "joinByField", "options": {"byField": "patient", "mode": "outer"}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {},
                "renameByName": {"patient": "Patient", "Time": "Last data"},
                "indexByName": {
                    "patient": 0,
                    "Worst alert": 1,
                    "HR": 2,
                    "HR (PPG)": 3,
                    "SQI": 4,
                    "Uncertainty": 5,
                    "High": 6,
                    "Medium": 7,
                    "Low": 8,
                    "Time": 9,
                },
            },
        },
    ]
    overrides = [
        _link_to_patient("Patient"),
        _override(
            "Worst alert",
            mappings=worst_mappings,
            thresholds=_steps((None, "green"), (1, "yellow"), (2, "orange"), (3, "red")),
            **{"custom.cellOptions": {"type": "color-background", "mode": "basic", "applyToRow": True}},
        ),
        _override(
            "HR",
            unit="none",
            decimals=0,
            thresholds=_steps((None, "orange"), (50, "text"), (120, "orange")),
            **{"custom.cellOptions": {"type": "color-text"}},
        ),
        _override("HR (PPG)", unit="none", decimals=0),
        _override(
            "SQI",
            decimals=2,
            min=0,
            max=1,
            thresholds=_steps((None, "orange"), (0.5, "text")),
            **{"custom.cellOptions": {"type": "color-text"}},
        ),
        _override("Uncertainty", unit="mvolt", decimals=3),
        _override(
            "High",
            thresholds=_steps((None, "text"), (1, "red")),
            **{"custom.cellOptions": {"type": "color-text"}},
        ),
        _override(
            "Medium",
            thresholds=_steps((None, "text"), (1, "orange")),
            **{"custom.cellOptions": {"type": "color-text"}},
        ),
        _override(
            "Low",
            thresholds=_steps((None, "text"), (1, "yellow")),
            **{"custom.cellOptions": {"type": "color-text"}},
        ),
        _override("Last data", unit="dateTimeFromNow"),
    ]
    panels = [
        text(
            "",
            "**Ward overview.** One row per patient with data in the time range; the row "
            "colour is the patient's worst active alert (red high, orange medium, yellow low). "
            "HR is the rate of the reconstructed lead II, HR (PPG) the wearable's own pulse rate. "
            + NOT_DIAGNOSTIC,
            grid(0, 0, 24, 3),
        ),
        stat(
            "Patients with data",
            [
                target(
                    f"SELECT count({_SQI}) FROM (SELECT {_as(f'last({_SQI})', 'sqi')} "
                    f"FROM {_measurement(VITALS)} "
                    f"WHERE $timeFilter GROUP BY {_tag(VITALS, 'patient')})"
                )
            ],
            grid(0, 3, 6, 4),
            color_mode="none",
        ),
        *[
            stat(
                f"Active {prio} alerts",
                [target(f"SELECT count({_STATE}) FROM ({_latest_alerts()}) WHERE {_active(prio)}")],
                grid(6 + 6 * i, 3, 6, 4),
                thresholds=[(None, "green"), (1, color)],
                mappings=[
                    {"type": "special", "options": {"match": "null", "result": {"text": "0", "index": 0}}}
                ],
            )
            for i, (prio, _, color) in enumerate(PRIORITIES)
        ],
        table(
            "Patients",
            targets,
            grid(0, 7, 24, 14),
            description="Sort by any column (click its header). Click a patient to open the "
            "patient dashboard. Last data = time of the newest vitals point.",
            transformations=transformations,
            overrides=overrides,
            sort_by=[{"displayName": "Worst alert", "desc": True}],
        ),
        table(
            "Active alerts",
            [
                target(
                    f"SELECT {_ALERT_FIELDS} FROM (SELECT {_as(f'last({_STATE})', 'state')}, "
                    f"{_field(ALERTS, 'value')}, {_field(ALERTS, 'message')} FROM {_measurement(ALERTS)} "
                    f"WHERE $timeFilter GROUP BY {ALERT_SERIES}) "
                    f"WHERE {_STATE} != 'resolved' GROUP BY {ALERT_SERIES}",
                    "A",
                    fmt="table",
                )
            ],
            grid(0, 21, 24, 8),
            description="Every alert whose latest state in the time range is not 'resolved'.",
            overrides=[_link_to_patient("patient")],
            sort_by=[{"displayName": "Time", "desc": True}],
        ),
    ]
    return dashboard(
        WARD_UID,
        "p2es — Ward overview",
        panels,
        tags=["p2es"],
        time_from="now-6h",
        refresh="10s",
        description="All patients of the ward: HR, SQI, active alerts, data age.",
        links=[_dash_link("Pipeline health", PIPELINE_UID)],
    )


def _dash_link(title: str, uid: str) -> dict[str, Any]:
    return {
        "title": title,
        "type": "link",
        "url": f"/d/{uid}",
        "icon": "dashboard",
        "keepTime": True,
        "includeVars": False,
        "targetBlank": False,
        "tags": [],
        "asDropdown": False,
        "tooltip": "",
    }


# ------------------------------------------------------------------------------- patient
def _lead_query(lead: str) -> str:
    return f"SELECT {_field(ECG, lead)} FROM {_measurement(ECG)} WHERE {_of_patient(ECG)}"


def _vitals_mean(fields: list[tuple[str, str]]) -> str:
    sel = ", ".join(_as(f"mean({_field(VITALS, f)})", alias) for f, alias in fields)
    return (
        f"SELECT {sel} FROM {_measurement(VITALS)} WHERE {_of_patient(VITALS)} "
        "GROUP BY time($__interval) fill(none)"
    )


def _vitals_last(field: str) -> str:
    return f"SELECT last({_field(VITALS, field)}) FROM {_measurement(VITALS)} WHERE {_of_patient(VITALS)}"


def patient() -> dict[str, Any]:
    ecg_desc = (
        f"Reconstructed lead — not a diagnostic ECG. The {ECG_SPAN} ending {ECG_DELAY} ago "
        "(reconstruction lags real time by about one window). 25 mm/s-like scale: the "
        "y axis is fixed to ±1.5 mV."
    )
    panels: list[dict[str, Any]] = [
        text("", "## $patient — reconstructed 12-lead ECG\n" + NOT_DIAGNOSTIC, grid(0, 0, 12, 4)),
        stat(
            "HR (ECG)",
            [target(_vitals_last("hr_bpm"))],
            grid(12, 0, 3, 4),
            unit="none",
            decimals=0,
            thresholds=[(None, "orange"), (50, "green"), (120, "orange")],
            description="Heart rate of the reconstructed lead II, beats per minute",
        ),
        stat(
            "HR (PPG)",
            [target(_vitals_last("hr_ppg_bpm"))],
            grid(15, 0, 3, 4),
            unit="none",
            decimals=0,
            color_mode="none",
            description="The wearable's own pulse rate, per minute",
        ),
        stat(
            "SQI",
            [target(_vitals_last("sqi"))],
            grid(18, 0, 3, 4),
            decimals=2,
            thresholds=[(None, "orange"), (0.5, "green")],
            description="PPG signal quality 0–1 (below 0.5 the reconstruction is unreliable)",
        ),
        stat(
            "Uncertainty",
            [target(_vitals_last("uncertainty"))],
            grid(21, 0, 3, 4),
            unit="mvolt",
            decimals=3,
            color_mode="none",
            description="Median spread of the K reconstructions, mV: morphology alerts are gated by it",
        ),
    ]
    y = 4
    for r, row in enumerate(ECG_LAYOUT):
        for c, lead in enumerate(row):
            panels.append(
                timeseries(
                    f"{lead} (reconstructed)",
                    [target(_lead_query(lead), alias=lead)],
                    grid(6 * c, y + 5 * r, 6, 5),
                    unit="mvolt",
                    description=ecg_desc,
                    legend=False,
                    time_from=ECG_SPAN,
                    time_shift=ECG_DELAY,
                    soft_min=-1.5,
                    soft_max=1.5,
                )
            )
    y += 15
    panels.append(
        timeseries(
            "Rhythm strip: lead II (reconstructed)",
            [target(_lead_query("II"), alias="II")],
            grid(0, y, 24, 5),
            unit="mvolt",
            description=ecg_desc,
            legend=False,
            time_from=ECG_SPAN,
            time_shift=ECG_DELAY,
            soft_min=-1.5,
            soft_max=1.5,
        )
    )
    y += 5
    panels.append(
        timeseries(
            "PPG (what the model saw: band-passed, 128 Hz)",
            [
                target(
                    f"SELECT {_field(PPG, 'value')} FROM {_measurement(PPG)} WHERE {_of_patient(PPG)}",
                    alias="PPG",
                )
            ],
            grid(0, y, 24, 4),
            description="The wearable's PPG after ingest filtering and resampling, "
            "aligned with the ECG panels above.",
            legend=False,
            time_from=ECG_SPAN,
            time_shift=ECG_DELAY,
        )
    )
    y += 4
    trend = "Per window (8 s every 4 s); mean per interval."
    panels += [
        timeseries(
            "Heart rate",
            [target(_vitals_mean([("hr_bpm", "HR (ECG)"), ("hr_ppg_bpm", "HR (PPG)")]))],
            grid(0, y, 12, 7),
            unit="none",
            description="beats per minute. " + trend,
            thresholds=[(None, "transparent"), (120, "rgba(255,152,48,0.15)")],
        ),
        timeseries(
            "QTc and QRS",
            [target(_vitals_mean([("qtc_ms", "QTc (Fridericia)"), ("qrs_ms", "QRS")]))],
            grid(12, y, 12, 7),
            unit="ms",
            description="Measured on the reconstructed ECG — trust only within the uncertainty. " + trend,
        ),
        timeseries(
            "Signal quality (SQI)",
            [target(_vitals_mean([("sqi", "SQI")]))],
            grid(0, y + 7, 12, 7),
            min_=0,
            max_=1,
            decimals=2,
            description=trend,
            thresholds=[(None, "rgba(255,152,48,0.15)"), (0.5, "transparent")],
        ),
        timeseries(
            "Reconstruction uncertainty",
            [target(_vitals_mean([("uncertainty", "uncertainty")]))],
            grid(12, y + 7, 12, 7),
            unit="mvolt",
            decimals=3,
            description=trend,
        ),
        timeseries(
            "RR irregularity",
            [target(_vitals_mean([("rr_irregularity", "nRMSSD")]))],
            grid(0, y + 14, 12, 7),
            decimals=2,
            description="nRMSSD of lead II RR intervals (high in AF). " + trend,
        ),
        timeseries(
            "ST deviation by territory",
            [
                target(
                    _vitals_mean(
                        [
                            ("st_septal_mv", "septal"),
                            ("st_anterior_mv", "anterior"),
                            ("st_lateral_mv", "lateral"),
                            ("st_inferior_mv", "inferior"),
                        ]
                    )
                )
            ],
            grid(12, y + 14, 12, 7),
            unit="mvolt",
            decimals=2,
            description="Signed ST deviation shared by ≥ 2 leads of a group; morphology from a "
            "reconstruction, not diagnostic. " + trend,
        ),
        table(
            "Alert history",
            [
                target(
                    f"SELECT {_ALERT_FIELDS}, {_tag(ALERTS, 'rule')}, {_PRIORITY} FROM {_measurement(ALERTS)} "
                    f"WHERE {_of_patient(ALERTS)}",
                    "A",
                    fmt="table",
                )
            ],
            grid(0, y + 21, 24, 8),
            sort_by=[{"displayName": "Time", "desc": True}],
            description="Every alert transition of this patient in the time range.",
        ),
    ]
    return dashboard(
        PATIENT_UID,
        "p2es — Patient",
        panels,
        tags=["p2es"],
        time_from="now-30m",
        refresh="5s",
        description="One patient: reconstructed 12-lead ECG, PPG, vitals trends, alerts.",
        variables=[
            query_variable(
                "patient",
                f"SHOW TAG VALUES FROM {_measurement(VITALS)} WITH KEY = {_tag(VITALS, 'patient')}",
                label="Patient",
            )
        ],
        annotations=[
            annotation(
                "Alerts",
                f"SELECT {_field(ALERTS, 'message')}, {_STATE}, {_tag(ALERTS, 'rule')}, {_PRIORITY} "
                f"FROM {_measurement(ALERTS)} WHERE {_of_patient(ALERTS)}",
                text_column="message",
                tags_column="rule,priority,state",
                color="red",
            )
        ],
        links=[_dash_link("Ward overview", WARD_UID)],
    )


# ------------------------------------------------------------------------------- pipeline
_INSTANCE = _tag(PIPELINE, "instance")
#: WHERE clause: the engine instances picked in ``$instance``, within Grafana's time range
_OF_INSTANCE = f"{_INSTANCE} =~ /^$instance$/ AND $timeFilter"


def _pipe(*columns: tuple[str, str, str]) -> str:
    """One series per instance and interval; ``columns``: (aggregate, field, alias), the
    aggregate a format string over the field aggregated, e.g. ``"mean({})"``."""
    sel = ", ".join(_as(agg.format(_field(PIPELINE, f)), alias) for agg, f, alias in columns)
    return (
        f"SELECT {sel} FROM {_measurement(PIPELINE)} WHERE {_OF_INSTANCE} "
        f"GROUP BY time($__interval), {_INSTANCE} fill(none)"
    )


def _pipe_last(field: str) -> str:
    return f"SELECT last({_field(PIPELINE, field)}) FROM {_measurement(PIPELINE)} WHERE {_OF_INSTANCE}"


_RATE = "non_negative_derivative(max({}), 1s)"
_NEW = "non_negative_difference(max({}))"


def pipeline_health() -> dict[str, Any]:
    alias = "$col $tag_instance"
    panels = [
        stat(
            "Windows/s",
            [target(_pipe_last("windows_per_s"))],
            grid(0, 0, 4, 4),
            decimals=2,
            color_mode="none",
        ),
        stat("Active patients", [target(_pipe_last("patients_active"))], grid(4, 0, 4, 4), color_mode="none"),
        stat(
            "Latency p95 (end to end)",
            [target(_pipe_last("latency_e2e_p95_s"))],
            grid(8, 0, 4, 4),
            unit="s",
            decimals=2,
            thresholds=[(None, "green"), (5, "orange"), (10, "red")],
        ),
        stat(
            "Spool",
            [target(_pipe_last("spool_bytes"))],
            grid(12, 0, 4, 4),
            unit="decbytes",
            thresholds=[(None, "green"), (1, "orange")],
            description="Points kept on disk while InfluxDB is unreachable",
        ),
        stat(
            "InfluxDB down",
            [target(_pipe_last("influx_down"))],
            grid(16, 0, 4, 4),
            thresholds=[(None, "green"), (1, "red")],
            mappings=[
                {
                    "type": "value",
                    "options": {"0": {"text": "no", "index": 0}, "1": {"text": "DOWN", "index": 1}},
                }
            ],
        ),
        stat(
            "Dead letters (total)",
            [target(_pipe_last("deadletters_total"))],
            grid(20, 0, 4, 4),
            thresholds=[(None, "green"), (1, "orange")],
        ),
        timeseries(
            "Throughput",
            [
                target(_pipe(("mean({})", "windows_per_s", "windows/s")), "A", alias=alias),
                target(_pipe((_RATE, "messages_in_total", "MQTT messages/s")), "B", alias=alias),
                target(_pipe((_RATE, "points_written_total", "points written/s")), "C", alias=alias),
            ],
            grid(0, 4, 12, 8),
            unit="none",
            description="Windows reconstructed, messages received and InfluxDB points written per second",
        ),
        timeseries(
            "Latency",
            [
                target(
                    _pipe(
                        ("mean({})", "latency_e2e_p50_s", "e2e p50"),
                        ("mean({})", "latency_e2e_p95_s", "e2e p95"),
                        ("mean({})", "latency_compute_p50_s", "compute p50"),
                        ("mean({})", "latency_queue_p50_s", "queue p50"),
                    ),
                    alias=alias,
                )
            ],
            grid(12, 4, 12, 8),
            unit="s",
            description="From a window's last sample arriving to its stitched ECG written",
        ),
        timeseries(
            "Queue depth",
            [
                target(
                    _pipe(("max({})", "queue_ingest", "ingest"), ("max({})", "queue_batcher", "batcher")),
                    alias=alias,
                )
            ],
            grid(0, 12, 8, 7),
            unit="none",
        ),
        timeseries(
            "Batch size",
            [target(_pipe(("mean({})", "batch_size_mean", "mean batch")), alias=alias)],
            grid(8, 12, 8, 7),
            unit="none",
            description="Windows per model call (micro-batcher)",
        ),
        timeseries(
            "Active patients",
            [target(_pipe(("max({})", "patients_active", "patients")), alias=alias)],
            grid(16, 12, 8, 7),
            unit="none",
        ),
        timeseries(
            "Spool (InfluxDB outage buffer)",
            [
                target(
                    _pipe(
                        ("max({})", "spool_bytes", "bytes"),
                        ("max({})", "spool_batches", "batches"),
                        ("max({})", "influx_down", "influx down"),
                    ),
                    alias=alias,
                )
            ],
            grid(0, 19, 12, 7),
            unit="none",
        ),
        timeseries(
            "Dead letters and drops",
            [
                target(
                    _pipe(
                        (_NEW, "deadletters_total", "MQTT dead letters"),
                        (_NEW, "sink_deadletter_batches_total", "sink dead-letter batches"),
                        (_NEW, "windows_dropped_total", "windows dropped"),
                        (_NEW, "errors_total", "errors"),
                    ),
                    alias=alias,
                )
            ],
            grid(12, 19, 12, 7),
            unit="none",
            draw="bars",
            description="New per interval: unusable MQTT messages, batches InfluxDB rejected for "
            "good, windows dropped by back-pressure, per-patient errors",
        ),
    ]
    return dashboard(
        PIPELINE_UID,
        "p2es — Pipeline health",
        panels,
        tags=["p2es"],
        time_from="now-1h",
        refresh="10s",
        description="The live engine: throughput, latency, queues, spool, dead letters.",
        variables=[
            query_variable(
                "instance",
                f"SHOW TAG VALUES FROM {_measurement(PIPELINE)} WITH KEY = {_INSTANCE}",
                label="Engine instance",
                multi=True,
                include_all=True,
            )
        ],
        links=[_dash_link("Ward overview", WARD_UID)],
    )


# ------------------------------------------------------------------------------- files
DASHBOARDS = {"ward-overview": ward_overview, "patient": patient, "pipeline-health": pipeline_health}


def all_dashboards() -> dict[str, dict[str, Any]]:
    """File stem -> dashboard JSON model."""
    return {name: fn() for name, fn in DASHBOARDS.items()}


def dashboard_text(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


DATASOURCE_YAML = f"""\
# Grafana data source for p2es: InfluxDB queried with InfluxQL (works with InfluxDB 1.8+,
# 2.x through a DBRP mapping of database "p2es" to the bucket, and 3.x).
# Grafana expands $VARIABLES from its environment when it reads this file.
apiVersion: 1

datasources:
  - name: p2es InfluxDB
    uid: {DATASOURCE_UID}
    type: influxdb
    access: proxy
    url: ${{P2ES_INFLUX_URL}}
    isDefault: true
    editable: false
    jsonData:
      version: InfluxQL
      dbName: ${{P2ES_INFLUX_DB}}
      httpMode: POST
      timeInterval: 4s
      # InfluxDB 2.x/3.x authenticate InfluxQL with "Authorization: Token <token>"
      httpHeaderName1: Authorization
    secureJsonData:
      httpHeaderValue1: Token ${{P2ES_INFLUX_TOKEN}}
"""

DASHBOARDS_YAML = """\
# Grafana dashboard provider: loads the p2es dashboards (JSON files) into folder "p2es".
apiVersion: 1

providers:
  - name: p2es
    orgId: 1
    folder: p2es
    folderUid: p2es
    type: file
    disableDeletion: false
    allowUiUpdates: false
    updateIntervalSeconds: 30
    options:
      path: /var/lib/grafana/dashboards/p2es
      foldersFromFilesStructure: false
"""


def provisioning_files() -> dict[str, str]:
    """Relative path -> text of Grafana's provisioning files."""
    return {"datasources/p2es.yaml": DATASOURCE_YAML, "dashboards/p2es.yaml": DASHBOARDS_YAML}


def export(out: Path | str) -> list[Path]:
    """Write ``json/<name>.json`` and ``provisioning/...`` under ``out``; returns the paths."""
    out = Path(out)
    written = []
    for name, d in all_dashboards().items():
        p = out / "json" / f"{name}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(dashboard_text(d), encoding="utf-8")
        written.append(p)
    for rel, body in provisioning_files().items():
        p = out / "provisioning" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body, encoding="utf-8")
        written.append(p)
    return written


if __name__ == "__main__":  # pragma: no cover - regenerates the committed files
    for path in export(HERE):
        print(path.relative_to(HERE.parent))
