"""TLS for every p2es client connection: the one place that builds an ``ssl.SSLContext``.

Used by the MQTT clients (``mqtts://``: engine, alert service, simulator, alert commands), the
InfluxDB writer (``https://``) and the webhook sender (``https://``).  Verification is always
on -- the server's certificate must chain to the configured CA file (or, without one, to the
system trust store) and must name the host connected to; there is no setting that turns either
check off.  Minimum protocol TLS 1.2.  A client certificate (``cert_file`` + ``key_file``) is
what a device presents to a broker listener with ``require_certificate`` and
``use_identity_as_username`` (``deploy/tls.md``).

:func:`check_server` is the start-up check: one TLS handshake with the service's own context, so
that a wrong CA file or a wrong host name stops the service with one line
(:class:`p2es.errors.P2esError`) instead of a reconnect loop; a server that does not answer is
left to that loop (it may simply be starting).  :func:`redact_url` is what a log line may show
of a URL (no ``user:password@``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import urllib.parse
from pathlib import Path

from p2es.errors import P2esError

__all__ = ["client_context", "server_context", "check_server", "refusal", "redact_url"]

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


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (for logs and error lines)."""
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in u.netloc:
        return url
    return urllib.parse.urlunsplit(u._replace(netloc="***@" + u.netloc.rsplit("@", 1)[1]))
