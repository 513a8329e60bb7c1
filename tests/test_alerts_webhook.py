"""Webhook signatures (Standard Webhooks), the Alertmanager body and the durable outbox.

The outbox tests post to a real local HTTP server (alerts.receiver.WebhookReceiver) that
verifies every signature; no service is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time

import pytest

from alerts.delivery import WebhookSender, WebhookTarget
from alerts.outbox import Outbox, backoff_delay
from alerts.receiver import WebhookReceiver
from alerts.rules import load_rules_text
from alerts.state import AlertEngine
from alerts.webhook import (
    WebhookVerificationError,
    alertmanager_body,
    decode_secret,
    generate_secret,
    post,
    sign,
    verify,
)

T0 = 1_718_000_000.0
RULES = """
defaults: {repeat: 20s}
rules:
  - {name: hr_high, metric: hr_bpm, op: ">", threshold: 120, for: 8s, clear_threshold: 110,
     labels: {unit: icu}, summary: "HR {value:.0f} bpm", description: "patient {patient}"}
"""


def events(n_breach: int = 14, n_clear: int = 2):
    e = AlertEngine(load_rules_text(RULES))
    out = []
    for i, hr in enumerate([140] * n_breach + [90] * n_clear):
        out += e.observe("bed-9", T0 + 4 * i, {"hr_bpm": hr}, now=float(i))
    return out


# ------------------------------------------------------------------ signature
def test_signature_matches_the_standard_webhooks_test_vector():
    # libraries/python/tests/test_webhooks.py::test_sign_function of
    # github.com/standard-webhooks/standard-webhooks
    sig = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        '{"test": 2432232314}',
    )
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    # the same key without the prefix, and as bytes
    assert (
        sign(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == sig
    )
    hdr = {
        "Webhook-Id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "Webhook-Timestamp": "1614265330",
        "Webhook-Signature": "v2,xyz v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= " + sig,
    }
    verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", hdr, b'{"test": 2432232314}', now=1614265330 + 10)


def test_verify_rejects_tampering_wrong_secret_stale_and_missing_headers():
    secret = generate_secret()
    assert secret.startswith("whsec_") and len(decode_secret(secret)) == 32
    body = b'{"a":1}'
    now = time.time()
    hdr = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now)),
        "webhook-signature": sign(secret, "msg_1", int(now), body),
    }
    verify(secret, hdr, body)
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify(secret, hdr, b'{"a":2}')
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify(generate_secret(), hdr, body)
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify(secret, {**hdr, "webhook-id": "msg_2"}, body)
    with pytest.raises(WebhookVerificationError, match="from now"):
        verify(secret, hdr, body, now=now + 301)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(secret, {"webhook-id": "msg_1"}, body)
    with pytest.raises(ValueError):
        decode_secret("whsec_not base64!")


def test_alertmanager_body_shape():
    firing, *_, resolved = events()
    b = json.loads(alertmanager_body(firing, receiver="ward", external_url="https://p2es.example/"))
    assert b["version"] == "4" and b["status"] == "firing" and b["receiver"] == "ward"
    assert b["groupLabels"] == {"alertname": "hr_high", "patient": "bed-9"}
    assert b["groupKey"] == '{}:{alertname="hr_high", patient="bed-9"}'
    assert b["externalURL"] == "https://p2es.example" and b["truncatedAlerts"] == 0
    (a,) = b["alerts"]
    assert a["labels"] == {"alertname": "hr_high", "patient": "bed-9", "priority": "medium", "unit": "icu"}
    assert a["annotations"]["summary"] == "HR 140 bpm" and a["annotations"]["description"] == "patient bed-9"
    assert a["startsAt"] == "2024-06-10T06:13:28.000Z" and a["endsAt"] == "0001-01-01T00:00:00Z"
    assert a["generatorURL"] == "https://p2es.example/alerts/hr_high" and len(a["fingerprint"]) == 16
    r = json.loads(alertmanager_body(resolved, receiver="ward", external_url=""))
    assert r["status"] == "resolved" and r["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    assert r["alerts"][0]["fingerprint"] == a["fingerprint"]


def test_backoff_is_full_jitter_capped():
    import random

    rng = random.Random(1)
    ds = [backoff_delay(a, 0.5, 4.0, rng) for a in range(12) for _ in range(50)]
    assert min(ds) >= 0 and max(ds) <= 4.0
    assert max(backoff_delay(0, 0.5, 4.0, rng) for _ in range(200)) <= 0.5
    assert backoff_delay(0, 0.5, 4.0, rng, retry_after=3.0) >= 3.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ outbox + sender
def test_receiver_down_then_up_gets_every_notification_in_order_with_stable_ids(tmp_path):
    secret = generate_secret()
    port = _free_port()
    evs = [e for e in events() if e.notify]  # firing, repeat, repeat, resolved
    assert [e.kind for e in evs] == ["firing", "repeat", "repeat", "resolved"]

    async def main():
        ob = Outbox(tmp_path / "ob")
        snd = WebhookSender(
            ob,
            [WebhookTarget("ward", f"http://127.0.0.1:{port}/hook", secret)],
            backoff_base_s=0.05,
            backoff_cap_s=0.2,
            max_age_s=60,
        )
        snd.start()
        for e in evs:
            snd.enqueue(e)
        await asyncio.sleep(0.6)  # nobody listening: connection refused, retried
        refused = ob.counters()["failed_attempts"]
        assert refused >= 2 and ob.pending() == 4
        # up, but answering 503 to the first 3 requests (then 200)
        rx = WebhookReceiver(secret, port=port, respond=lambda n, req: 503 if n < 3 else 200).start()
        try:
            await _wait(lambda: len(rx.accepted) == 4)
        finally:
            await snd.stop()
            rx.stop()
        assert ob.pending() == 0 and ob.counters()["delivered"] == 4 and ob.dead_letters() == []
        return rx

    rx = asyncio.run(main())
    assert all(r.verified for r in rx.received)
    assert [r.json()["alerts"][0]["annotations"]["p2es_event"] for r in rx.accepted] == [
        "firing",
        "repeat",
        "repeat",
        "resolved",
    ]
    first = rx.accepted[0].id
    failed_ids = {r.id for r in rx.received if r.status == 503}
    assert failed_ids == {first}  # head-of-line: the 503s were retries of the first notification
    assert len({r.id for r in rx.accepted}) == 4


def test_permanent_4xx_goes_to_dead_letter_and_the_next_one_is_delivered(tmp_path):
    secret = generate_secret()
    evs = [e for e in events() if e.notify][:2]

    async def main():
        with WebhookReceiver(secret, respond=lambda n, req: 400 if n == 0 else 200) as rx:
            ob = Outbox(tmp_path / "ob")
            snd = WebhookSender(
                ob, [WebhookTarget("w", rx.url, secret)], backoff_base_s=0.05, backoff_cap_s=0.1
            )
            snd.start()
            for e in evs:
                snd.enqueue(e)
            await _wait(lambda: len(rx.accepted) == 1)
            await snd.stop()
            return rx, ob

    rx, ob = asyncio.run(main())
    (dl,) = ob.dead_letters()
    assert dl["reason"].startswith("permanent failure: HTTP 400") and dl["attempts"] == 1
    assert dl["msg_id"] == rx.received[0].id and rx.accepted[0].id != dl["msg_id"]
    assert ob.counters()["dead_letters"] == 1


def test_gives_up_after_max_age(tmp_path):
    secret = generate_secret()
    port = _free_port()  # nobody ever listens

    async def main():
        ob = Outbox(tmp_path / "ob")
        snd = WebhookSender(
            ob,
            [WebhookTarget("w", f"http://127.0.0.1:{port}/", secret)],
            backoff_base_s=0.05,
            backoff_cap_s=0.1,
            max_age_s=0.5,
        )
        snd.start()
        snd.enqueue(events()[0])
        await _wait(lambda: ob.counters()["dead_letters"] == 1)
        await snd.stop()
        return ob

    ob = asyncio.run(main())
    (dl,) = ob.dead_letters()
    assert dl["reason"].startswith("gave up after") and dl["attempts"] >= 2 and ob.pending() == 0


def test_outbox_survives_a_restart_with_the_same_webhook_id(tmp_path):
    secret = generate_secret()
    ev = events()[0]

    async def first():
        with WebhookReceiver(secret, respond=lambda n, req: 503) as rx:
            ob = Outbox(tmp_path / "ob")
            snd = WebhookSender(
                ob, [WebhookTarget("w", rx.url, secret)], backoff_base_s=0.05, backoff_cap_s=0.1
            )
            snd.start()
            (mid,) = snd.enqueue(ev)
            await _wait(lambda: len(rx.received) >= 2)
            await snd.stop()
            ob.close()
            return mid, rx

    mid, rx1 = asyncio.run(first())
    assert {r.id for r in rx1.received} == {mid}

    async def second():
        with WebhookReceiver(secret) as rx:
            ob = Outbox(tmp_path / "ob")  # a new process would open the same file
            assert ob.pending() == 1
            snd = WebhookSender(ob, [WebhookTarget("w", rx.url, secret)], backoff_base_s=0.05)
            snd.start()
            await _wait(lambda: len(rx.accepted) == 1)
            await snd.stop()
            return rx

    rx2 = asyncio.run(second())
    assert rx2.accepted[0].id == mid and rx2.accepted[0].verified


def test_post_reports_network_errors_instead_of_raising():
    res = post(f"http://127.0.0.1:{_free_port()}/", b"{}", "msg_x", generate_secret(), timeout=2)
    assert res.status is None and not res.ok and not res.permanent and res.error
    assert base64.b64decode(sign(generate_secret(), "m", 1, b"").split(",")[1])  # valid base64
