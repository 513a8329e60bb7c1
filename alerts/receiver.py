"""A minimal verifying webhook receiver (stdlib ``http.server``), for trials and tests.

It shows what a receiver must do: read the raw body, :func:`alerts.webhook.verify` it against
the headers with the shared secret, de-duplicate on ``webhook-id``, answer 2xx quickly::

    with WebhookReceiver(secret) as rx:          # listens on 127.0.0.1:<rx.port>
        ...                                      # point p2es at rx.url
        rx.received                              # every request (also failed/duplicate ones)
        rx.accepted                              # verified, answered 2xx, first time per id

``respond`` decides the status per request (default 200); e.g. ``lambda n, req: 503 if n < 3
else 200`` fails the first three attempts.  A receiver started on a fixed ``port`` after p2es
began sending simulates an endpoint that was down.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
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
        respond: Callable[[int, Received], int] | None = None,
    ) -> None:
        self.secret, self.host, self.port, self.path = secret, host, port, path
        self.respond = respond or (lambda n, req: 200)
        self.received: list[Received] = []
        self.accepted: list[Received] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

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
                with rx._lock:
                    status = 401 if err else int(rx.respond(len(rx.received), req))
                    req.status = status
                    if 200 <= status < 300:
                        req.duplicate = req.id in rx._seen
                        if not req.duplicate:
                            rx._seen.add(req.id or "")
                            rx.accepted.append(req)
                    rx.received.append(req)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
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
