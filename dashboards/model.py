"""Small builders for the Grafana dashboard JSON model (schemaVersion 39, Grafana 10.4 / 11).

Only what p2es's dashboards use: time series, stat, table and text panels with raw InfluxQL
targets against one InfluxDB data source in InfluxQL mode, query template variables and
InfluxQL annotations.  Every builder returns plain dicts, so a dashboard is JSON as soon as it
is built; panel ids are given by :func:`dashboard` in layout order.
"""

from __future__ import annotations

import copy
from typing import Any

#: uid of the provisioned InfluxDB data source every panel points at
DATASOURCE_UID = "p2es-influxdb"
DATASOURCE_TYPE = "influxdb"
SCHEMA_VERSION = 39
GRID_COLUMNS = 24


def ds(uid: str = DATASOURCE_UID) -> dict[str, str]:
    """A data-source reference, as panels, targets, variables and annotations carry it."""
    return {"type": DATASOURCE_TYPE, "uid": uid}


def target(
    query: str, ref: str = "A", *, fmt: str = "time_series", alias: str | None = None
) -> dict[str, Any]:
    """A raw InfluxQL query (``rawQuery: true``); ``fmt`` is ``time_series`` or ``table``."""
    t: dict[str, Any] = {
        "refId": ref,
        "datasource": ds(),
        "query": query,
        "rawQuery": True,
        "resultFormat": fmt,
    }
    if alias:
        t["alias"] = alias
    return t


def grid(x: int, y: int, w: int, h: int) -> dict[str, int]:
    if not (0 <= x and w > 0 and x + w <= GRID_COLUMNS and h > 0 and y >= 0):
        raise ValueError(f"gridPos x={x} w={w} does not fit {GRID_COLUMNS} columns")
    return {"x": x, "y": y, "w": w, "h": h}


def _field_config(
    unit: str | None = None,
    *,
    decimals: int | None = None,
    min_: float | None = None,
    max_: float | None = None,
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    custom: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    color: dict[str, Any] | None = None,
) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if unit:
        d["unit"] = unit
    if decimals is not None:
        d["decimals"] = decimals
    if min_ is not None:
        d["min"] = min_
    if max_ is not None:
        d["max"] = max_
    steps = thresholds or [(None, "green")]
    d["thresholds"] = {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}
    d["color"] = color or {"mode": "thresholds" if thresholds else "palette-classic"}
    if mappings:
        d["mappings"] = mappings
    if custom:
        d["custom"] = custom
    return {"defaults": d, "overrides": overrides or []}


def timeseries(
    title: str,
    targets: list[dict[str, Any]],
    pos: dict[str, Any],
    *,
    unit: str | None = None,
    description: str = "",
    min_: float | None = None,
    max_: float | None = None,
    decimals: int | None = None,
    time_from: str | None = None,
    time_shift: str | None = None,
    interval: str | None = None,
    draw: str = "line",
    line_width: int = 1,
    legend: bool = True,
    thresholds: list[tuple[float | None, str]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    soft_min: float | None = None,
    soft_max: float | None = None,
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": draw,
        "lineWidth": line_width,
        "fillOpacity": 0,
        "showPoints": "never",
        "spanNulls": True,
        "axisPlacement": "auto",
    }
    if soft_min is not None:
        custom["axisSoftMin"] = soft_min
    if soft_max is not None:
        custom["axisSoftMax"] = soft_max
    if thresholds:
        custom["thresholdsStyle"] = {"mode": "line+area"}
    p: dict[str, Any] = {
        "type": "timeseries",
        "title": title,
        "description": description,
        "gridPos": pos,
        "datasource": ds(),
        "targets": targets,
        "fieldConfig": _field_config(
            unit,
            decimals=decimals,
            min_=min_,
            max_=max_,
            thresholds=thresholds,
            custom=custom,
            overrides=overrides,
            color={"mode": "palette-classic"},
        ),
        "options": {
            "legend": {"showLegend": legend, "displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
    }
    if time_from:
        p["timeFrom"] = time_from
    if time_shift:
        p["timeShift"] = time_shift
    if interval:
        p["interval"] = interval
    return p


def stat(
    title: str,
    targets: list[dict[str, Any]],
    pos: dict[str, Any],
    *,
    unit: str | None = None,
    description: str = "",
    decimals: int | None = None,
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    color_mode: str = "background",
    reducer: str = "lastNotNull",
) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "gridPos": pos,
        "datasource": ds(),
        "targets": targets,
        "fieldConfig": _field_config(unit, decimals=decimals, thresholds=thresholds, mappings=mappings),
        "options": {
            "reduceOptions": {"calcs": [reducer], "fields": "", "values": False},
            "colorMode": color_mode,
            "graphMode": "area",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
        },
    }


def table(
    title: str,
    targets: list[dict[str, Any]],
    pos: dict[str, Any],
    *,
    description: str = "",
    transformations: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    sort_by: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "gridPos": pos,
        "datasource": ds(),
        "targets": targets,
        "fieldConfig": _field_config(
            custom={"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True}, overrides=overrides
        ),
        "options": {
            "showHeader": True,
            "cellHeight": "md",
            "sortBy": sort_by or [],
            "footer": {"show": False, "reducer": ["sum"], "fields": ""},
        },
        "transformations": transformations or [],
    }


def text(title: str, content: str, pos: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "text",
        "title": title,
        "gridPos": pos,
        "options": {"mode": "markdown", "content": content},
    }


def query_variable(
    name: str, query: str, *, label: str | None = None, multi: bool = False, include_all: bool = False
) -> dict[str, Any]:
    """A ``query`` template variable, refreshed when the time range changes."""
    return {
        "type": "query",
        "name": name,
        "label": label or name,
        "datasource": ds(),
        "query": query,
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "regex": "",
        "multi": multi,
        "includeAll": include_all,
        "current": {},
        "options": [],
        "hide": 0,
        "skipUrlSync": False,
    }


def annotation(name: str, query: str, *, text_column: str, tags_column: str, color: str) -> dict[str, Any]:
    """An InfluxQL annotation query (Grafana fills ``$timeFilter``)."""
    return {
        "name": name,
        "datasource": ds(),
        "enable": True,
        "hide": False,
        "iconColor": color,
        "query": query,
        "textColumn": text_column,
        "tagsColumn": tags_column,
        "titleColumn": "",
    }


_BUILTIN_ANNOTATION = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


def dashboard(
    uid: str,
    title: str,
    panels: list[dict[str, Any]],
    *,
    description: str,
    tags: list[str],
    time_from: str = "now-1h",
    refresh: str = "10s",
    variables: list[dict[str, Any]] | None = None,
    annotations: list[dict[str, Any]] | None = None,
    links: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    panels = copy.deepcopy(panels)
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": tags,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "liveNow": False,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "fiscalYearStartMonth": 0,
        "weekStart": "",
        "templating": {"list": variables or []},
        "annotations": {"list": [dict(_BUILTIN_ANNOTATION)] + (annotations or [])},
        "links": links or [],
        "panels": panels,
    }


def with_datasource_uid(obj: Any, uid: str) -> Any:
    """A deep copy of a dashboard with every InfluxDB data-source reference pointing at ``uid``."""
    if isinstance(obj, dict):
        out = {k: with_datasource_uid(v, uid) for k, v in obj.items()}
        if out.get("type") == DATASOURCE_TYPE and "uid" in out and set(out) == {"type", "uid"}:
            out["uid"] = uid
        return out
    if isinstance(obj, list):
        return [with_datasource_uid(v, uid) for v in obj]
    return obj
