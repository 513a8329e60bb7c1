"""Structural checks of a dashboard JSON model: what Grafana needs to load it and what p2es's
dashboards promise (InfluxQL raw targets on the provisioned data source, variables defined).

:func:`problems` returns a list of readable problems (empty = fine); ``p2es dashboards push`` and
``export`` refuse a dashboard with problems.
"""

from __future__ import annotations

import re
from typing import Any

from dashboards.model import DATASOURCE_TYPE, GRID_COLUMNS

#: variables Grafana itself provides to InfluxQL queries
BUILTIN_VARIABLES = frozenset(
    {
        "timeFilter",
        "__interval",
        "__interval_ms",
        "interval",
        "col",
        "tag",
        "__value",
        "__url_time_range",
        "__from",
        "__to",
        "__dashboard",
        "__org",
        "__user",
        "__timeFilter",
        "m",
        "measurement",
    }
)
_VAR_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def variables_used(text: str) -> set[str]:
    """Names of ``$var`` / ``${var}`` references in a query (``$tag_x`` counts as ``tag``)."""
    names = set()
    for m in _VAR_RE.finditer(text):
        name = m.group(1)
        if name.startswith("tag_"):
            name = "tag"
        names.add(name)
    return names


def iter_queries(d: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, where, object) for every panel target, template variable and annotation query."""
    out = []
    for p in d.get("panels", []):
        for t in p.get("targets", []) or []:
            out.append(("target", f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t))
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            out.append(("variable", f"variable ${v.get('name')}", v))
    for a in d.get("annotations", {}).get("list", []):
        if not a.get("builtIn"):
            out.append(("annotation", f"annotation {a.get('name')!r}", a))
    return out


def problems(d: Any, datasource_uid: str) -> list[str]:
    if not isinstance(d, dict):
        return ["a dashboard must be a JSON object"]
    errs: list[str] = []
    for key, typ in (
        ("uid", str),
        ("title", str),
        ("schemaVersion", int),
        ("panels", list),
        ("templating", dict),
        ("annotations", dict),
        ("time", dict),
    ):
        if not isinstance(d.get(key), typ):
            errs.append(f"missing or wrong type: {key}")
    if errs:
        return errs
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]):
        errs.append(f"uid {d['uid']!r} is not 1-40 letters, digits, '-' or '_'")
    ids = [p.get("id") for p in d["panels"]]
    if len(set(ids)) != len(ids) or not all(isinstance(i, int) for i in ids):
        errs.append(f"panel ids must be unique integers, got {ids}")
    defined = {v.get("name") for v in d["templating"].get("list", [])}
    for p in d["panels"]:
        name = f"panel {p.get('id')} {p.get('title')!r}"
        if not p.get("type"):
            errs.append(f"{name}: no type")
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "xywh"):
            errs.append(f"{name}: gridPos needs integer x, y, w, h")
        elif g["x"] < 0 or g["y"] < 0 or g["w"] < 1 or g["h"] < 1 or g["x"] + g["w"] > GRID_COLUMNS:
            errs.append(f"{name}: gridPos {g} outside the {GRID_COLUMNS}-column grid")
        if p.get("type") != "text":
            if not p.get("targets"):
                errs.append(f"{name}: no targets")
            if (p.get("datasource") or {}).get("uid") != datasource_uid:
                errs.append(f"{name}: datasource is not {datasource_uid!r}")
        refs = [t.get("refId") for t in p.get("targets", []) or []]
        if len(set(refs)) != len(refs):
            errs.append(f"{name}: duplicate refIds {refs}")
    for kind, where, obj in iter_queries(d):
        dsr = obj.get("datasource") or {}
        if dsr.get("type") != DATASOURCE_TYPE or dsr.get("uid") != datasource_uid:
            errs.append(f"{where}: datasource {dsr} is not the provisioned {datasource_uid!r}")
        q = obj.get("query")
        if not isinstance(q, str) or not q.strip():
            errs.append(f"{where}: no InfluxQL query")
            continue
        if kind == "target":
            if not obj.get("refId"):
                errs.append(f"{where}: no refId")
            if obj.get("rawQuery") is not True:
                errs.append(f"{where}: rawQuery must be true (the query is raw InfluxQL)")
            if obj.get("resultFormat") not in ("time_series", "table", "logs"):
                errs.append(f"{where}: resultFormat {obj.get('resultFormat')!r}")
        for var in variables_used(q) - BUILTIN_VARIABLES - defined:
            errs.append(f"{where}: uses ${var}, which is not a template variable")
    return errs
