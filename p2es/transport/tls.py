"""TLS for every p2es client connection: the one place that builds an ``ssl.SSLContext``.

Used by the MQTT clients (``mqtts://``: engine, alert service, simulator, alert commands), the
InfluxDB writer (``https://``), the webhook sender (``https://``) and the NATS bus of the
scale-out mode (``p2es run --bus tls://...``).  Verification is always
on -- the server's certificate must chain to the configured CA file (or, without one, to the
system trust store) and must name the host connected to; there is no setting that turns either
check off.  Minimum protocol TLS 1.2.  A client certificate (``cert_file`` + ``key_file``) is
what a device presents to a broker listener with ``require_certificate`` and
``use_identity_as_username`` (``deploy/tls.md``).

:func:`check_server` is the start-up check: one TLS handshake with the service's own context, so
that a wrong CA file or a wrong host name stops the service with one line
(:class:`p2es.errors.P2esError`) instead of a reconnect loop; a server that does not answer is
left to that loop (it may simply be starting).  :func:`check_nats_server` is the same for a NATS
client listener, which p2es speaks to TLS first (``handshake_first``).  :func:`redact_url` is
what a log line may show of a URL (no ``user:password@``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import urllib.parse
from pathlib import Path

from p2es.errors import P2esError

__all__ = ["client_context", "server_context", "check_server", "check_nats_server", "refusal", "redact_url"]

# OpenSSL X509_V_ERR_* codes of ssl.SSLCertVerificationError.verify_code
_UNTRUSTED = {2, 18, 19, 20, 21}  # no issuer / self-signed / self-signed in chain / not verifiable
_EXPIRED, _NOT_YET_VALID = 10, 9
_NAME_MISMATCH = {62, 64}  # host name / IP address mismatch


# "[SSL: CODE] text (_ssl.c:1006)" -> "text"
_SSL_NOISE = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] |\s*\(_ssl\.c:\d+\)$")
_HANDSHAKE_HINTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server wants a client certificate: set the cert and key files",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused the client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the CA of the client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the client certificate has expired",
    "WRONG_VERSION_NUMBER": "is it a TLS listener? plain mqtt:// or http:// there",
    "RECORD_LAYER_FAILURE": "is it a TLS listener?",
}


def _readable(path: str, option: str) -> None:
    if not Path(path).is_file():
        raise ValueError(f"{option}: no such file {path}")


def client_context(
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    *,
    options: tuple[str, str, str] = ("ca_file", "cert_file", "key_file"),
) -> ssl.SSLContext:
    """A verifying client context: ``CERT_REQUIRED`` and host-name checking, TLS >= 1.2.

    ``ca_file``: PEM CA certificate(s) the server must chain to (only those; None = the system
    trust store).  ``cert_file`` (+ ``key_file``, unless the key is in the same PEM): a client
    certificate to present.  ``options`` name the three settings in messages.  Any problem with
    the files -> ``ValueError`` with one line naming the setting."""
    ca_opt, cert_opt, key_opt = options
    if ca_file is not None:
        _readable(ca_file, ca_opt)
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except ssl.SSLError as e:
        raise ValueError(f"{ca_opt} {ca_file}: no PEM CA certificate in it ({e.reason or e})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if key_file is not None and cert_file is None:
        raise ValueError(f"{key_opt} needs {cert_opt} (the client certificate it belongs to)")
    if cert_file is not None:
        _readable(cert_file, cert_opt)
        if key_file is not None:
            _readable(key_file, key_opt)
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as e:
            raise ValueError(
                f"{cert_opt}/{key_opt}: cannot load the client certificate and its key ({e.reason or e})"
            ) from None
    return ctx


def server_context(cert_file: str, key_file: str, *, client_ca_file: str | None = None) -> ssl.SSLContext:
    """A server context (the tests' HTTPS webhook receiver): this certificate and key; with
    ``client_ca_file`` clients must present a certificate signed by that CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def refusal(e: ssl.SSLError, *, what: str, host: str, port: int, ca_option: str, ca_file: str | None) -> str:
    """One line saying why a TLS connection to ``what`` at host:port was refused, and what to
    check (``ca_file``: the CA file in use, "" when one is in use but unnamed, None for the
    system trust store).  Never contains credentials (only the host, port and file name)."""
    where = f"{what} {host}:{port}"
    if not isinstance(e, ssl.SSLCertVerificationError):
        text = _SSL_NOISE.sub("", str(e)).strip() or str(e.reason)
        hint = _HANDSHAKE_HINTS.get(str(e.reason), "")
        return f"{where}: TLS handshake failed: {text}" + (f" ({hint})" if hint else "")
    code = e.verify_code
    msg = str(e.verify_message or e.reason or e).rstrip(".")
    if code in _NAME_MISMATCH:
        hint = f"the certificate does not name {host!r}: connect by a name it lists"
    elif code in _UNTRUSTED:
        hint = (
            f"not signed by a CA of the system trust store; set {ca_option}"
            if ca_file is None
            else f"not signed by the CA in {ca_option}" + (f" {ca_file}" if ca_file else "")
        )
    elif code in (_EXPIRED, _NOT_YET_VALID):
        hint = "check the server certificate's validity dates and this machine's clock"
    else:
        hint = ""
    return f"{where}: TLS certificate refused: {msg}" + (f" ({hint})" if hint else "")


async def check_server(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    *,
    what: str,
    ca_option: str = "ca_file",
    ca_file: str | None = None,
    timeout_s: float = 5.0,
    probe_s: float = 0.25,
) -> bool:
    """One TLS handshake with ``ctx`` (then close): True when the certificate verifies, False
    when the server does not answer (refused, timeout: not a TLS problem, the caller's
    reconnect loop handles it).  A certificate or handshake that fails, or a server that sends
    a TLS alert within ``probe_s`` after it (a refused client certificate) ->
    :class:`P2esError` with :func:`refusal`'s line."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), timeout_s
        )
    except ssl.SSLError as e:  # before OSError: SSLError is one
        raise P2esError(
            refusal(e, what=what, host=host, port=port, ca_option=ca_option, ca_file=ca_file)
        ) from None
    except (OSError, TimeoutError):
        return False
    try:
        # TLS 1.3: a server that refuses the client certificate says so only after the
        # handshake; MQTT and HTTP servers wait for the client, so a short read sees that alert
        await asyncio.wait_for(reader.read(1), probe_s)
    except ssl.SSLError as e:
        writer.close()
        raise P2esError(
            refusal(e, what=what, host=host, port=port, ca_option=ca_option, ca_file=ca_file)
        ) from None
    except (OSError, TimeoutError):
        pass
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    return True


def _spoke_in_clear(first: bytes | None, where: str) -> str | None:
    """The line for a NATS listener whose greeting came in clear (None: it sent none)."""
    if not first:
        return None
    if not first.startswith(b"INFO "):
        return f"{where}: TLS refused: not a NATS listener (it sent {first[:16]!r} in clear)"
    try:
        info = json.loads(first[5:])
    except ValueError:
        info = {}
    if isinstance(info, dict) and (info.get("tls_required") or info.get("tls_available")):
        return (
            f"{where}: TLS refused: the server sends its INFO before the TLS handshake "
            "(set handshake_first: true in the tls block of its client listener: p2es speaks TLS "
            "first, so that nothing is sent before the server's certificate is verified)"
        )
    return (
        f"{where}: TLS refused: this listener offers no TLS (a plain nats:// server, or something "
        "in between that strips TLS); no credential was sent"
    )


async def _clear_greeting(host: str, port: int, timeout_s: float) -> bytes | None:
    """The first line a listener sends in clear on a new connection (None: none in time)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return None
    try:
        return await asyncio.wait_for(reader.readline(), timeout_s) or None
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        writer.close()


async def check_nats_server(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    *,
    what: str = "NATS server",
    ca_option: str = "bus_ca_file",
    ca_file: str | None = None,
    timeout_s: float = 5.0,
    info_timeout_s: float = 2.0,
) -> bool:
    """:func:`check_server` for a NATS client listener with ``tls { handshake_first: true }``.

    p2es's NATS connections speak TLS first (nats-py ``tls_handshake_first``): the TLS
    handshake comes before NATS's ``INFO``/``CONNECT``, so no credential is sent before the
    server's certificate is verified, and a server (or someone in between) that does not offer
    TLS cannot downgrade the connection.  One TLS handshake, then the server's ``INFO`` inside
    TLS (within ``info_timeout_s``): True.  Nobody answers: False (the reconnect loop's
    business).  A certificate that does not verify, a refused client certificate (an alert in
    place of the INFO) -> :class:`P2esError` with :func:`refusal`'s line.  A listener that
    answers in clear (no TLS, or INFO before TLS: a second, plain connection reads its
    greeting to tell which) -> :class:`P2esError` saying what to set."""
    where = f"{what} {host}:{port}"

    def fail(e: ssl.SSLError) -> P2esError:
        return P2esError(refusal(e, what=what, host=host, port=port, ca_option=ca_option, ca_file=ca_file))

    async def in_clear(default: str | None) -> P2esError | None:
        line = _spoke_in_clear(await _clear_greeting(host, port, info_timeout_s), where) or default
        return P2esError(line) if line else None

    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), timeout_s
        )
    except ssl.SSLCertVerificationError as e:
        raise fail(e) from None
    except ssl.SSLError as e:  # not the certificate: did it answer in clear?
        raise (await in_clear(None) or fail(e)) from None
    except ConnectionResetError:  # e.g. a plain listener closing on our TLS hello
        err = await in_clear(None)
        if err is not None:
            raise err from None
        return False
    except (OSError, TimeoutError):
        return False
    try:
        try:
            first = await asyncio.wait_for(reader.readline(), info_timeout_s)
        except ssl.SSLError as e:  # TLS 1.3: a refused client certificate is an alert here
            raise fail(e) from None
        except (OSError, TimeoutError, ValueError):
            first = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    if first.startswith(b"INFO "):
        return True
    err = await in_clear(
        f"{where}: TLS refused: no NATS INFO after the TLS handshake (is it a NATS client listener "
        "with handshake_first: true?)"
    )
    assert err is not None
    raise err


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (for logs and error lines)."""
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in u.netloc:
        return url
    return urllib.parse.urlunsplit(u._replace(netloc="***@" + u.netloc.rsplit("@", 1)[1]))
