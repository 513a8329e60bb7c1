"""The one MQTT connection helper: broker URL, credentials, TLS, client id, protocol version,
session persistence, and reconnect with jittered exponential backoff.

Every p2es MQTT client (ingest, alert service, alert CLI, simulator, demo viewer) builds its
``aiomqtt.Client`` through :class:`MqttEndpoint` and, when it runs for long, reconnects with
:func:`run_reconnecting`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "MQTT_VERSIONS",
    "MqttVersion",
    "parse_url",
    "payload_bytes",
    "MqttEndpoint",
    "Backoff",
    "run_reconnecting",
]

MqttVersion = Literal["5", "3.1.1"]
MQTT_VERSIONS: tuple[str, ...] = ("5", "3.1.1")  # v5 by default; 3.1.1 for brokers without v5 (amqtt)


def parse_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://...`` -> (host, port, tls, user, pw)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"unsupported MQTT URL scheme {u.scheme!r} (mqtt:// or mqtts://)")
    tls = u.scheme in ("mqtts", "ssl")
    if not u.hostname:
        raise ValueError(f"no host in MQTT URL {url!r}")
    port = u.port or (8883 if tls else 1883)
    user = urllib.parse.unquote(u.username) if u.username else None
    pw = urllib.parse.unquote(u.password) if u.password else None
    return u.hostname, port, tls, user, pw


@dataclass(frozen=True)
class MqttEndpoint:
    """Where and how to connect.  Credentials given explicitly win over those in the URL."""

    host: str
    port: int
    tls_context: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    version: str = "5"
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    timeout_s: float = 10.0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        version: str = "5",
        tls_context: ssl.SSLContext | None = None,
        **kw: Any,
    ) -> MqttEndpoint:
        """Raises ``ValueError`` for a bad URL or version."""
        if version not in MQTT_VERSIONS:
            raise ValueError(f"mqtt_version must be one of {', '.join(MQTT_VERSIONS)}, got {version!r}")
        host, port, tls, url_user, url_pw = parse_url(url)
        if tls_context is None and tls:
            tls_context = ssl.create_default_context()
        return cls(
            host,
            port,
            tls_context,
            username if username is not None else url_user,
            password if password is not None else url_pw,
            client_id,
            version,
            **kw,
        )

    def with_client_id(self, client_id: str) -> MqttEndpoint:
        return replace(self, client_id=client_id)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client_args(self, *, persistent: bool) -> dict[str, Any]:
        """``aiomqtt.Client`` keyword arguments.  ``persistent``: the broker keeps the session
        (and the QoS 1 messages queued for it) across reconnects of this client id."""
        session: dict[str, Any]
        if self.version == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped
            props.SessionExpiryInterval = self.session_expiry_s if persistent else 0
            session = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": not persistent,
                "properties": props,
            }
        else:  # MQTT 3.1.1: a persistent session instead of a session expiry interval
            session = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": not persistent}
        return {
            "hostname": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "identifier": self.client_id,
            "tls_context": self.tls_context,
            "timeout": self.timeout_s,
            "keepalive": self.keepalive_s,
            **session,
        }

    def client(self, *, persistent: bool) -> aiomqtt.Client:
        """A fresh client (aiomqtt's reuse after an unexpected disconnect does not wait for the
        new CONNACK, so every connection attempt builds a new one)."""
        return aiomqtt.Client(**self.client_args(persistent=persistent))


def payload_bytes(payload: Any) -> bytes:
    """An MQTT message payload as bytes (aiomqtt hands bytes, bytearray, str, numbers or None)."""
    if isinstance(payload, bytes):
        return payload
    if payload is None:
        return b""
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    return str(payload).encode()


class Backoff:
    """Jittered exponential backoff: ``min_s``, doubling up to ``max_s``, +-20 % jitter."""

    def __init__(self, min_s: float, max_s: float) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError("backoff needs 0 < min_s <= max_s")
        self.min_s, self.max_s = float(min_s), float(max_s)
        self._next = self.min_s

    def reset(self) -> None:
        self._next = self.min_s

    def next_delay(self) -> float:
        d = self._next * random.uniform(0.8, 1.2)
        self._next = min(self.max_s, self._next * 2)
        return d


async def run_reconnecting(
    session: Callable[[], Awaitable[None]],
    *,
    connected: asyncio.Event,
    backoff: Backoff,
    log: logging.Logger,
    name: str,
    on_error: Callable[[aiomqtt.MqttError], None] | None = None,
    on_disconnect: Callable[[bool], None] | None = None,
) -> None:
    """Run ``session()`` (connect, consume) forever: on an MQTT error log one line, wait the
    backoff (reset after a session that had connected) and start again.  ``session`` sets
    ``connected`` once its CONNACK arrived; this clears it.  Returns only by cancellation."""
    while True:
        try:
            await session()
        except aiomqtt.MqttError as e:
            if on_error is not None:
                on_error(e)
            log.warning("%s: MQTT connection lost or refused: %s", name, e)
        finally:
            was_connected = connected.is_set()
            connected.clear()
            if on_disconnect is not None:
                on_disconnect(was_connected)
        if was_connected:
            backoff.reset()
        await asyncio.sleep(backoff.next_delay())
