"""Signed webhooks: the Standard Webhooks signature and an Alertmanager-compatible body.

Signature (Standard Webhooks 1.0, symmetric scheme; https://www.standardwebhooks.com/)::

    webhook-id:        msg_<32 hex>          same on every retry of one notification
    webhook-timestamp: 1718000000            Unix seconds of *this attempt*
    webhook-signature: v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>

The secret is written ``whsec_<base64 key>``; the HMAC key is the base64-decoded part after
``whsec_`` (at least 24 bytes, per the spec).  The body is signed exactly as sent (the bytes
stored in the outbox).  :func:`verify` is what a receiver runs: constant-time comparison, every
space-separated ``v1,`` signature tried (secret rotation), timestamp within ``tolerance_s``.

Body (Alertmanager webhook format, version "4", so existing Alertmanager receivers work)::

    {"version": "4", "groupKey": "{}:{alertname=\\"hr_high\\", patient=\\"bed-7\\"}",
     "truncatedAlerts": 0, "status": "firing" | "resolved", "receiver": "<webhook name>",
     "groupLabels": {"alertname": "hr_high", "patient": "bed-7"},
     "commonLabels": {...labels of the alert...}, "commonAnnotations": {...},
     "externalURL": "<external_url>",
     "alerts": [{"status": ..., "labels": {"alertname", "patient", "priority", ...rule labels},
                 "annotations": {"summary", "description"}, "startsAt": RFC 3339,
                 "endsAt": RFC 3339 | "0001-01-01T00:00:00Z" while firing,
                 "generatorURL": "<external_url>/alerts/<rule>", "fingerprint": "<16 hex>"}]}

Delivery (:func:`post`) never follows a redirect (a 3xx is a failed attempt, retried like a 5xx)
and never raises: whatever goes wrong -- building the request, the URL, the network, the
response -- comes back as a :class:`PostResult` with an error, so the sender counts it as an
attempt.  :func:`check_url` parses a configured URL fully (scheme, host, port) at start-up.

One notification carries one alert (grouped by rule and patient); ``repeat`` notifications have
status ``firing`` (as Alertmanager's repeat_interval re-sends do).  p2es additions live under
the alert's annotations (``p2es_event``: firing | repeat | resolved, ``value``), which
Alertmanager receivers ignore.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from alerts.state import AlertEvent
from p2es.transport.tls import client_context, refusal

__all__ = [
    "SECRET_PREFIX",
    "check_url",
    "WebhookVerificationError",
    "decode_secret",
    "generate_secret",
    "new_message_id",
    "event_message_id",
    "sign",
    "verify",
    "alertmanager_body",
    "PostResult",
    "post",
]

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24
ZERO_TIME = "0001-01-01T00:00:00Z"


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _shown(url: str) -> str:
    """``url`` for an error message: scheme and host part, credentials and path left out."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url[:40] + ("…" if len(url) > 40 else "")
    netloc, slash, _ = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return f"{scheme}://{netloc}" + ("/…" if slash else "")


