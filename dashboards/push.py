"""Upload the p2es dashboards to a running Grafana through its HTTP API (``grafana-client``).

Each dashboard is saved with ``POST /api/dashboards/db`` (``overwrite: true``, into the folder
given by uid), after the folder is looked up by title or created.  Every failure is a
:class:`~p2es.errors.P2esError` with one line: unreachable server, bad URL, rejected token, a
dashboard that fails :func:`dashboards.validate.problems`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlparse

from dashboards.build import all_dashboards
from dashboards.model import DATASOURCE_UID, with_datasource_uid
from dashboards.validate import problems
from p2es.errors import P2esError


@dataclass
class Pushed:
    uid: str
    title: str
    url: str
    version: int | None


def _check_url(url: str) -> str:
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise P2esError(f"--grafana must be http(s)://HOST[:PORT][/PATH], got {url!r}")
    try:
        u.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        raise P2esError(f"--grafana has a bad port: {url!r}") from None
    return url.rstrip("/")


def _folder_uid(title: str) -> str:
    uid = re.sub(r"[^A-Za-z0-9_-]+", "-", title.strip().lower()).strip("-")[:40]
    return uid or "p2es"


def _grafana_error(url: str, e: Exception) -> P2esError:
    from grafana_client.client import (  # lazy: heavy dependency, loaded only to push
        GrafanaClientError,
        GrafanaServerError,
        GrafanaTimeoutError,
        GrafanaUnauthorizedError,
    )

    if isinstance(e, GrafanaUnauthorizedError):
        return P2esError(
            f"Grafana at {url} rejected the token (401 Unauthorized): check --token / GRAFANA_TOKEN"
        )
    if isinstance(e, GrafanaClientError) and e.status_code == 403:
        return P2esError(
            f"Grafana at {url} refused (403 Forbidden): the token needs the Editor role or dashboards:write"
        )
    if isinstance(e, GrafanaTimeoutError):
        return P2esError(f"Grafana at {url} did not answer in time")
    if isinstance(e, (GrafanaClientError, GrafanaServerError)):
        msg = str(getattr(e, "message", "") or e).splitlines()[0][:200]
        return P2esError(f"Grafana at {url} answered HTTP {e.status_code}: {msg}")
    full = str(e)
    reason = full.splitlines()[0][:200] if full else type(e).__name__
    if "refused" in full.lower():
        reason = "connection refused"
    elif "name or service not known" in full.lower() or "nodename nor servname" in full.lower():
        reason = "host name not found"
    elif "timed out" in full.lower():
        reason = "timed out"
    return P2esError(f"cannot reach Grafana at {url}: {reason}")


def push(
    url: str,
    token: str | None,
    *,
    folder: str = "p2es",
    datasource_uid: str = DATASOURCE_UID,
    timeout: float = 10.0,
) -> list[Pushed]:
    """Create/overwrite every p2es dashboard in ``folder`` (by title; created if missing)."""
    import niquests  # lazy: grafana-client's HTTP library, loaded only to push
    from grafana_client.api import GrafanaApi  # lazy: heavy dependency, loaded only to push
    from grafana_client.client import GrafanaException  # lazy: heavy dependency, loaded only to push

    url = _check_url(url)
    if not token:
        raise P2esError(
            "no Grafana token: pass --token or set GRAFANA_TOKEN "
            "(a service-account token with the Editor role)"
        )
    dashboards = {}
    for name, d in all_dashboards().items():
        d = with_datasource_uid(d, datasource_uid)
        errs = problems(d, datasource_uid)
        if errs:
            raise P2esError(f"dashboard {name} is invalid: {errs[0]}")
        dashboards[name] = d
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    out = []
    try:
        folder_uid = None
        if folder:
            existing = api.folder.get_all_folders() or []
            match = [f for f in existing if f.get("title") == folder]
            if match:
                folder_uid = match[0]["uid"]
            else:
                folder_uid = api.folder.create_folder(folder, uid=_folder_uid(folder))["uid"]
        for d in dashboards.values():
            body = {"dashboard": {**d, "id": None}, "overwrite": True, "message": "p2es dashboards push"}
            if folder_uid:
                body["folderUid"] = folder_uid
            r = api.dashboard.update_dashboard(body) or {}
            out.append(Pushed(d["uid"], d["title"], str(r.get("url", "")), r.get("version")))
    except (GrafanaException, niquests.exceptions.RequestException, OSError) as e:
        raise _grafana_error(url, e) from None
    return out
