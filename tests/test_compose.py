"""compose.yaml: valid against the Compose Specification JSON schema, plus the stack's own rules
(health checks, restart policies, named volumes, no secret literals, mounted files exist, the
p2es configs parse as the services' config models, the image pins torch like pyproject).

No Docker engine exists here: the stack is checked, never started.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def _validator():
    from jsonschema import Draft201909Validator

    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/schema")
    Draft201909Validator.check_schema(schema)
    return Draft201909Validator(schema)


def test_schema_is_the_vendored_compose_spec():
    import hashlib

    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == (
        "56bab44c85c0ce8affb74474950293f37d510673283a243bcd7eeadb900fa35c"
    )
    assert (
        (REPO / "tests" / "data" / "compose-spec.LICENSE").read_text().lstrip().startswith("Apache License")
    )


def test_compose_file_matches_the_compose_specification(compose):
    errors = sorted(_validator().iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_check_can_fail(compose):
    """The validator really rejects what the specification does not allow."""
    v = _validator()
    bad = json.loads(json.dumps(compose))
    bad["services"]["engine"]["ports"] = "9464"  # must be a list
    bad["services"]["grafana"]["healthcheck"]["retries"] = "five"
    bad["services"]["mosquitto"]["unknown_key"] = 1
    assert len(list(v.iter_errors(bad))) >= 3


def _services(compose):
    return compose["services"].items()


def test_every_service_has_healthcheck_restart_and_image(compose):
    default = {n for n, s in _services(compose) if not s.get("profiles")}
    assert default == {"mosquitto", "influxdb", "grafana", "engine", "alerts"}  # the stack unchanged
    assert set(compose["services"]) - default == SCALEOUT
    for name, s in _services(compose):
        hc = s.get("healthcheck") or {}
        assert hc.get("test") and not hc.get("disable"), name
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), name
        assert s.get("restart") in ("always", "unless-stopped", "on-failure"), name
        assert s.get("image"), name
    # whoever waits for a service to be healthy waits for one that has a health check
    for name, s in _services(compose):
        for dep, cond in (s.get("depends_on") or {}).items():
            assert dep in compose["services"] and cond["condition"] == "service_healthy", (name, dep)


def test_volumes_are_named_or_existing_repo_files(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, s in _services(compose):
        for v in s.get("volumes", []):
            if isinstance(v, dict) and v.get("type") == "volume" and "source" not in v:
                assert name == "engine-bus", f"{name}: anonymous volume"  # one spool per replica
                continue
            src = v.split(":")[0] if isinstance(v, str) else v["source"]
            if src.startswith(("./", "../", "/")):
                assert src.startswith("./"), f"{name}: absolute or outside bind mount {src}"
                assert (REPO / src).exists(), f"{name}: mounts {src}, which is not in the repository"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"
                used.add(src)
    assert used == declared  # no stray declarations
    # data directories are volumes, not bind mounts
    mounts = {
        (n, v.split(":")[1] if isinstance(v, str) else v["target"])
        for n, s in _services(compose)
        for v in s.get("volumes", [])
    }
    for need in (
        ("influxdb", "/var/lib/influxdb2"),
        ("grafana", "/var/lib/grafana"),
        ("mosquitto", "/mosquitto/data"),
        ("engine", "/var/lib/p2es/spool"),
        ("alerts", "/var/lib/p2es/alerts"),
        ("nats-1", "/data"),
        ("nats-2", "/data"),
        ("nats-3", "/data"),
        ("engine-bus", "/var/lib/p2es/spool"),
        ("alerts-bus", "/var/lib/p2es/alerts"),
    ):
        assert need in mounts, need


SCALEOUT = {"nats-1", "nats-2", "nats-3", "engine-bus", "alerts-bus"}


SECRET_WORDS = re.compile(r"(PASSWORD|TOKEN|SECRET|PASSWD|KEY)", re.I)


def test_no_secret_literal_in_compose(compose):
    """Secret-looking variables are files (Compose secrets) or ${...} references, never values."""
    for name, s in _services(compose):
        env = s.get("environment") or {}
        assert isinstance(env, dict), name
        for k, v in env.items():
            if SECRET_WORDS.search(k):
                v = str(v)
                ok = (k.endswith("_FILE") and v.startswith("/run/secrets/")) or re.fullmatch(
                    r"\$\{[A-Z_]+\}", v
                )
                assert ok, f"{name}: {k}={v!r} looks like a secret literal"
        for sec in s.get("secrets", []):
            sec = sec if isinstance(sec, str) else sec["source"]
            assert sec in compose["secrets"], (name, sec)
    text = (REPO / "compose.yaml").read_text()
    assert not re.search(
        r"(?i)(password|token|secret)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{8,}",
        text.replace("_FILE:", "").replace("/run/secrets/", ""),
    ), "literal secret in compose.yaml"


def test_secret_files_are_git_ignored_and_documented(compose):
    readme = (REPO / "deploy" / "secrets" / "README.md").read_text()
    for key, spec in compose["secrets"].items():
        path = spec["file"]
        assert path.startswith("./deploy/secrets/"), key
        rel = path[2:]
        r = subprocess.run(["git", "check-ignore", "-q", rel], cwd=REPO)
        assert r.returncode == 0, f"{rel} is not git-ignored"
        assert f"`{Path(rel).name}`" in readme, f"{rel} not described in deploy/secrets/README.md"
    assert subprocess.run(["git", "check-ignore", "-q", "deploy/secrets/README.md"], cwd=REPO).returncode == 1


def test_env_example_covers_the_variables_compose_uses(compose):
    text = (REPO / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?][^}]*)?\}", text))
    example = (REPO / "deploy" / ".env.example").read_text()
    defined = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.M))
    assert used <= defined, used - defined
    assert not SECRET_WORDS.search(" ".join(defined))  # secrets are files, not .env entries


def test_grafana_mounts_the_provisioning_the_dashboards_expect(compose):
    g = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in g["volumes"])
    assert mounts["./dashboards/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts["./dashboards/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    prov = yaml.safe_load((REPO / "dashboards/provisioning/dashboards/p2es.yaml").read_text())
    assert mounts["./dashboards/json"] == prov["providers"][0]["options"]["path"]
    ds = (REPO / "dashboards/provisioning/datasources/p2es.yaml").read_text()
    for var in re.findall(r"\$\{([A-Z_]+)\}", ds):
        assert var in g["environment"] or var in " ".join(g["entrypoint"]), var
    home = g["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "dashboards/json" / Path(home).name).exists()


def _with_local_ca(cfg: dict, ca: Path) -> dict:
    """A deploy config whose TLS files are the compose secrets, pointed at a local CA file (the
    models load the files: /run/secrets/ exists only in the containers)."""
    for k in ("mqtt_ca_file", "influx_ca_file", "bus_ca_file"):
        if cfg.get(k):
            assert cfg[k] in ("/run/secrets/tls_ca",), (k, cfg[k])  # the compose secret tls_ca
            cfg[k] = str(ca)
    return cfg


def test_p2es_service_configs_parse(compose, monkeypatch, tmp_path):
    """engine.yaml / alerts.yaml are valid for the services' own config models."""
    from tls_services import make_ca

    from engine.app.pipeline import PipelineConfig

    ca = make_ca(tmp_path, "ca").path
    monkeypatch.setenv("P2ES_INFLUX_TOKEN", "t")
    eng = PipelineConfig(**_with_local_ca(yaml.safe_load((REPO / "deploy/p2es/engine.yaml").read_text()), ca))
    assert eng.broker == "mqtts://mosquitto:8883" and eng.influx_api == "v2" and eng.metrics_port == 9464
    assert "tls_ca" in compose["services"]["engine"]["secrets"]
    assert "tls_ca" in compose["services"]["alerts"]["secrets"]
    hc = " ".join(compose["services"]["engine"]["healthcheck"]["test"])
    assert f":{eng.metrics_port}/metrics" in hc and eng.metrics_addr == "0.0.0.0"
    infl = compose["services"]["influxdb"]["environment"]
    assert (eng.influx_org, eng.influx_bucket) == (
        infl["DOCKER_INFLUXDB_INIT_ORG"],
        infl["DOCKER_INFLUXDB_INIT_BUCKET"],
    )
    assert eng.spool_dir.startswith("/var/lib/p2es/")
    # the ward stack runs with the per-patient budget on, its burst covering a restart's backlog
    assert eng.rate_limit_factor and eng.rate_limit_msgs_per_s and eng.rate_limit_burst_s >= 60
    assert eng.rate_limit_msgs_burst >= eng.rate_limit_burst_s  # one chunk a second of backlog
    try:
        from alerts.service import AlertServiceConfig
    except ImportError as e:  # pragma: no cover - the alerts package is built in parallel
        pytest.fail(f"alerts.service.AlertServiceConfig not importable: {e}")
    al = AlertServiceConfig(
        **_with_local_ca(yaml.safe_load((REPO / "deploy/p2es/alerts.yaml").read_text()), ca)
    )
    assert al.broker == eng.broker and al.mqtt_ca_file == eng.mqtt_ca_file
    assert (al.influx_org, al.influx_bucket) == (eng.influx_org, eng.influx_bucket)
    cmd = compose["services"]["alerts"]["command"]
    assert cmd[:3] == ["p2es", "alerts", "run"]
    assert compose["services"]["engine"]["command"][:2] == ["p2es", "run"]
    # every username the stack uses has rules in the ACL
    acl = (REPO / "deploy/mosquitto/acl").read_text()
    for svc in ("engine", "alerts"):
        assert f"user {compose['services'][svc]['environment']['P2ES_MQTT_USERNAME']}\n" in acl