def check_url(url: str, what: str = "webhook url") -> str:
    """Parse an HTTP(S) URL fully; ``url`` unchanged, or ``ValueError`` (naming ``what``) saying
    what is wrong.

    Checked: no whitespace or control character anywhere; scheme ``http``/``https``; a host that
    is an IPv4 address, a bracketed IPv6 address or a DNS name (labels of letters, digits, ``-``,
    ``_``; internationalised names through IDNA); a port, if given, that is a number in 1..65535;
    no ``user:password@`` (the request would not carry it).  Messages show the URL without
    credentials and without its path (a path or query may hold a token)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"{what} is empty")
    shown = _shown(url)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError(f"{what} {shown!r} contains whitespace or a control character")
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port  # raises for a port that is not a number in 0..65535
    except ValueError as e:
        raise ValueError(f"{what} {shown!r}: {e}") from None
    if u.scheme not in ("http", "https"):
        raise ValueError(f"{what} must be http(s)://HOST[:PORT]/..., got {shown!r}")
    host = u.hostname
    if not host:
        raise ValueError(f"{what} {shown!r} has no host")
    if u.username is not None or u.password is not None:
        raise ValueError(f"{what} {shown!r}: user:password@ in the URL is not supported")
    if port == 0:
        raise ValueError(f"{what} {shown!r}: port 0 is not a port to send to")
    if "[" in u.netloc:
        return url  # a bracketed IPv6 literal: urlsplit has validated it
    try:
        ipaddress.ip_address(host)
        return url
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{what} {shown!r}: {host!r} is not a valid host name") from None
    labels = ascii_host.removesuffix(".").split(".")
    if len(ascii_host) > 253 or not all(_DNS_LABEL.fullmatch(lb) for lb in labels):
        raise ValueError(f"{what} {shown!r}: {host!r} is not a valid host name")
    return url


class WebhookVerificationError(ValueError):
    """A webhook that does not verify (missing headers, bad signature, stale timestamp)."""


def decode_secret(secret: str | bytes) -> bytes:
    """``whsec_<base64>`` (or bare base64, or raw bytes) -> HMAC key bytes."""
    if isinstance(secret, bytes):
        key = secret
    else:
        s = secret.strip()
        if s.startswith(SECRET_PREFIX):
            s = s[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a webhook secret must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def generate_secret(nbytes: int = 32) -> str:
    """A new random secret, ``whsec_<base64 of nbytes random bytes>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def new_message_id() -> str:
    """A random ``msg_<32 hex>`` (for messages that are not alert events)."""
    return "msg_" + secrets.token_hex(16)


def event_message_id(webhook: str, ev: AlertEvent) -> str:
    """The ``webhook-id`` of ``ev``'s notification to ``webhook``: ``msg_<32 hex>``, a hash of the
    webhook name and the event's identity (alert fingerprint = rule + patient, kind, the
    episode's ``startsAt`` and the event time).  Every retry carries it (it is stored with the
    outbox row), and an event generated again -- e.g. by a restarted service that re-reads the
    same vitals from the same saved state -- gets the same id, so the outbox keeps one row and a
    receiver de-duplicating on the id sees the notification once."""
    key = json.dumps(
        [webhook, ev.fingerprint, ev.rule, ev.patient, ev.kind, repr(float(ev.starts_at)), repr(float(ev.t))]
    )
    return "msg_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value ``v1,<base64>`` for one attempt."""
    if "." in msg_id:
        raise ValueError("a webhook id must not contain '.'")
    b = body.encode("utf-8") if isinstance(body, str) else body
    to_sign = f"{msg_id}.{int(timestamp)}.".encode() + b
    mac = hmac.new(decode_secret(secret), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> None:
    """Raise :class:`WebhookVerificationError` unless the request is authentic and fresh.

    ``headers`` may use any case.  ``body`` must be the raw bytes received (not re-serialised
    JSON).  ``now`` defaults to the wall clock."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and ts and sigs):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        t = int(ts)
    except ValueError:
        raise WebhookVerificationError(f"bad webhook-timestamp {ts!r}") from None
    now = time.time() if now is None else now
    if abs(now - t) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp {t} is more than {tolerance_s:g} s from now")
    try:
        expected = base64.b64decode(sign(secret, msg_id, t, body).split(",", 1)[1])
    except ValueError as e:
        raise WebhookVerificationError(str(e)) from None
    for item in sigs.split():
        version, _, value = item.partition(",")
        if version != "v1":
            continue
        try:
            got = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, got):
            return
    raise WebhookVerificationError("no matching v1 signature")


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alertmanager_body(ev: AlertEvent, *, receiver: str, external_url: str) -> bytes:
    """The Alertmanager-format JSON body (compact UTF-8 bytes) for one event."""
    status = "resolved" if ev.kind == "resolved" else "firing"
    base = external_url.rstrip("/")
    annotations = dict(ev.annotations)
    annotations["p2es_event"] = ev.kind
    if ev.value is not None:
        annotations["value"] = f"{ev.value:g}"
    annotations["message"] = ev.message
    alert = {
        "status": status,
        "labels": dict(ev.labels),
        "annotations": annotations,
        "startsAt": _rfc3339(ev.starts_at),
        "endsAt": _rfc3339(ev.ends_at) if ev.ends_at is not None else ZERO_TIME,
        "generatorURL": f"{base}/alerts/{ev.rule}" if base else "",
        "fingerprint": ev.fingerprint,
    }
    group = {"alertname": ev.rule, "patient": ev.patient}
    body = {
        "version": "4",
        "groupKey": "{}:{" + ", ".join(f'{k}="{v}"' for k, v in sorted(group.items())) + "}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": dict(ev.labels),
        "commonAnnotations": annotations,
        "externalURL": base,
        "alerts": [alert],
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class PostResult:
    status: int | None  # HTTP status, None when no response (connection error, timeout)
    error: str | None  # None on 2xx
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def permanent(self) -> bool:
        """4xx other than 408 and 429: the receiver will not accept this, ever."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 429)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: a webhook goes to the configured URL only.  urllib then raises
    ``HTTPError`` with the 3xx status, a failed (retried) attempt."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(
    _NoRedirect, urllib.request.HTTPSHandler(context=client_context())
)  # https://: certificate and host name verified against the system trust store


