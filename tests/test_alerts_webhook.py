"""Webhook signatures (Standard Webhooks), the Alertmanager body and the durable outbox.

The outbox tests post to a real local HTTP server (alerts.receiver.WebhookReceiver) that
verifies every signature; no service is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
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
    check_url,
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


def test_a_resolved_notification_says_it_resolved_with_the_resolving_value():
    """Regression: the resolved webhook re-rendered the firing summary with the resolving value
    ("HR 90 bpm" under status resolved, as if 90 bpm were the alarm).  Now the summary and the
    message say it resolved and with which value; the description shows what had fired."""
    firing, *_, resolved = events()
    assert resolved.kind == "resolved" and resolved.value == 90
    want = "resolved: hr_bpm 90 bpm (<= 110 bpm for 0s); had fired: HR 140 bpm"
    assert resolved.message == want
    ann = json.loads(alertmanager_body(resolved, receiver="ward", external_url=""))["alerts"][0][
        "annotations"
    ]
    assert ann["summary"] == want and ann["message"] == want and ann["value"] == "90"
    assert ann["p2es_event"] == "resolved" and "HR 90 bpm" not in json.dumps(ann)
    assert firing.annotations["summary"] == "HR 140 bpm"  # the firing one is unchanged


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


def test_outbox_survives_a_restart_with_the_same_webhook_id_and_is_retried_at_once(tmp_path):
    """The notification keeps its webhook-id across a restart, and the restarted sender tries it
    at once although the receiver had asked for 300 s (Retry-After) before the restart.
    Regression: it waited out the saved retry time (up to 300 s) with the receiver back."""
    secret = generate_secret()
    ev = events()[0]

    async def first():
        with WebhookReceiver(secret, respond=lambda n, req: (503, {"Retry-After": "300"})) as rx:
            ob = Outbox(tmp_path / "ob")
            snd = WebhookSender(
                ob, [WebhookTarget("w", rx.url, secret)], backoff_base_s=0.05, backoff_cap_s=300
            )
            snd.start()
            (mid,) = snd.enqueue(ev)
            await _wait(lambda: ob.counters()["failed_attempts"] == 1)
            await asyncio.sleep(0.3)  # no second attempt: the receiver asked for 300 s
            await snd.stop()
            row = ob.head("w")
            ob.close()
            return mid, rx, row

    mid, rx1, row = asyncio.run(first())
    assert [r.id for r in rx1.received] == [mid]
    assert row is not None and row.attempts == 1 and row.next_attempt - time.time() > 250

    async def second():
        with WebhookReceiver(secret) as rx:
            ob = Outbox(tmp_path / "ob")  # a new process would open the same file
            assert ob.pending() == 1
            snd = WebhookSender(ob, [WebhookTarget("w", rx.url, secret)], backoff_base_s=0.05)
            t0 = time.monotonic()
            snd.start()
            await _wait(lambda: len(rx.accepted) == 1, timeout=5)
            took = time.monotonic() - t0
            await snd.stop()
            return rx, took

    rx2, took = asyncio.run(second())
    assert rx2.accepted[0].id == mid and rx2.accepted[0].verified and took < 3


def test_post_reports_network_errors_instead_of_raising():
    res = post(f"http://127.0.0.1:{_free_port()}/", b"{}", "msg_x", generate_secret(), timeout=2)
    assert res.status is None and not res.ok and not res.permanent and res.error
    assert base64.b64decode(sign(generate_secret(), "m", 1, b"").split(",")[1])  # valid base64


# ------------------------------------------------------------------ webhook defects (issue #15)
BAD_URLS = [
    "http://host:notaport/x",  # port not a number
    "http://ho st/x",  # a space in the host
    "http://[::1/x",  # IPv6 literal not closed
    "http://[fe80::zz]/x",  # not an IPv6 address
    "http://",  # no host
    "http://:8080/x",  # no host, a port
    "http://host:70000/x",  # port out of range
    "ftp://host/x",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_check_url_refuses_malformed_urls(url):
    with pytest.raises(ValueError, match="webhook url"):
        check_url(url)


def test_check_url_accepts_real_ones():
    for url in (
        "https://pager.example/hook",
        "http://127.0.0.1:18000/hook?x=1",
        "http://[::1]:8080/am",
        "https://hooks.ward-3.example.org./p2es",
    ):
        assert check_url(url) == url


def test_malformed_webhook_url_or_unprefixed_secret_is_refused_at_start_up_in_one_line(capsys, monkeypatch):
    """`p2es alerts run` refuses each malformed URL and a secret without whsec_ with one
    `p2es: error:` line and exit 2, before anything starts; the secret is never echoed."""
    from p2es.cli import main

    secret = generate_secret()
    monkeypatch.setenv("P2ES_WEBHOOK_SECRET", secret)
    for url in BAD_URLS:
        capsys.readouterr()
        assert main(["alerts", "run", "--webhook", url, "--influx-url", "none"]) == 2, url
        err = capsys.readouterr().err
        assert err.startswith("p2es: error: bad alerts setting webhooks.0.url: ") and err.count("\n") == 1, (
            url,
            err,
        )
        assert "Traceback" not in err
    bare = secret.removeprefix("whsec_")  # valid base64 of 32 bytes, but no prefix
    monkeypatch.setenv("P2ES_WEBHOOK_SECRET", bare)
    capsys.readouterr()
    assert main(["alerts", "run", "--webhook", "http://127.0.0.1:9/x", "--influx-url", "none"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "p2es: error: webhook cli-0: env P2ES_WEBHOOK_SECRET: a webhook secret must start with "
        "whsec_ (make one with 'p2es alerts new-secret')\n"
    )
    assert bare not in err
    # a malformed InfluxDB URL of the alert service is refused the same way
    monkeypatch.setenv("P2ES_WEBHOOK_SECRET", secret)
    assert main(["alerts", "run", "--influx-url", "http://influx:eighty/"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("p2es: error: bad alerts setting influx_url: ") and err.count("\n") == 1


def test_every_delivery_error_is_a_counted_attempt_that_backs_off_expires_and_blocks_nothing(
    tmp_path, caplog
):
    """Regression: a URL that passed the old prefix check but made urllib raise
    (http.client.InvalidURL, "no host given", a space in the host) was never counted as an
    attempt, never backed off, never expired, logged a traceback every second and blocked every
    later notification to that receiver.  Now each error is a failed attempt: backed off,
    dead-lettered at max_age, the next notification proceeds; a good receiver next to them gets
    everything; no traceback is logged."""
    secret = generate_secret()
    evs = [e for e in events() if e.notify][:2]
    bad = {"notaport": "http://host:notaport/x", "nohost": "http://", "space": "http://ho st/x"}
    assert [post(u, b"{}", "msg_x", secret, timeout=1).error is not None for u in bad.values()] == [True] * 3

    async def main():
        with WebhookReceiver(secret) as rx:
            ob = Outbox(tmp_path / "ob")
            targets = [WebhookTarget(n, u, secret) for n, u in bad.items()]
            targets.append(WebhookTarget("good", rx.url, secret))
            # a webhook whose secret cannot sign (built around the config's check): also an attempt
            targets.append(WebhookTarget("badsecret", rx.url, "whsec_not base64!"))
            snd = WebhookSender(ob, targets, backoff_base_s=0.05, backoff_cap_s=0.1, max_age_s=0.6)
            snd.start()
            for e in evs:
                snd.enqueue(e)
            await _wait(lambda: ob.counters()["dead_letters"] == 8 and len(rx.accepted) == 2)
            await snd.stop()
            return rx, ob

    with caplog.at_level(logging.WARNING, logger="p2es.alerts.delivery"):
        rx, ob = asyncio.run(main())
    assert [r.json()["alerts"][0]["annotations"]["p2es_event"] for r in rx.accepted] == ["firing", "repeat"]
    dls = ob.dead_letters()
    assert sorted({d["webhook"] for d in dls}) == ["badsecret", "nohost", "notaport", "space"]
    for name in ("badsecret", "nohost", "notaport", "space"):
        mine = [d for d in dls if d["webhook"] == name]
        assert len(mine) == 2, name  # the second notification was not blocked by the first
        assert all(d["reason"].startswith("gave up after") and d["attempts"] >= 1 for d in mine), mine
        # the first was retried (counted, backed off) until max_age; the second, queued behind
        # it for those 0.6 s, may reach max_age after its first attempt -- but it gets one
        assert max(d["attempts"] for d in mine) >= 2, mine
    assert "InvalidURL" in next(d["reason"] for d in dls if d["webhook"] == "notaport")
    assert ob.pending() == 0 and ob.counters()["failed_attempts"] >= 8
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not any("unexpected error" in r.getMessage() for r in caplog.records)


def test_redirects_are_not_followed(tmp_path):
    """A receiver answering 302 (urllib would re-send it as a GET to the new location and count
    that 200 as delivered) or 307: the redirect is not followed, the attempt failed and is
    retried; the redirect target sees nothing."""
    secret = generate_secret()
    ev = events()[0]

    async def main(code: int):
        with WebhookReceiver(secret) as elsewhere:
            with WebhookReceiver(secret, respond=lambda n, r: (code, {"Location": elsewhere.url})) as rx:
                ob = Outbox(tmp_path / f"ob{code}")
                snd = WebhookSender(
                    ob, [WebhookTarget("w", rx.url, secret)], backoff_base_s=0.05, backoff_cap_s=0.1
                )
                snd.start()
                snd.enqueue(ev)
                await _wait(lambda: ob.counters()["failed_attempts"] >= 2)
                await snd.stop()
                return rx, elsewhere, ob, snd.last_error["w"]

    for code in (302, 307):
        rx, elsewhere, ob, err = asyncio.run(main(code))
        assert elsewhere.received == [] and ob.pending() == 1 and ob.counters()["delivered"] == 0
        assert all(r.status == code and r.verified for r in rx.received)
        assert err == f"HTTP {code}: redirect to {elsewhere.url} not followed"


# ------------------------------------------------------------------ stable webhook-id (issue #15)
def _firing_twice():
    """The firing event of ``events()``, made twice: by an engine that saw every vitals window,
    and by a second engine restored from the state saved just before the firing window (what a
    restarted service does when the broker delivers that window again)."""
    from alerts.state import AlertEngine

    e = AlertEngine(load_rules_text(RULES))
    for i in range(14):
        saved = e.to_dict()
        out = e.observe("bed-9", T0 + 4 * i, {"hr_bpm": 140}, now=float(i))
        if out:
            break
    again = AlertEngine(load_rules_text(RULES))
    again.restore(json.loads(json.dumps(saved)), now=float(i))
    return out, again.observe("bed-9", T0 + 4 * i, {"hr_bpm": 140}, now=float(i))


def test_webhook_id_is_derived_from_the_event():
    from alerts.webhook import event_message_id

    evs = [e for e in events() if e.notify]  # firing, repeat, repeat, resolved
    ids = [event_message_id("ward", e) for e in evs]
    assert all(len(i) == 36 and i.startswith("msg_") and set(i[4:]) <= set("0123456789abcdef") for i in ids)
    assert len(set(ids)) == 4  # four notifications, four ids
    assert ids == [event_message_id("ward", e) for e in evs]  # the same event, the same id
    assert set(ids).isdisjoint(event_message_id("pager", e) for e in evs)  # per webhook
    first, second = _firing_twice()
    assert [e.kind for e in first] == [e.kind for e in second] == ["firing"]
    assert first[0] is not second[0]
    assert event_message_id("ward", first[0]) == event_message_id("ward", second[0]) == ids[0]


def test_the_same_event_twice_is_one_outbox_row_and_one_notification(tmp_path):
    """Enqueued twice while pending: one row (the second insert is ignored and counted).
    Enqueued again after delivery: delivered again with the same webhook-id, so a receiver
    that de-duplicates on the id sees it once."""
    secret = generate_secret()
    first, second = _firing_twice()
    ob = Outbox(tmp_path / "ob")
    assert ob.enqueue("w", "msg_" + "1" * 32, b"{}") > 0
    assert ob.enqueue("w", "msg_" + "1" * 32, b"{}") == 0
    assert ob.pending() == 1 and ob.counters()["duplicates_ignored"] == 1
    ob.close()

    async def main():
        with WebhookReceiver(secret) as rx:
            ob = Outbox(tmp_path / "ob2")
            snd = WebhookSender(ob, [WebhookTarget("w", rx.url, secret)], backoff_base_s=0.05)
            ids = snd.enqueue(first[0]) + snd.enqueue(second[0])
            assert ob.pending() == 1 and ob.counters()["duplicates_ignored"] == 1
            snd.start()
            await _wait(lambda: len(rx.received) == 1)
            snd.enqueue(second[0])  # delivered already: stored and sent once more ...
            await _wait(lambda: len(rx.received) == 2)
            await snd.stop()
            c = ob.counters()
            ob.close()
            return ids, rx, c

    ids, rx, c = asyncio.run(main())
    assert ids[0] == ids[1]
    assert [r.id for r in rx.received] == [ids[0], ids[0]] and all(r.verified for r in rx.received)
    assert len(rx.accepted) == 1 and rx.received[1].duplicate  # ... and de-duplicated by the id
    assert c["enqueued"] == 2 and c["delivered"] == 2 and c["pending"] == 0
