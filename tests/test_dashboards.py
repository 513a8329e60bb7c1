"""Dashboards as code: committed JSON = generated JSON, Grafana's required fields, provisioning
files, ``p2es dashboards export`` and ``p2es dashboards push``.

No Grafana server can run here: ``push`` is tested against a small local HTTP server that plays
Grafana's API and records the requests grafana-client sends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from dashboards.build import JSON_DIR, PROVISIONING_DIR, all_dashboards, dashboard_text, provisioning_files
from dashboards.model import DATASOURCE_UID, GRID_COLUMNS, with_datasource_uid
from dashboards.validate import iter_queries, problems

REPO = Path(__file__).resolve().parent.parent


def p2es(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `p2es` command in a child process (GRAFANA_TOKEN only as given)."""
    import os

    e = {k: v for k, v in os.environ.items() if k != "GRAFANA_TOKEN"}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "p2es.cli", *args], capture_output=True, text=True, cwd=REPO, env=e, timeout=60
    )


def p2es_inproc(capsys, monkeypatch, *args: str) -> subprocess.CompletedProcess:
    """`p2es.cli.main` in this process (same code path, without a second torch import)."""
    from p2es.cli import main

    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    monkeypatch.delenv("P2ES_DEBUG", raising=False)
    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


# ------------------------------------------------------------------------------ the JSON
def test_committed_files_equal_generated():
    """`python -m dashboards.build` was run after the last change to the code."""
    for name, d in all_dashboards().items():
        path = JSON_DIR / f"{name}.json"
        assert path.read_text(encoding="utf-8") == dashboard_text(d), (
            f"{path} is stale: run `.venv/bin/python -m dashboards.build`"
        )
    for rel, body in provisioning_files().items():
        assert (PROVISIONING_DIR / rel).read_text(encoding="utf-8") == body, rel
    assert sorted(p.name for p in JSON_DIR.glob("*.json")) == sorted(f"{n}.json" for n in all_dashboards())