def test_dockerfile_pins_torch_like_pyproject():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    (pin,) = [d for d in py["project"]["dependencies"] if d.startswith("torch")]
    df = (REPO / "deploy" / "Dockerfile").read_text()
    assert f"pip install {pin} --index-url https://download.pytorch.org/whl/cpu" in df
    for src in re.findall(r"^COPY (\S+) ", df, re.M):
        assert (REPO / src).exists(), src
    assert "USER p2es" in df


def test_shell_scripts_parse():
    for script in (
        "deploy/mosquitto/add-device.sh",
        "deploy/influxdb/init/10-p2es-dbrp.sh",
        "deploy/p2es/entrypoint.sh",
        "deploy/nats/add-user.sh",
    ):
        shell = "sh" if script.endswith("entrypoint.sh") else "bash"
        r = subprocess.run([shell, "-n", str(REPO / script)], capture_output=True, text=True)
        assert r.returncode == 0, (script, r.stderr)
        assert (REPO / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_entrypoint_exports_secrets_from_files(tmp_path):
    (tmp_path / "pw").write_text("s3cr3t\n")
    env = {"PATH": "/usr/bin:/bin", "P2ES_MQTT_PASSWORD_FILE": str(tmp_path / "pw")}
    r = subprocess.run(
        [
            "sh",
            str(REPO / "deploy/p2es/entrypoint.sh"),
            "sh",
            "-c",
            'echo "[$P2ES_MQTT_PASSWORD][${P2ES_MQTT_PASSWORD_FILE:-unset}]"',
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0 and r.stdout == "[s3cr3t][unset]\n", r
    env["P2ES_MQTT_PASSWORD_FILE"] = str(tmp_path / "missing")
    r = subprocess.run(
        ["sh", str(REPO / "deploy/p2es/entrypoint.sh"), "true"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2 and "not readable" in r.stderr


def test_docker_image_sources_are_complete(tmp_path):
    """deploy/Dockerfile copies folders by name: every package the distribution installs is
    copied, and the copied tree alone imports every module and runs `p2es --help` (nothing
    outside the COPY lines is needed)."""
    import shutil

    from p2es.architecture import PACKAGES

    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = [p.rstrip("*") for p in py["tool"]["setuptools"]["packages"]["find"]["include"]]
    df = (REPO / "deploy" / "Dockerfile").read_text()
    copied = []
    for line in re.findall(r"^COPY (.+)$", df, re.M):
        parts = line.split()
        if parts[0].startswith("--"):
            parts = parts[1:]
        copied += [s for s in parts[:-1] if not s.startswith("deploy/")]
    assert set(include) == set(PACKAGES) <= set(copied), (include, copied)
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text()
    for src in copied:
        assert f"!{src}" in ignore or f"!{src}/**" in ignore, f"{src} is filtered out of the build context"
        target = tmp_path / src
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.resume.pt"))
        else:
            shutil.copy2(REPO / src, target)
    code = (
        "import importlib, os, pkgutil, sys\n"
        f"for pkg in {list(PACKAGES)!r}:\n"
        "    m = importlib.import_module(pkg)\n"
        "    assert m.__file__.startswith(os.getcwd()), m.__file__\n"
        "    for i in pkgutil.walk_packages(m.__path__, pkg + '.'):\n"
        "        if 'tensorrt' not in i.name:\n"
        "            importlib.import_module(i.name)\n"
        "from engine.model.checkpoint import DEFAULT_CHECKPOINT\n"
        "assert DEFAULT_CHECKPOINT.is_file(), DEFAULT_CHECKPOINT\n"
        "from p2es.cli import main\n"
        "sys.argv = ['p2es', '--help']\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage: p2es" in r.stdout
    assert str(REPO) not in r.stdout + r.stderr


# ------------------------------------------------------------------ the scale-out profile
def test_scaleout_profile_structure(compose, monkeypatch, tmp_path):
    """3 NATS nodes (JetStream, MQTT listener, one cluster, the ACL file), N engine workers on the
    bus and the alert service on a NATS MQTT listener, all only in profile `scaleout`; the
    configs parse as the services' own models and agree with the nodes."""
    from alerts.service import AlertServiceConfig
    from engine.app.pipeline import PipelineConfig
    from p2es.transport.nats import parse_bus_url

    svc = compose["services"]
    for name in SCALEOUT:
        assert svc[name]["profiles"] == ["scaleout"], name
    conf = (REPO / "deploy/nats/nats.conf").read_text()
    routes = set(re.findall(r"nats-route://([a-z0-9-]+):6222", conf))
    assert routes == {"nats-1", "nats-2", "nats-3"}
    assert re.search(r"(?m)^jetstream \{", conf) and re.search(
        r"(?m)^mqtt \{\s*\n\s*listen: 0\.0\.0\.0:8883", conf
    )
    assert re.search(r'accounts \{\s*P2ES \{\s*jetstream: enabled\s*include "users.conf"', conf)
    assert "no_auth_user" not in conf and "authorization" not in conf  # no anonymous access
    for i in (1, 2, 3):
        n = svc[f"nats-{i}"]
        assert n["command"][-2:] == ["--name", f"nats-{i}"] and "/etc/nats/nats.conf" in n["command"]
        assert "./deploy/nats/nats.conf:/etc/nats/nats.conf:ro" in n["volumes"]
        assert f"nats-{i}-data:/data" in n["volumes"]
        assert {"source": "nats_users", "target": "/etc/nats/users.conf"} in n["secrets"]
        assert any(p.endswith(":8883") for p in n["ports"])
        assert "8222/healthz" in " ".join(n["healthcheck"]["test"])
    assert compose["secrets"]["nats_users"]["file"] == "./deploy/secrets/nats_users.conf"

    monkeypatch.setenv("P2ES_INFLUX_TOKEN", "t")
    eng = svc["engine-bus"]
    assert eng["deploy"]["replicas"] >= 2 and "ports" not in eng  # replicas: no host port
    assert set(eng["depends_on"]) == {"nats-1", "nats-2", "nats-3", "influxdb"}
    assert eng["environment"]["P2ES_MQTT_USERNAME"] == "p2es-engine"
    from tls_services import make_ca

    ca = make_ca(tmp_path, "ca").path
    cfg = PipelineConfig(
        **_with_local_ca(yaml.safe_load((REPO / "deploy/p2es/engine-bus.yaml").read_text()), ca)
    )
    assert cfg.bus and [u.split("//")[1] for u in parse_bus_url(cfg.bus)] == [
        "nats-1:4222",
        "nats-2:4222",
        "nats-3:4222",
    ]
    assert cfg.client_id == "p2es-engine"  # the default: every replica picks its own worker id
    assert cfg.bus_replicas == 3 and cfg.shards >= 64 and cfg.publish_vitals
    assert cfg.rate_limit_factor and cfg.rate_limit_msgs_per_s  # the budget on (stored-time clock)
    assert f":{cfg.metrics_port}/metrics" in " ".join(eng["healthcheck"]["test"])
    al = svc["alerts-bus"]
    acfg = AlertServiceConfig(
        **_with_local_ca(yaml.safe_load((REPO / "deploy/p2es/alerts-bus.yaml").read_text()), ca)
    )
    assert acfg.mqtt_version == "3.1.1" and acfg.broker.startswith("mqtts://nats-")  # NATS: MQTT 3.1.1 only
    assert acfg.broker.endswith(":8883") and acfg.mqtt_ca_file == str(ca)
    assert "." not in acfg.client_id  # NATS refuses MQTT client ids with a dot
    assert al["environment"]["P2ES_MQTT_USERNAME"] == "p2es-alerts"
    assert f":{acfg.health_port}/healthz" in " ".join(al["healthcheck"]["test"])
    # the users the services log in as get their permissions from deploy/nats/add-user.sh
    script = (REPO / "deploy/nats/add-user.sh").read_text()
    for user in ("p2es-engine", "p2es-alerts"):
        assert f"  {user})" in script, user
    # the default stack does not depend on the profile
    for name, s in _services(compose):
        if name not in SCALEOUT:
            assert not set(s.get("depends_on") or {}) & SCALEOUT, name


def test_scaleout_profile_is_tls_everywhere(compose):
    """Every NATS listener and route of deploy/nats/nats.conf has TLS with the node's own
    certificate (Compose secrets nats_cert / nats_key, one per node) and the stack's CA; the
    client listener is TLS first; the workers connect tls:// with the CA, the alert service
    mqtts://.  (tests/test_nats_tls.py runs this nats.conf on real nodes.)"""
    conf = (REPO / "deploy/nats/nats.conf").read_text()
    body = re.sub(r"#[^\n]*", "", conf)
    blocks = re.findall(r"tls \{([^}]*)\}", body)
    assert len(blocks) == 3, blocks  # client listener, cluster routes, MQTT listener
    for b in blocks:
        assert 'cert_file: "/run/secrets/nats_cert"' in b and 'key_file: "/run/secrets/nats_key"' in b, b
        assert 'ca_file: "/run/secrets/tls_ca"' in b, b
        assert "insecure" not in b and "verify: false" not in b, b
    assert re.search(r"(?m)^tls \{[^}]*handshake_first: true", body)  # the client listener
    assert re.search(r"cluster \{[^}]*?tls \{", body, re.S) and re.search(r"mqtt \{[^}]*?tls \{", body, re.S)
    assert "no_advertise: true" in body
    svc = compose["services"]
    for i in (1, 2, 3):
        sec = svc[f"nats-{i}"]["secrets"]
        assert "tls_ca" in sec, i
        assert {"source": f"nats_{i}_cert", "target": "nats_cert"} in sec, i
        assert {"source": f"nats_{i}_key", "target": "nats_key"} in sec, i
        for kind in ("cert", "key"):
            assert compose["secrets"][f"nats_{i}_{kind}"]["file"] == f"./deploy/secrets/nats_{i}_{kind}.pem"
        assert not any(p.endswith((":4222", ":6222", ":8222")) for p in svc[f"nats-{i}"]["ports"])
    eng = yaml.safe_load((REPO / "deploy/p2es/engine-bus.yaml").read_text())
    assert eng["bus"].startswith("tls://") and eng["bus_ca_file"] == "/run/secrets/tls_ca"
    assert "tls_ca" in svc["engine-bus"]["secrets"]
    al = yaml.safe_load((REPO / "deploy/p2es/alerts-bus.yaml").read_text())
    assert al["broker"].startswith("mqtts://") and al["mqtt_ca_file"] == "/run/secrets/tls_ca"
    assert "tls_ca" in svc["alerts-bus"]["secrets"]
