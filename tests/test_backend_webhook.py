"""The ``webhook`` backend: its HTTP binding without a server, then against a
real HTTP receiver on loopback (``webhook_receiver.py``) that answers
errors, stalls and verifies Standard Webhooks signatures."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dask
import h2.config
import h2.connection
import h2.events
import pytest
from cloudevents.core.formats.json import JSONFormat
from distributed.utils_test import gen_test
from helpers import (
    FAST_RETRY,
    make_certificates,
    not_for_publishing,
    publisher_process_imports,
    reachable,
    tls_server_context,
)
from jsonschema import Draft202012Validator, FormatChecker
from standardwebhooks import Webhook
from webhook_receiver import WebhookReceiver

from dask_eventbus import Backend, EventBusPlugin, __version__, create_backend
from dask_eventbus.backends import Message, Refused
from dask_eventbus.bindings.http import (
    request,
    request_end,
    retry_after,
    retryable,
    signature,
    signing_key,
)
from dask_eventbus.config import ConfigError, load_settings
from dask_eventbus.events import DROPPED, load_shipped_schema
from dask_eventbus.normalize import Normalizer
from dask_eventbus.publisher import Publisher
from dask_eventbus.testing import (
    FaultProxy,
    free_port,
    publish_batches,
    run_workload,
    synthetic_messages,
)

pytestmark = pytest.mark.timeout(180)

SECRET = "whsec_" + base64.b64encode(b"a signing key of 24 bytes").decode()
CLI = str(Path(sys.executable).parent / "dask-eventbus")

# ------------------------------------------------------------ the binding, no server


def test_signatures_verify_with_the_standardwebhooks_library() -> None:
    messages = synthetic_messages(3)
    key = signing_key(SECRET)
    for made in (
        request(messages[:1], batched=False, key=key),
        request(messages, batched=True, key=key),
    ):
        assert Webhook(SECRET).verify(made.body, made.headers, json_parse=False) is None
        # The library reads the secret without its prefix alike.
        Webhook(SECRET.removeprefix("whsec_")).verify(made.body, made.headers, json_parse=False)
        assert made.headers["webhook-signature"].startswith("v1,")
    assert (
        signing_key(SECRET)
        == signing_key(SECRET.removeprefix("whsec_"))
        == b"a signing key of 24 bytes"
    )
    # The Standard Webhooks specification's own example.
    spec_key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert (
        signature(spec_key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_bad_secrets_are_refused() -> None:
    for bad in ("whsec_", "whsec_not base64!", ""):
        with pytest.raises(ValueError, match="secret"):
            signing_key(bad)


def test_requests_have_the_cloudevents_http_shape() -> None:
    messages = synthetic_messages(3)
    one = request(messages[:1], batched=False)
    assert one.body == messages[0].body
    assert one.headers == {"content-type": "application/cloudevents+json"}
    batch = request(messages, batched=True)
    assert batch.headers == {"content-type": "application/cloudevents-batch+json"}
    assert [e["id"] for e in json.loads(batch.body)] == [m.id for m in messages]
    signed = request(messages, batched=True, key=b"k", now=1_700_000_000.7)
    assert signed.headers["webhook-timestamp"] == "1700000000"
    assert signed.headers["webhook-id"] == f"{messages[0].id}..{messages[-1].id}"
    assert request(messages[:1], batched=False, key=b"k").headers["webhook-id"] == messages[0].id


def test_batches_are_cut_to_max_bytes() -> None:
    messages = synthetic_messages(10)
    three = len(request(messages[:3], batched=True).body)
    assert three == 2 + sum(len(m.body) for m in messages[:3]) + 2
    assert request_end(messages, 0, batched=False, max_bytes=1) == 1
    assert request_end(messages, 0, batched=True, max_bytes=10**9) == 10
    assert request_end(messages, 0, batched=True, max_bytes=three) == 3
    assert request_end(messages, 0, batched=True, max_bytes=three - 1) == 2
    assert request_end(messages, 4, batched=True, max_bytes=three) == 7
    assert request_end(messages, 0, batched=True, max_bytes=1) == 1  # a large event goes alone


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None and retry_after("soon") is None and retry_after("-3") is None
    now = time.time()
    later = format_datetime(datetime.fromtimestamp(now + 30, timezone.utc), usegmt=True)
    assert 28.0 <= retry_after(later, now=now) <= 30.0  # type: ignore[operator]
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert [s for s in (200, 400, 401, 404, 408, 409, 413, 422, 429, 500, 503) if retryable(s)] == [
        408,
        429,
        500,
        503,
    ]


# ------------------------------------------------------------ against a receiver


@pytest.fixture
def publisher() -> Iterator[Callable[[Backend], Publisher]]:
    """Makes the pipeline's publisher (retry, backoff, refusals) over a
    backend; closes their backends afterwards."""
    settings = load_settings({"retry": {"initial-backoff": "50ms", "max-backoff": "300ms"}})
    made: list[Publisher] = []

    def make(backend: Backend) -> Publisher:
        made.append(Publisher(backend, Normalizer("/tests/webhook", "webhook-test"), settings))
        return made[-1]

    yield make
    for each in made:
        each.finish()


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


def send_once(options: dict[str, Any], *batches: list[Message]) -> None:
    """Send each batch through a webhook backend made with ``options``."""
    publish_batches(create_backend("webhook", options), batches)


@pytest.mark.parametrize("mode", ["structured", "batched"])
def test_signed_requests_arrive_verified_over_one_kept_alive_connection(mode: str) -> None:
    messages = synthetic_messages(120)
    with WebhookReceiver(secret=SECRET) as receiver:
        backend = create_backend(
            "webhook",
            {
                "url": receiver.url,
                "secret": SECRET,
                "content-mode": mode,
                "max-batch-bytes": 5_000,
            },
        )
        backend.open()
        try:
            for start in range(0, 120, 40):
                backend.send(messages[start : start + 40])
        finally:
            backend.close()
        assert not receiver.bad_signatures
        assert ids(receiver.events()) == [m.id for m in messages]
        assert receiver.connections == 1
        expected = (
            "application/cloudevents+json"
            if mode == "structured"
            else "application/cloudevents-batch+json"
        )
        assert {r.headers["content-type"] for r in receiver.requests} == {expected}
        if mode == "structured":
            assert len(receiver.requests) == 120
        else:  # 40 events of about 350 bytes do not fit in 5 kB
            assert 6 <= len(receiver.requests) < 40
            assert all(len(r.body) <= 5_000 for r in receiver.requests)


def test_429_waits_as_long_as_retry_after_says(publisher: Callable[[Backend], Publisher]) -> None:
    messages = synthetic_messages(5)
    with WebhookReceiver() as receiver:
        receiver.script.append((429, {"Retry-After": "1"}, b"slow down"))
        sending = publisher(create_backend("webhook", {"url": receiver.url}))
        assert sending.deliver(messages)
        first, second = receiver.requests[0], receiver.requests[1]
        assert (first.status, second.status) == (429, 200)
        assert second.at - first.at >= 0.95  # the backoff alone would be 50 ms
        assert ids(receiver.events()) == [m.id for m in messages]
        assert sending.stats.retries == 1 and "slow down" in (sending.stats.last_error or "")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["structured", "batched"])
def test_503_bursts_lose_nothing_and_resume_after_what_was_answered(
    mode: str, publisher: Callable[[Backend], Publisher]
) -> None:
    messages = synthetic_messages(60)
    with WebhookReceiver() as receiver:
        calls = [0]

        def flaky(body: bytes) -> tuple[int, dict[str, str], bytes] | None:
            calls[0] += 1
            return (503, {}, b"busy") if calls[0] % 10 < 2 else None

        receiver.answer = flaky
        options = {"url": receiver.url, "content-mode": mode, "max-batch-bytes": 5_000}
        sending = publisher(create_backend("webhook", options))
        for start in range(0, 60, 20):
            assert sending.deliver(messages[start : start + 20])
        # Requests answered before a 503 are not sent again: no duplicates.
        assert ids(receiver.events()) == [m.id for m in messages]
        assert sending.stats.retries >= 1 and sending.stats.published == 60


def test_413_makes_requests_smaller_and_refuses_an_event_still_too_large(
    publisher: Callable[[Backend], Publisher],
) -> None:
    messages = synthetic_messages(50)
    size = len(messages[0].body)
    with WebhookReceiver(max_body=8 * size) as receiver:
        options = {"url": receiver.url, "content-mode": "batched"}
        sending = publisher(create_backend("webhook", options))
        assert sending.deliver(messages)
        assert ids(receiver.events()) == [m.id for m in messages]
        statuses = [r.status for r in receiver.requests]
        assert statuses.count(413) <= 4 and statuses[-1] == 200
        accepted = [r for r in receiver.requests if r.status == 200]
        assert all(len(r.body) <= 8 * size for r in accepted)
        assert sending.stats.refused == 0 and sending.stats.retries == 0

        receiver.max_body = None
        receiver.answer = lambda body: (
            (413, {}, b"too large")
            if b"too-large" in body and DROPPED.encode() not in body
            else None
        )
        before = len(receiver.events())
        assert sending.deliver(synthetic_messages(2, run_id="too-large"))
        assert sending.stats.refused == 2
        (announced,) = receiver.events()[before:]
        assert announced["type"] == DROPPED
        assert announced["data"] == {
            "count": 2,
            "first_sequence": 1,
            "last_sequence": 2,
            "policy": "refused",
        }


def test_400_is_refused_counted_announced_and_logged_without_the_secret(
    caplog: pytest.LogCaptureFixture, publisher: Callable[[Backend], Publisher]
) -> None:
    messages = synthetic_messages(20)
    refused_ids = {messages[4].id, messages[5].id, messages[11].id}
    with WebhookReceiver(secret=SECRET) as receiver:

        def picky(body: bytes) -> tuple[int, dict[str, str], bytes] | None:
            event = json.loads(body)
            if event["id"] in refused_ids and event["type"] != DROPPED:
                return 400, {}, b'{"error": "schema mismatch in field data.start"}' + b" x" * 500
            return None

        receiver.answer = picky
        options = {
            "url": receiver.url,
            "secret": SECRET,
            "headers": {"Authorization": "Bearer s3cret-token"},
        }
        backend = create_backend("webhook", options)
        sending = publisher(backend)
        with caplog.at_level(logging.WARNING, logger="distributed.eventbus"):
            assert sending.deliver(messages)
        assert sending.stats.refused == 3 and sending.stats.retries == 0
        assert sending.stats.published == 17 + 2  # and the two announcements
        events = receiver.events()
        delivered = [e for e in events if e["type"] != DROPPED]
        assert ids(delivered) == [m.id for m in messages if m.id not in refused_ids]
        announced = [e["data"] for e in events if e["type"] == DROPPED]
        assert announced == [
            {"count": 2, "first_sequence": 5, "last_sequence": 6, "policy": "refused"},
            {"count": 1, "first_sequence": 12, "last_sequence": 12, "policy": "refused"},
        ]
        # In the refused events' own source and run (a spool may hold another
        # scheduler's), taking the number and id of each run's last one.
        assert [(e["source"], e["id"]) for e in events if e["type"] == DROPPED] == [
            (messages[5].source, messages[5].id),
            (messages[11].source, messages[11].id),
        ]
        assert [r.status for r in receiver.requests].count(400) == 3  # never retried
        (logged,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert "HTTP 400 Bad Request" in logged and "schema mismatch in field data.start" in logged
        assert len(logged) < 1000
        text = caplog.text + repr(backend) + repr(backend.options) + str(sending.stats.last_error)
        for secret in ("s3cret-token", SECRET, SECRET.removeprefix("whsec_")):
            assert secret not in text


def test_a_receiver_outage_loses_nothing(publisher: Callable[[Backend], Publisher]) -> None:
    messages = synthetic_messages(30)
    with WebhookReceiver() as receiver, FaultProxy(("127.0.0.1", receiver.port)) as proxy:
        url = receiver.url.replace(str(receiver.port), str(proxy.port))
        sending = publisher(create_backend("webhook", {"url": url, "timeout": "1s"}))
        assert sending.deliver(messages[:10])
        proxy.set_mode("refuse")
        proxy.cut()
        done = threading.Event()
        worker = threading.Thread(target=lambda: (sending.deliver(messages[10:]), done.set()))
        worker.start()
        time.sleep(1.0)
        assert not done.is_set() and sending.stats.publish_errors >= 2
        assert "cannot connect to the webhook receiver at 127.0.0.1" in (
            sending.stats.last_error or ""
        )
        proxy.set_mode("pass")
        worker.join(10)
        assert done.is_set()
        assert ids(receiver.events()) == [m.id for m in messages]


def test_a_stalled_receiver_times_out_and_is_retried(
    publisher: Callable[[Backend], Publisher],
) -> None:
    messages = synthetic_messages(3)
    with WebhookReceiver() as receiver:
        receiver.stalled.set()
        backend = create_backend("webhook", {"url": receiver.url, "publish-timeout": "300ms"})
        backend.open()
        try:
            with pytest.raises(Exception) as info:
                backend.send(messages)
            explained = backend.explain(info.value)
            assert "did not answer in time (connect-timeout 10s, publish-timeout 0.3s)" in explained
        finally:
            backend.close()
        receiver.stalled.clear()
        assert publisher(create_backend("webhook", {"url": receiver.url})).deliver(messages)
        assert set(ids(receiver.events())) == {m.id for m in messages}


def test_options_are_checked_and_secrets_masked_in_config_output() -> None:
    with pytest.raises(
        ConfigError, match=r"eventbus\.backends\.webhook.*headers may not set webhook-id"
    ):
        create_backend("webhook", {"headers": {"webhook-id": "x"}})
    with pytest.raises(ConfigError, match="tls server-hostname cannot be used with httpx"):
        create_backend("webhook", {"url": "https://h/", "tls": {"server-hostname": "x"}})
    env = {
        **os.environ,
        "DASK_EVENTBUS__BACKENDS__WEBHOOK__SECRET": SECRET,
        "DASK_EVENTBUS__BACKENDS__WEBHOOK__HEADERS": '{"X-Api-Key": "k3y-value-123"}',
    }
    shown = subprocess.run(
        [CLI, "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "webhook" in shown.stdout and "X-Api-Key" in shown.stdout
    assert SECRET not in shown.stdout and "k3y-value-123" not in shown.stdout


def test_certificates_are_verified_wherever_tls_may_be_spoken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    plain = create_backend("webhook", {"url": "http://127.0.0.1:9/"})
    assert not plain._tls_possible()
    assert create_backend("webhook", {"url": "HTTPS://127.0.0.1:9/"})._tls_possible()
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.example:3128")
    assert plain._tls_possible()


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def without_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_the_publisher_process_does_not_import_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    without_proxies(monkeypatch)
    with WebhookReceiver(secret=SECRET) as receiver:
        backend = create_backend("webhook", {"url": receiver.url, "secret": SECRET})
        imported = publisher_process_imports(backend)
        assert "dask_eventbus.backends.webhook" in imported
        # Imported, httpx (with rich, click and h2) would take most of the process's start.
        assert not_for_publishing(imported, "httpx", "h2", "urllib.request") == []
        assert [e["type"] for e in receiver.events()] == ["dask.log"]
        assert not receiver.bad_signatures


def test_a_connection_the_receiver_closed_while_idle_is_made_anew_without_an_error() -> None:
    messages = synthetic_messages(6)
    with WebhookReceiver() as receiver, FaultProxy(("127.0.0.1", receiver.port)) as proxy:
        backend = create_backend("webhook", {"url": f"http://127.0.0.1:{proxy.port}/"})
        backend.open()
        try:
            backend.send(messages[:3])
            proxy.cut()  # as a receiver closes a kept-alive connection it finds idle
            backend.send(messages[3:])
        finally:
            backend.close()
        assert ids(receiver.events()) == [m.id for m in messages]
        assert receiver.connections == 2


def test_a_user_agent_of_ones_own_replaces_the_backends_and_odd_charsets_are_read() -> None:
    with WebhookReceiver() as receiver:
        send_once({"url": receiver.url}, synthetic_messages(1))
        send_once({"url": receiver.url, "headers": {"user-agent": "mine/1"}}, synthetic_messages(1))
        agents = [r.headers["user-agent"] for r in receiver.requests]
        assert agents[0].startswith("dask-eventbus/") and agents[1] == "mine/1"
        receiver.answer = lambda body: (400, {"content-type": "text/plain; charset=x-no"}, b"no")
        with pytest.raises(Refused, match=r"HTTP 400 Bad Request from .*: no$"):
            send_once({"url": receiver.url}, synthetic_messages(1))


def test_a_url_with_spaces_and_accents_is_sent_percent_encoded() -> None:
    with WebhookReceiver() as receiver:
        url = receiver.url.rstrip("/") + '/événements du {jour}?équipe=a b&q="x"|y'
        send_once({"url": url}, synthetic_messages(1))
        [received] = receiver.requests
        # As httpx 0.29 sends it (0.25 encoded the "|" too); decoded, as written.
        assert received.target.endswith(
            "/%C3%A9v%C3%A9nements%20du%20%7Bjour%7D?%C3%A9quipe=a%20b&q=%22x%22|y"
        )
        parts = urlsplit(url)
        assert unquote(received.target) == f"{parts.path}?{parts.query}"


def test_a_proxy_from_the_environment_carries_the_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_proxies(monkeypatch)
    messages = synthetic_messages(3)
    with WebhookReceiver() as receiver:
        # The receiver plays the proxy: the url's own host does not resolve.
        monkeypatch.setenv("HTTP_PROXY", receiver.url)
        send_once({"url": "http://events.invalid/dask"}, messages)
        assert ids(receiver.events()) == [m.id for m in messages]
        assert [r.headers["host"] for r in receiver.requests] == ["events.invalid"] * 3
        # httpx carries them, with the backend's User-Agent, not httpx's own.
        assert {r.headers["user-agent"] for r in receiver.requests} == {
            f"dask-eventbus/{__version__}"
        }


def test_check_publishes_a_probe_and_says_the_backend_is_publish_only() -> None:
    with WebhookReceiver(secret=SECRET) as receiver:
        result = subprocess.run(
            [CLI, "check", "-b", "webhook", "-o", f"url={receiver.url}", "-o", f"secret={SECRET}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "publishing a probe event ... ok" in result.stdout
        assert "publish-only, so it was not read back" in result.stdout
        (probe,) = receiver.events()
        assert probe["type"] == "dask.eventbus.probe" and probe["subject"] in result.stdout
        assert not receiver.bad_signatures and SECRET not in result.stdout

        receiver.answer = lambda body: (401, {}, b"who are you?")
        result = subprocess.run(
            [CLI, "check", "-b", "webhook", "-o", f"url={receiver.url}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "refused 1 events for good" in result.stderr and "HTTP 401" in result.stderr


@pytest.mark.parametrize("mode", ["thread", "process"])
@gen_test(timeout=120)
async def test_a_real_cluster_arrives_complete_in_order_valid_and_signed(mode: str) -> None:
    validator = Draft202012Validator(load_shipped_schema(), format_checker=FormatChecker())
    with WebhookReceiver(secret=SECRET) as receiver:
        # The user's log event is refused: counted, announced, the rest goes on.
        receiver.answer = lambda body: (422, {}, b"no thanks") if b"user-topic" in body else None
        with dask.config.set({"eventbus.pipeline.mode": mode, **FAST_RETRY}):
            plugin = EventBusPlugin("webhook", url=receiver.url, secret=SECRET)
        assert plugin.mode == mode
        await run_workload(plugin)
        stats = plugin.stats()
        bodies = [r.body for r in receiver.requests if r.status == 200]
    assert not receiver.bad_signatures
    assert stats["refused"] == 1 and stats["undelivered"] == 0 and stats["dropped"] == 0, stats
    fmt = JSONFormat()
    events = []
    for body in bodies:
        assert fmt.read(None, body).get_specversion() == "1.0"
        document = json.loads(body)
        assert not list(validator.iter_errors(document))
        events.append(document)
    (announced,) = [e for e in events if e["type"] == DROPPED]
    assert announced["data"]["policy"] == "refused" and announced["data"]["count"] == 1
    # The announcement takes the refused event's number and follows its batch.
    sequences = [int(e["sequence"]) for e in events if e is not announced]
    assert sequences == sorted(sequences), "out of order"
    numbers = sorted([*sequences, int(announced["sequence"])])
    assert numbers == list(range(1, len(events) + 1)), "lost or duplicated"
    assert [e for e in events if e is not announced][-1]["type"] == "dask.scheduler.closing"
    assert stats["published"] == len(events)


def test_http2_option_still_speaks_to_an_http1_receiver() -> None:
    with WebhookReceiver() as receiver:
        send_once({"url": receiver.url, "http2": True}, synthetic_messages(2))
        assert len(receiver.events()) == 2


def serve_http2(listener: socket.socket, context: ssl.SSLContext, bodies: list[bytes]) -> None:
    """A minimal HTTP/2 server (with the h2 library): one TLS connection,
    every request answered 204, bodies kept."""
    raw, _ = listener.accept()
    with context.wrap_socket(raw, server_side=True) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        connection.initiate_connection()
        tls.sendall(connection.data_to_send())
        streams: dict[int, bytes] = {}
        while data := tls.recv(65536):
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    streams[event.stream_id] = streams.get(event.stream_id, b"") + event.data
                    connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded):
                    bodies.append(streams.pop(event.stream_id, b""))
                    connection.send_headers(event.stream_id, [(":status", "204")], end_stream=True)
            tls.sendall(connection.data_to_send())


def test_http2_is_spoken_when_the_receiver_offers_it(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    context = tls_server_context(certificates)
    context.set_alpn_protocols(["h2"])
    bodies: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=serve_http2, args=(listener, context, bodies))
        server.start()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/events"
        options = {"url": url, "http2": True, "tls": {"ca-file": certificates["ca"]}}
        backend = create_backend("webhook", {**options, "content-mode": "batched"})
        messages = synthetic_messages(30)
        backend.open()
        try:
            backend.send(messages[:10])
            backend.send(messages[10:])
        finally:
            backend.close()
        server.join(10)
    assert [[e["id"] for e in json.loads(body)] for body in bodies] == [
        [m.id for m in messages[:10]],
        [m.id for m in messages[10:]],
    ]


RECEIVER_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "webhook-receiver"


def test_the_documented_receiver_verifies_and_prints_what_arrives() -> None:
    port = free_port()
    env = {**os.environ, "WEBHOOK_SECRET": SECRET}
    receiver = subprocess.Popen(
        [sys.executable, str(RECEIVER_EXAMPLE / "receiver.py"), str(port)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while not reachable("127.0.0.1", port, timeout=1):
            assert time.monotonic() < deadline and receiver.poll() is None
            time.sleep(0.1)
        messages = synthetic_messages(6)
        for mode, batch in (("structured", messages[:3]), ("batched", messages[3:])):
            send_once({"url": url, "secret": SECRET, "content-mode": mode}, batch)
        wrong = "whsec_" + base64.b64encode(b"another key").decode()
        backend = create_backend("webhook", {"url": url, "secret": wrong})
        backend.open()
        try:
            with pytest.raises(Refused, match="HTTP 401"):
                backend.send(synthetic_messages(1, run_id="forged"))
        finally:
            backend.close()
    finally:
        receiver.terminate()
        output, _ = receiver.communicate(timeout=10)
    assert output.splitlines() == [f"{m.sequence:020d} {m.type} {m.subject}" for m in messages]


def test_https_with_the_tls_block_and_a_clear_error_without(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    messages = synthetic_messages(3)
    with (
        WebhookReceiver() as receiver,
        FaultProxy(("127.0.0.1", receiver.port), tls=tls_server_context(certificates)) as proxy,
    ):
        url = f"https://127.0.0.1:{proxy.port}/events"
        send_once({"url": url, "tls": {"ca-file": certificates["ca"]}}, messages)
        assert ids(receiver.events()) == [m.id for m in messages]

        unverified = create_backend("webhook", {"url": url})
        unverified.open()
        try:
            with pytest.raises(Exception) as info:
                unverified.send(messages)
        finally:
            unverified.close()
        assert "TLS with the webhook receiver at 127.0.0.1" in unverified.explain(info.value)