@pytest.mark.parametrize("name", ["ward-overview", "patient", "pipeline-health"])
def test_dashboard_has_what_grafana_needs(name):
    d = json.loads((JSON_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert problems(d, DATASOURCE_UID) == []
    assert d["schemaVersion"] >= 36  # data-source refs as {type, uid} objects
    assert d["uid"].startswith("p2es-") and d["title"].startswith("p2es")
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= GRID_COLUMNS and min(g.values()) >= 0
    # no two panels overlap on the grid
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
    for kind, where, obj in iter_queries(d):
        assert obj["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}, where
        if kind == "target":
            assert obj["rawQuery"] is True and obj["refId"] and obj["query"], where


def test_validator_catches_broken_dashboards():
    d = all_dashboards()["patient"]
    assert problems(d, DATASOURCE_UID) == []
    bad = json.loads(json.dumps(d))
    bad["panels"][1]["id"] = bad["panels"][0]["id"]
    bad["panels"][2]["gridPos"]["x"] = 22  # w=3 at x=22 leaves the grid
    bad["panels"][3]["targets"][0]["query"] += " AND host = '$host'"
    bad["panels"][4]["targets"][0]["rawQuery"] = False
    bad["annotations"]["list"][1]["datasource"]["uid"] = "other"
    errs = "\n".join(problems(bad, DATASOURCE_UID))
    for needle in (
        "panel ids must be unique",
        "outside the 24-column grid",
        "uses $host",
        "rawQuery must be true",
        "annotation 'Alerts': datasource",
    ):
        assert needle in errs, errs
    assert problems({"title": "x"}, DATASOURCE_UID)
    assert problems(with_datasource_uid(d, "elsewhere"), "elsewhere") == []


def test_patient_dashboard_content():
    d = all_dashboards()["patient"]
    titles = [p["title"] for p in d["panels"]]
    grid = [
        [p for p in d["panels"] if p["title"] == f"{lead} (reconstructed)"][0]["gridPos"]
        for lead in ("I", "aVR", "V1", "V4", "II", "aVL", "V2", "V5", "III", "aVF", "V3", "V6")
    ]
    assert [(g["x"], g["y"]) for g in grid] == [(6 * c, 4 + 5 * r) for r in range(3) for c in range(4)]
    assert "Rhythm strip: lead II (reconstructed)" in titles
    for p in d["panels"]:
        if 'FROM "ecg"' in json.dumps(p.get("targets", [])):
            assert "not a diagnostic ECG" in p["description"] and p["timeFrom"] == "10s"
    assert "not a diagnostic ECG" in d["panels"][0]["options"]["content"]
    var = d["templating"]["list"][0]
    assert var["name"] == "patient" and var["query"] == 'SHOW TAG VALUES FROM "vitals" WITH KEY = "patient"'
    ann = [a for a in d["annotations"]["list"] if not a.get("builtIn")]
    assert len(ann) == 1 and 'FROM "alerts"' in ann[0]["query"] and "$patient" in ann[0]["query"]


def test_provisioning_files():
    dsf = yaml.safe_load(provisioning_files()["datasources/p2es.yaml"])
    (src,) = dsf["datasources"]
    assert src["uid"] == DATASOURCE_UID and src["type"] == "influxdb"
    assert src["jsonData"]["version"] == "InfluxQL"
    assert src["jsonData"]["httpHeaderName1"] == "Authorization"
    assert (
        src["secureJsonData"]["httpHeaderValue1"] == "Token ${P2ES_INFLUX_TOKEN}"
    )  # from env, not a literal
    prov = yaml.safe_load(provisioning_files()["dashboards/p2es.yaml"])
    (pr,) = prov["providers"]
    assert pr["type"] == "file" and pr["options"]["path"] == "/var/lib/grafana/dashboards/p2es"


def test_export_cli(tmp_path, capsys, monkeypatch):
    r = p2es_inproc(capsys, monkeypatch, "dashboards", "export", "--out", str(tmp_path / "x"))
    assert r.returncode == 0, r.stderr
    for name in all_dashboards():
        assert (tmp_path / "x" / "json" / f"{name}.json").read_text() == (
            JSON_DIR / f"{name}.json"
        ).read_text()
    assert (tmp_path / "x" / "provisioning" / "datasources" / "p2es.yaml").exists()
    (tmp_path / "file").write_text("")
    r = p2es_inproc(capsys, monkeypatch, "dashboards", "export", "--out", str(tmp_path / "file"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a directory" in r.stderr


# ------------------------------------------------------------------------------ push
class FakeGrafana:
    """Grafana's HTTP API, just the endpoints `push` uses; records every request."""

    def __init__(self, token: str = "glsa_test", folders: list[dict] | None = None):
        self.token = token
        self.folders = list(folders or [])
        self.requests: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _reply(self, code: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                outer.requests.append(
                    {
                        "method": method,
                        "path": self.path,
                        "body": body,
                        "auth": self.headers.get("Authorization"),
                    }
                )
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    return self._reply(401, {"message": "invalid API key"})
                if method == "GET" and self.path.startswith("/api/folders"):
                    return self._reply(200, outer.folders)
                if method == "POST" and self.path == "/api/folders":
                    f = {"id": len(outer.folders) + 1, "uid": body.get("uid", "gen"), "title": body["title"]}
                    outer.folders.append(f)
                    return self._reply(200, f)
                if method == "POST" and self.path == "/api/dashboards/db":
                    uid = body["dashboard"]["uid"]
                    return self._reply(
                        200, {"id": 1, "uid": uid, "status": "success", "version": 1, "url": f"/d/{uid}/x"}
                    )
                return self._reply(404, {"message": "not found"})

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_push_uploads_every_dashboard_into_a_new_folder():
    with FakeGrafana() as g:
        r = p2es(
            "dashboards",
            "push",
            "--grafana",
            g.url,
            "--folder",
            "Ward 7",
            "--datasource-uid",
            "my-influx",
            env={"GRAFANA_TOKEN": "glsa_test"},
        )
    assert r.returncode == 0, r.stderr
    assert all(q["auth"] == "Bearer glsa_test" for q in g.requests)
    assert [(q["method"], q["path"]) for q in g.requests[:2]] == [
        ("GET", "/api/folders"),
        ("POST", "/api/folders"),
    ]
    assert g.requests[1]["body"] == {"title": "Ward 7", "uid": "ward-7"}
    uploads = [q["body"] for q in g.requests if q["path"] == "/api/dashboards/db"]
    assert [u["dashboard"]["uid"] for u in uploads] == [d["uid"] for d in all_dashboards().values()]
    for u in uploads:
        assert u["overwrite"] is True and u["folderUid"] == "ward-7" and u["dashboard"]["id"] is None
        text = json.dumps(u["dashboard"])
        assert '"uid": "my-influx"' in text and DATASOURCE_UID not in text  # --datasource-uid applied
        assert problems(u["dashboard"], "my-influx") == []
    assert r.stdout.count("pushed p2es-") == 3


def test_push_reuses_an_existing_folder_and_takes_token_flag(capsys, monkeypatch):
    with FakeGrafana(token="t0k", folders=[{"id": 3, "uid": "abc", "title": "p2es"}]) as g:
        r = p2es_inproc(capsys, monkeypatch, "dashboards", "push", "--grafana", g.url + "/", "--token", "t0k")
    assert r.returncode == 0, r.stderr
    assert not [q for q in g.requests if q["path"] == "/api/folders" and q["method"] == "POST"]
    uploads = [q["body"] for q in g.requests if q["path"] == "/api/dashboards/db"]
    assert len(uploads) == 3 and {u["folderUid"] for u in uploads} == {"abc"}


def test_push_errors_are_one_line(capsys, monkeypatch):
    with FakeGrafana(token="right") as g:
        r = p2es_inproc(capsys, monkeypatch, "dashboards", "push", "--grafana", g.url, "--token", "wrong")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "rejected the token (401" in r.stderr and "Traceback" not in r.stderr

    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = p2es_inproc(
        capsys, monkeypatch, "dashboards", "push", "--grafana", f"http://127.0.0.1:{port}", "--token", "x"
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("p2es: error: cannot reach Grafana") and "connection refused" in r.stderr

    for url in ("grafana.local:3000", "ftp://x", "http://:3000", "http://h:port"):
        r = p2es_inproc(capsys, monkeypatch, "dashboards", "push", "--grafana", url, "--token", "x")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--grafana" in r.stderr, (url, r.stderr)
    r = p2es_inproc(capsys, monkeypatch, "dashboards", "push", "--grafana", "http://127.0.0.1:3000")
    assert r.returncode == 2 and "GRAFANA_TOKEN" in r.stderr and r.stderr.count("\n") == 1
