"""Shared pytest fixtures for p2es.

Service fixtures use the real Mosquitto/InfluxDB started by `make test`
(`scripts/services.sh start`). If they are not reachable, the first fixture
that needs them runs that script once; if the services are still missing the
test FAILS (never skips), so CI cannot go green without them.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _p in (REPO_ROOT, REPO_ROOT / "tests"):  # work with PYTHONPATH unset
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import os  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# ONNX graphs exported by the tests (backend "auto" picks ONNX Runtime) go to a throw-away
# cache, not to the user's ~/.cache/p2es; subprocesses inherit it.
if "P2ES_CACHE_DIR" not in os.environ:
    _TEST_CACHE = os.environ["P2ES_CACHE_DIR"] = tempfile.mkdtemp(prefix="p2es-test-cache-")
else:
    _TEST_CACHE = None


def pytest_sessionfinish(session, exitstatus) -> None:
    if _TEST_CACHE:
        import shutil

        shutil.rmtree(_TEST_CACHE, ignore_errors=True)


import services  # noqa: E402  (tests/services.py)

SERVICE_FIXTURES = {"mqtt_broker", "influxdb"}
_start_attempt: dict[str, str | None] = {}  # set once: None = ok, str = error text


def _ensure_services(ready) -> None:
    """Make `ready()` true, running scripts/services.sh start at most once per session."""
    if ready():
        return
    if "result" not in _start_attempt:
        try:
            services.start_services()
            _start_attempt["result"] = None
        except Exception as e:  # noqa: BLE001 - reported below
            _start_attempt["result"] = str(e)
    if ready():
        return
    err = _start_attempt["result"] or "the script succeeded but the service is still unreachable"
    pytest.fail(
        "test services are not running and `scripts/services.sh start` could not start them "
        f"(MQTT {services.mqtt_url()}, InfluxDB {services.influx_url()}); "
        f"run `make services` and see .run/*/ logs.\n{err}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """(host, port) of the test Mosquitto broker."""
    port = services.mqtt_port()
    _ensure_services(lambda: services.port_open(services.HOST, port))
    return services.HOST, port


@pytest.fixture(scope="session")
def influxdb() -> tuple[str, str]:
    """(url, database) of the test InfluxDB; the database exists."""
    _ensure_services(services.influx_ping)
    return services.influx_url(), services.influx_db()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use a service fixture get the `services` marker automatically,
    # so `pytest -m "not services"` runs the rest without a broker/database.
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread (tests share 2 cores with each other)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A checkpoint set with one tiny ``p2es`` trained 2 steps on stand-in data: fast to build
    and to run (its ECG is noise); shared by the pipeline, demo, runtime and dashboard tests."""
    from engine.model.train import train_tiny

    path = tmp_path_factory.mktemp("tiny_ckpt") / "tiny.pt"
    train_tiny(path)
    return str(path)
