"""A minimal verifying webhook receiver (stdlib ``http.server``), for trials and tests.

It shows what a receiver must do: read the raw body, :func:`alerts.webhook.verify` it against
the headers with the shared secret, de-duplicate on ``webhook-id``, answer 2xx quickly::

    with WebhookReceiver(secret) as rx:          # listens on 127.0.0.1:<rx.port>
        ...                                      # point p2es at rx.url
        rx.received                              # every request (also failed/duplicate ones)
        rx.accepted                              # verified, answered 2xx, first time per id

``respond`` decides the status per request (default 200); e.g. ``lambda n, req: 503 if n < 3
else 200`` fails the first three attempts.  It may also return ``(status, headers)``, e.g.
``(503, {"Retry-After": "300"})`` or ``(302, {"Location": other.url})``.  A GET (what a
client that followed a redirect would send) is recorded in ``received`` with ``method`` "GET"
and answered 200 like a naive endpoint would, never accepted.  A receiver started on a fixed ``port`` after p2es
began sending simulates an endpoint that was down.  With ``ssl_context`` (a server context,
e.g. :func:`p2es.transport.tls.server_context`) it serves HTTPS and :attr:`url` is
``https://<server_name>:<port>/...`` -- the name its certificate carries.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from alerts.webhook import WebhookVerificationError, verify

__all__ = ["Received", "WebhookReceiver"]


@dataclass
class Received:
    id: str | None
    timestamp: str | None
    signature: str | None
    body: bytes
    verified: bool
    error: str | None
    status: int
    duplicate: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(
        self,
        secret: str,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        path: str = "/hook",
        respond: Callable[[int, Received], int | tuple[int, Mapping[str, str]]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.secret, self.host, self.port, self.path = secret, host, port, path
        self.ssl_context = ssl_context
        self.server_name = server_name or host  # the host part of url
        self.connection_errors = 0  # connections that failed in a handler (e.g. a TLS handshake)
        self.respond: Callable[[int, Received], int | tuple[int, Mapping[str, str]]] = respond or (
            lambda n, req: 200
        )
        self.received: list[Received] = []
        self.accepted: list[Received] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.server_name}:{self.port}{self.path}"

    def start(self) -> WebhookReceiver:
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                hdr = {k.lower(): v for k, v in self.headers.items()}
                err = None
                try:
                    verify(rx.secret, hdr, body)
                except WebhookVerificationError as e:
                    err = str(e)
                req = Received(
                    hdr.get("webhook-id"),
                    hdr.get("webhook-timestamp"),
                    hdr.get("webhook-signature"),
                    body,
                    err is None,
                    err,
                    0,
                    headers=hdr,
                )
                extra: Mapping[str, str] = {}
                with rx._lock:
                    if err:
                        status = 401
                    else:
                        answer = rx.respond(len(rx.received), req)
                        status, extra = answer if isinstance(answer, tuple) else (answer, {})
                    req.status = status
                    if 200 <= status < 300:
                        req.duplicate = req.id in rx._seen
                        if not req.duplicate:
                            rx._seen.add(req.id or "")
                            rx.accepted.append(req)
                    rx.received.append(req)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
                hdr = {k.lower(): v for k, v in self.headers.items()}
                req = Received(
                    hdr.get("webhook-id"), None, None, b"", False, "GET", 200, headers=hdr, method="GET"
                )
                with rx._lock:
                    rx.received.append(req)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:  # quiet, counted
                with rx._lock:
                    rx.connection_errors += 1

        self._server = Server((self.host, self.port), Handler)
        self._server.daemon_threads = True
        if self.ssl_context is not None:  # the handshake runs in the request's thread
            self._server.socket = self.ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