def _opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    if context is None:
        return _OPENER
    return urllib.request.build_opener(_NoRedirect, urllib.request.HTTPSHandler(context=context))


def post(
    url: str,
    body: bytes,
    msg_id: str,
    secret: str | bytes,
    *,
    timeout: float = 15.0,
    now: float | None = None,
    extra_headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> PostResult:
    """One signed POST (blocking; run it in a thread).  Never raises: every failure -- signing,
    building the request, a bad URL, the network, a redirect -- is a :class:`PostResult` with
    an error (``status`` None unless the receiver answered).  ``https://`` is verified
    (certificate and host name) with ``context`` (:func:`p2es.transport.tls.client_context`;
    default: the system trust store); a certificate that does not verify is a failed attempt."""
    try:
        ts = int(time.time() if now is None else now)
        headers = {
            "content-type": "application/json",
            "user-agent": "p2es-alerts",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body),
        }
        if extra_headers:
            headers.update(extra_headers)
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with _opener(context).open(req, timeout=timeout) as r:
            r.read(65536)
            status = r.status
            if 200 <= status < 300:
                return PostResult(status, None)
            return PostResult(status, f"HTTP {status}")
    except urllib.error.HTTPError as e:
        ra = _retry_after(e.headers.get("Retry-After") if e.headers else None)
        if 300 <= e.code < 400:
            loc = e.headers.get("Location") if e.headers else None
            return PostResult(
                e.code, f"HTTP {e.code}: redirect{f' to {loc}' if loc else ''} not followed", ra
            )
        try:
            detail = e.read(300).decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - the error body is optional detail, never a second failure
            detail = ""
        msg = f"HTTP {e.code}" + (f": {' '.join(detail.split())[:200]}" if detail else "")
        return PostResult(e.code, msg, ra)
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):  # one line saying which check failed
            u = urllib.parse.urlsplit(url)
            line = refusal(
                e.reason,
                what="webhook receiver",
                host=u.hostname or "",
                port=u.port or 443,
                ca_option="the webhook's ca_file",
                ca_file=None if context is None else "",
            )
            return PostResult(None, line)
        return PostResult(None, f"URLError: {e.reason}")
    except Exception as e:  # noqa: BLE001 - any failure (InvalidURL, RemoteDisconnected, ...) is a failed attempt
        return PostResult(None, f"{type(e).__name__}: {e}")


def _retry_after(v: str | None) -> float | None:
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(v).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def event_dict(ev: AlertEvent) -> dict[str, Any]:
    """An event as a plain dict (for logs and tests)."""
    return asdict(ev)
