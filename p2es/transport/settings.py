"""Service settings: one base for broker + InfluxDB + secrets (:class:`ServiceSettings`), and
the loader for a YAML/JSON file plus command-line flags, validated by pydantic.

``p2es run`` and ``p2es alerts run`` share this: the file gives the base mapping, flags that were
given override it, and the first validation problem becomes one :class:`P2esError` line.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from p2es.errors import P2esError
from p2es.transport.mqtt import MQTT_VERSIONS, MqttEndpoint, parse_url
from p2es.transport.tls import check_nats_server, check_server, client_context
from sink.writer import Writer, make_transport

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound="ServiceSettings")


def read_settings_file(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a ``.json`` or YAML file ({} for None); any problem -> P2esError."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise P2esError(f"config file not found: {p}")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix.lower() == ".json" else _yaml(text)
    except Exception as e:  # noqa: BLE001 - one line, whatever the parser raised
        raise P2esError(f"cannot parse config {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise P2esError(f"config {p} must hold a mapping of settings")
    return data


def _yaml(text: str) -> Any:
    return yaml.safe_load(text) or {}


def merge_flags(data: dict[str, Any], args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """Set ``data[field]`` from every flag ``--field-name`` (``args.<field>``) that was given."""
    for fld in fields:
        v = getattr(args, fld, None)
        if v is not None:
            data[fld] = v
    return data


#: the flags of the broker connection (also used by one-shot commands such as ``p2es alerts ack``)
BROKER_FLAGS: tuple[str, ...] = (
    "broker",
    "mqtt_username",
    "mqtt_password",
    "mqtt_version",
    "mqtt_ca_file",
    "mqtt_cert_file",
    "mqtt_key_file",
)
#: the flags every long-running service takes (fields of :class:`ServiceSettings`)
SERVICE_FLAGS: tuple[str, ...] = (
    *BROKER_FLAGS,
    "client_id",
    "influx_url",
    "influx_api",
    "influx_db",
    "influx_org",
    "influx_bucket",
    "influx_token",
    "influx_ca_file",
)


def add_broker_flags(
    p: argparse.ArgumentParser,
    *,
    broker_default: str | None = None,
    version_default: str | None = None,
    broker_help: str | None = None,
) -> None:
    """``--broker --mqtt-username --mqtt-password --mqtt-version`` and the TLS files."""
    p.add_argument(
        "--broker",
        default=broker_default,
        help=broker_help
        or "mqtt://HOST:PORT or mqtts://HOST:PORT"
        + (f" (default {broker_default})" if broker_default else ""),
    )
    p.add_argument("--mqtt-username")
    p.add_argument("--mqtt-password", help="(better: env P2ES_MQTT_PASSWORD)")
    p.add_argument(
        "--mqtt-version",
        choices=MQTT_VERSIONS,
        default=version_default,
        help="MQTT protocol (default 5; 3.1.1 for brokers without MQTT 5)",
    )
    p.add_argument(
        "--mqtt-ca-file",
        metavar="PEM",
        help="mqtts://: CA certificate(s) the broker's certificate must chain to (default: system trust store)",
    )
    p.add_argument("--mqtt-cert-file", metavar="PEM", help="mqtts://: client certificate (device login)")
    p.add_argument("--mqtt-key-file", metavar="PEM", help="mqtts://: the client certificate's private key")


def add_service_flags(p: argparse.ArgumentParser) -> None:
    """The flags of :data:`SERVICE_FLAGS` (each overrides the settings file's value)."""
    add_broker_flags(p)
    p.add_argument("--client-id")
    p.add_argument("--influx-url", help="InfluxDB URL, or 'none' for no InfluxDB")
    p.add_argument("--influx-api", choices=("v1", "v2"))
    p.add_argument("--influx-db")
    p.add_argument("--influx-org")
    p.add_argument("--influx-bucket")
    p.add_argument("--influx-token", help="(better: env P2ES_INFLUX_TOKEN)")
    p.add_argument(
        "--influx-ca-file",
        metavar="PEM",
        help="https:// InfluxDB: CA certificate(s) its certificate must chain to (default: system trust store)",
    )


def validate(model: type[M], data: Mapping[str, Any], what: str) -> M:
    """``model(**data)``; the first validation error -> ``bad WHAT setting LOC: MSG``."""
    try:
        return model(**data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise P2esError(f"bad {what} setting {loc + ': ' if loc else ''}{msg}") from None


#: the MQTT TLS settings, and the flags of one-shot commands that set them (for messages)
TLS_SETTING_NAMES: tuple[str, str, str] = ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file")
TLS_FLAG_NAMES: tuple[str, str, str] = ("--mqtt-ca-file", "--mqtt-cert-file", "--mqtt-key-file")


def mqtt_tls_context(
    broker: str,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    *,
    options: tuple[str, str, str] = TLS_SETTING_NAMES,
) -> ssl.SSLContext | None:
    """The verifying TLS context of an ``mqtts://`` broker (:func:`p2es.transport.tls.client_context`),
    None for ``mqtt://``.  TLS files given for a plain ``mqtt://`` broker, or files that cannot
    be loaded -> ``ValueError`` (one line naming the setting, as ``options`` spells it)."""
    _, _, tls, _, _ = parse_url(broker)
    if not tls:
        given = [n for n, v in zip(options, (ca_file, cert_file, key_file)) if v]
        if given:
            raise ValueError(f"{given[0]} needs an mqtts:// broker (the broker URL is plain mqtt://)")
        return None
    return client_context(ca_file, cert_file, key_file, options=options)


def mqtt_tls_from_flags(args: argparse.Namespace) -> ssl.SSLContext | None:
    """:func:`mqtt_tls_context` of a one-shot command's ``--broker`` and ``--mqtt-*-file`` flags
    (:func:`add_broker_flags`): a file that does not load, or TLS flags for a plain ``mqtt://``
    broker -> ``P2esError``, one line naming the flag."""
    try:
        return mqtt_tls_context(
            args.broker, args.mqtt_ca_file, args.mqtt_cert_file, args.mqtt_key_file, options=TLS_FLAG_NAMES
        )
    except ValueError as e:
        raise P2esError(str(e)) from None


def influx_tls_context(url: str, ca_file: str | None = None) -> ssl.SSLContext | None:
    """The verifying TLS context of an ``https://`` InfluxDB URL, None for ``http://`` (a CA
    file with ``http://`` -> ``ValueError``)."""
    if not url.startswith("https://"):
        if ca_file:
            raise ValueError("influx_ca_file needs an https:// influx_url")
        return None
    return client_context(ca_file, options=("influx_ca_file", "", ""))


#: the TLS settings of the NATS bus of ``p2es run --bus`` (fields of PipelineConfig, flags --bus-*)
BUS_TLS_SETTING_NAMES: tuple[str, str, str] = ("bus_ca_file", "bus_cert_file", "bus_key_file")


def bus_tls_context(
    bus: str | None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    *,
    options: tuple[str, str, str] = BUS_TLS_SETTING_NAMES,
) -> ssl.SSLContext | None:
    """The verifying TLS context of a NATS bus (:func:`p2es.transport.tls.client_context`): for a
    ``tls://`` URL, and for a ``nats://`` one with any TLS file set (the CA the servers'
    certificates chain to; a client certificate + key for listeners with ``verify``); None for
    a plain ``nats://`` bus.  TLS files without a bus, or files that cannot be loaded ->
    ``ValueError`` (one line naming the setting)."""
    files = (ca_file, cert_file, key_file)
    if not bus:
        given = [n for n, v in zip(options, files) if v]
        if given:
            raise ValueError(f"{given[0]} needs a bus (tls://HOST:PORT[,HOST:PORT...])")
        return None
    if not bus.startswith("tls://") and not any(files):
        return None
    return client_context(ca_file, cert_file, key_file, options=options)


async def check_bus_tls(bus: str, ctx: ssl.SSLContext, *, ca_file: str | None = None) -> None:
    """At start-up: one TLS-first handshake with every server of the bus URL
    (:func:`p2es.transport.tls.check_nats_server`); a certificate that does not verify, or a
    listener that is not TLS first -> :class:`P2esError`, one line; a node that does not answer
    is left to the reconnect loop."""
    from p2es.transport.nats import parse_bus_url  # lazy: optional dependency nats-py (only --bus)

    for url in parse_bus_url(bus):
        u = urllib.parse.urlsplit(url)
        await check_nats_server(
            u.hostname or "", u.port or 4222, ctx, ca_option=BUS_TLS_SETTING_NAMES[0], ca_file=ca_file
        )


# ------------------------------------------------------------------------------ service base
SECRET_FIELDS: tuple[str, ...] = ("mqtt_username", "mqtt_password", "influx_token")


class ServiceSettings(BaseSettings):
    """Broker + InfluxDB settings shared by every long-running p2es service (``p2es run``,
    ``p2es alerts run``), which extend it with their own fields.

    Precedence: explicit values (settings file, flags) > environment ``P2ES_<FIELD>`` (e.g.
    ``P2ES_MQTT_PASSWORD``, ``P2ES_INFLUX_TOKEN``) > a file named by ``P2ES_<FIELD>_FILE``
    (Docker/Compose secrets; the secrets :data:`SECRET_FIELDS` only) > the default.
    """

    model_config = SettingsConfigDict(extra="forbid", env_prefix="P2ES_", env_ignore_empty=True)

    broker: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_version: Literal["5", "3.1.1"] = "5"
    # mqtts:// (p2es.transport.tls; verification is always on): the CA the broker's certificate
    # must chain to (None: the system trust store), and a client certificate + key (devices)
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None
    client_id: str = "p2es"
    session_expiry_s: int = Field(3600, ge=0)
    influx_url: str | None = "http://127.0.0.1:8086"  # None (or "none") = no InfluxDB
    influx_api: Literal["v1", "v2"] = "v1"
    influx_db: str = "p2es"
    influx_org: str | None = None
    influx_bucket: str | None = None
    influx_token: str | None = None
    influx_ca_file: str | None = None  # https:// InfluxDB: its CA (None: the system trust store)
    writer_flush_interval_s: float = Field(1.0, gt=0)
    reconnect_min_s: float = Field(0.2, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        if not (v.startswith("mqtt://") or v.startswith("mqtts://")):
            raise ValueError(f"broker must be mqtt://HOST:PORT or mqtts://HOST:PORT, got {v!r}")
        try:
            parse_url(v)
        except ValueError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("influx_url")
    @classmethod
    def _influx_url(cls, v: str | None) -> str | None:
        if v is not None and v.lower() == "none":
            return None
        if v is not None and not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError(f"influx_url must be http(s)://HOST:PORT or none, got {v!r}")
        return v

    @model_validator(mode="after")
    def _secrets_and_checks(self) -> Self:
        for name in SECRET_FIELDS:
            path = os.environ.get(f"P2ES_{name.upper()}_FILE")
            if getattr(self, name) is None and path:
                try:
                    setattr(self, name, Path(path).read_text().strip())
                except OSError as e:
                    raise ValueError(f"cannot read P2ES_{name.upper()}_FILE: {e.strerror or e}") from None
        if self.influx_url and self.influx_api == "v2" and not (self.influx_org and self.influx_token):
            raise ValueError(
                "influx api v2 needs influx_org and influx_token (token also from P2ES_INFLUX_TOKEN)"
            )
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        self.mqtt_tls_context()  # TLS files load, and only with mqtts:// / https:// (ValueError)
        if self.influx_url:
            influx_tls_context(self.influx_url, self.influx_ca_file)
        elif self.influx_ca_file:
            raise ValueError("influx_ca_file needs an https:// influx_url")
        return self

    def mqtt_tls_context(self) -> ssl.SSLContext | None:
        """The broker's verifying TLS context (None for ``mqtt://``)."""
        return mqtt_tls_context(self.broker, self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file)

    async def check_tls(self) -> None:
        """At start-up, before anything connects: one TLS handshake with the ``mqtts://`` broker
        and the ``https://`` InfluxDB (:func:`p2es.transport.tls.check_server`).  A certificate
        that does not verify (wrong CA, wrong host name, expired) or a refused client
        certificate -> :class:`P2esError`, one line; an endpoint that does not answer is left
        to the reconnect loops (it may be starting)."""
        ep = self.mqtt_endpoint()
        if ep.tls_context is not None:
            await check_server(
                ep.host,
                ep.port,
                ep.tls_context,
                what="MQTT broker",
                ca_option="mqtt_ca_file",
                ca_file=self.mqtt_ca_file,
            )
        ctx = influx_tls_context(self.influx_url, self.influx_ca_file) if self.influx_url else None
        if ctx is not None and self.influx_url:
            u = urllib.parse.urlsplit(self.influx_url)
            await check_server(
                u.hostname or "",
                u.port or 443,
                ctx,
                what="InfluxDB",
                ca_option="influx_ca_file",
                ca_file=self.influx_ca_file,
            )

    def mqtt_endpoint(self, client_id: str | None = None) -> MqttEndpoint:
        """Where this service's MQTT client connects (``client_id`` defaults to the setting)."""
        return MqttEndpoint.from_url(
            self.broker,
            username=self.mqtt_username,
            password=self.mqtt_password,
            version=self.mqtt_version,
            client_id=client_id or self.client_id,
            session_expiry_s=self.session_expiry_s,
            tls_context=self.mqtt_tls_context(),
        )

    def influx_writer(self, spool_dir: str, *, batch_lines: int, backoff_cap_s: float) -> Writer:
        """The InfluxDB writer (with its disk spool) of these settings; not started."""
        if not self.influx_url:
            raise P2esError("no InfluxDB configured (influx_url is none)")
        transport = make_transport(
            self.influx_url,
            version=1 if self.influx_api == "v1" else 2,
            database=self.influx_db,
            org=self.influx_org,
            bucket=self.influx_bucket,
            token=self.influx_token,
            ca_file=self.influx_ca_file,
        )
        return Writer(
            transport,
            spool_dir,
            batch_lines=batch_lines,
            flush_interval=self.writer_flush_interval_s,
            backoff_cap=backoff_cap_s,
        )

    def shared_with(self, other: type[S], what: str, **overrides: Any) -> S:
        """Settings of another service on the same broker and InfluxDB (the base fields copied
        from this one), e.g. the in-process alert service of ``p2es run --alerts``."""
        base = {k: getattr(self, k) for k in ServiceSettings.model_fields}
        return validate(other, {**base, **overrides}, what)
