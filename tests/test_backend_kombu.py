"""The kombu backend against real RabbitMQ and Redis (and Kombu's memory transport).

End to end with a real scheduler and workers read back with plain Kombu
consumers, the broker closing our connections mid-run, a stalled broker,
subscriptions, routing keys and the diagnoses people see.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import dask
import pytest
import redis
from amqp.exceptions import MessageNacked
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test
from harness_kombu import AMQP, MEMORY, REDIS
from harness_rabbitmq import close_broker_connections, rabbitmqctl
from helpers import (
    ENDPOINTS,
    Endpoint,
    Place,
    make_certificates,
    ours_not_for_publishing,
    poll_until_logged,
    publisher_process_imports,
    read_until_all,
    tls_server_context,
    via,
    with_url_password,
)
from kombu import Connection, Consumer, Exchange, Queue

from dask_eventbus import ConfigError, Event, EventBusPlugin, create_backend, subscribe
from dask_eventbus.backends.kombu import CONTENT_TYPE, KombuBackend
from dask_eventbus.events import key_to_str
from dask_eventbus.process import publisher_environment
from dask_eventbus.testing import (
    FaultProxy,
    is_closing,
    proxied_url,
    read_events,
    read_raw,
    run_workload,
    synthetic_messages,
)
from dask_eventbus.testing.workload import inc

pytestmark = pytest.mark.timeout(150)


# Options for a fresh exchange and named queue on RabbitMQ, on Redis, and
# for a fresh exchange in memory://; deleted afterwards.
amqp = AMQP.fixture()
redis_options = REDIS.fixture()
memory_exchange = MEMORY.fixture("exchange")


def options(fixture: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``fixture``'s options with ``changes``, those set to None left out."""
    result = {**fixture, **changes}
    return {k: v for k, v in result.items() if v is not None}


def on(transport: str, request: pytest.FixtureRequest) -> tuple[dict[str, Any], Endpoint]:
    """The test's options on ``transport``'s broker, and where that broker is."""
    if transport == "amqp":
        return request.getfixturevalue("amqp"), ENDPOINTS["rabbitmq"]
    return request.getfixturevalue("redis_options"), ENDPOINTS["redis"]


def drain(conn: Connection, queues: list[Queue], idle: float = 2.0) -> dict[str, list[Any]]:
    """Every message now in ``queues``, read with a plain Kombu consumer."""
    got: dict[str, list[Any]] = {q.name: [] for q in queues}

    def collector(into: list[Any]) -> Any:
        def on_message(message: Any) -> None:
            into.append(message)
            message.ack()

        return on_message

    with conn.channel() as channel:
        consumers = [Consumer(channel, [q], on_message=collector(got[q.name])) for q in queues]
        for consumer in consumers:
            consumer.consume()
        while True:
            try:
                conn.drain_events(timeout=idle)
            except TimeoutError:
                break
    return got


def body_event(message: Any) -> Event:
    body = message.body
    return Event.from_json(body.encode() if isinstance(body, str) else body)


# ------------------------------------------------------------------ end to end


@gen_test(timeout=120)
async def test_end_to_end_plain_kombu_consumers_see_the_transition_log(
    amqp: Place,
) -> None:
    url, name = amqp["url"], amqp["exchange"]
    exchange = Exchange(name, "topic", durable=True)
    transitions = Queue(f"{name}-transitions", exchange, routing_key="dask.task.transition.#")
    failures = Queue(f"{name}-erred", exchange, routing_key="dask.task.transition.*.erred")
    amqp.extra.extend([transitions.name, failures.name])
    with Connection(url) as conn:
        with conn.channel() as channel:
            for queue in (transitions, failures):
                queue(channel).declare()
        transition_log = await run_workload(EventBusPlugin("kombu", **options(amqp, queue=None)))
        got = drain(conn, [transitions, failures])

    messages = got[transitions.name]
    events = [body_event(m) for m in messages]
    assert {e.type for e in events} == {"dask.task.transition"}
    expected = [(key_to_str(t.key), t.start, t.finish, t.stimulus_id) for t in transition_log]
    assert [
        (e.data["key"], e.data["start"], e.data["finish"], e.data["stimulus_id"]) for e in events
    ] == expected

    for message, event in zip(messages, events, strict=True):
        assert message.content_type == CONTENT_TYPE
        assert message.content_encoding == "utf-8"
        assert message.properties["message_id"] == event.id
        assert message.properties["type"] == event.type
        assert message.properties["app_id"] == "dask-eventbus"
        assert message.properties["delivery_mode"] == 2
        assert message.delivery_info["routing_key"] == (
            f"dask.task.transition.{event.data['start']}.{event.data['finish']}"
        )

    erred = [body_event(m).data for m in got[failures.name]]
    assert [(d["key"], d["start"]) for d in erred] == [
        (key_to_str(t.key), t.start) for t in transition_log if t.finish == "erred"
    ]
    assert {d["key"] for d in erred} == {"bad", "downstream"}


# ------------------------------------------------------------------ outages


@pytest.mark.slow
@gen_test(timeout=120)
async def test_broker_closing_the_connection_mid_run_loses_nothing(
    amqp: dict[str, Any],
) -> None:
    connection_name = f"{amqp['exchange']}-publisher"
    backend_options = options(
        amqp, **{"transport-options": {"client_properties": {"connection_name": connection_name}}}
    )
    fast = {
        "eventbus.queue.batch-size": 20,
        "eventbus.queue.flush-interval": "10ms",
        "eventbus.retry.initial-backoff": "20ms",
        "eventbus.retry.max-backoff": "200ms",
    }
    with dask.config.set(fast):
        plugin = EventBusPlugin("kombu", **backend_options)
    closed = rounds = 0
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=1), Client(s.address, asynchronous=True) as c:
            while closed < 3:
                rounds += 1
                assert rounds <= 40, f"closed only {closed} connections"
                futures = c.map(inc, range(30), key=[f"r{rounds}-{i}" for i in range(30)])
                closer = asyncio.get_running_loop().run_in_executor(
                    None, close_broker_connections, connection_name
                )
                assert await c.gather(futures) == list(range(1, 31))
                closed += await closer
                del futures
            assert await c.submit(sum, [1, 2, 3], key="after") == 6
    stats = plugin.stats()
    assert stats["retries"] >= 1 and stats["publish_errors"] >= 1
    assert stats["dropped"] == 0 and stats["undelivered"] == 0

    with subscribe("kombu", from_beginning=True, **backend_options) as events:
        bodies = read_raw(events, until=is_closing, timeout=60)
    received = [Event.from_json(body) for body in bodies]
    last = received[-1].sequence_number
    assert received[-1].type == "dask.scheduler.closing"
    # At least once: duplicates of a retried batch may appear, gaps never.
    assert {e.sequence_number for e in received} == set(range(1, last + 1))
    assert stats["published"] >= last


def call_bounded(fn: Any, limit: float = 60.0) -> BaseException | None:
    """Run ``fn`` in a thread; the exception it raised (None if it returned)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert outcome, f"{fn} did not return within {limit}s: a stalled broker hangs it"
    return outcome[0]


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["amqp", "redis"])
def test_a_stalled_broker_makes_publish_raise_after_its_timeout(
    transport: str, request: pytest.FixtureRequest
) -> None:
    fixture, endpoint = on(transport, request)
    proxy = FaultProxy(endpoint.address)
    try:
        url = via(fixture["url"], proxy.port)
        backend = create_backend(
            "kombu", options(fixture, url=url, **{"publish-timeout": 1, "connect-timeout": 2})
        )
        messages = synthetic_messages(10)
        backend.open()
        backend.publish(messages)
        proxy.set_mode("stall")
        error = call_bounded(lambda: backend.publish(messages))
        assert error is not None
        assert "no answer in time" in backend.explain(error) or "did not answer" in (
            backend.explain(error)
        )
        assert call_bounded(backend.close) is None
        # Nothing can connect while stalled: open is bounded too.
        assert call_bounded(backend.open) is not None
        backend.close()
        proxy.set_mode("pass")
        backend.open()
        backend.publish(messages)
        backend.close()
    finally:
        proxy.close()


@pytest.mark.parametrize("transport", ["amqp", "redis"])
def test_the_tls_block_reaches_the_transport(
    transport: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    fixture, endpoint = on(transport, request)
    certificates = make_certificates(tmp_path)
    context = tls_server_context(certificates)
    with FaultProxy(endpoint.address, tls=context) as proxy:
        # Kombu's amqp transport takes TLS from the tls block; redis needs rediss://.
        url = via(fixture["url"], proxy.port, scheme=None if transport == "amqp" else "rediss")
        messages = synthetic_messages(5)
        backend = create_backend(
            "kombu", options(fixture, url=url, tls={"ca-file": certificates["ca"]})
        )
        backend.open()
        try:
            backend.publish(messages)
        finally:
            backend.close()
        untrusted = create_backend("kombu", options(fixture, url=url, tls={}))  # system CAs
        with pytest.raises(Exception) as info:
            untrusted.open()
        assert "certificate verify failed" in untrusted.explain(info.value)
    with subscribe("kombu", from_beginning=True, **options(fixture)) as events:
        assert [e.id for e in read_events(events, count=5)] == [m.id for m in messages]


# ------------------------------------------------------------------ subscriptions


@pytest.mark.parametrize("transport", ["amqp", "redis"])
def test_subscriber_without_a_queue_gets_its_own_and_removes_it(
    transport: str, request: pytest.FixtureRequest
) -> None:
    fixture, _ = on(transport, request)
    opts = options(fixture, queue=None)
    messages = synthetic_messages(30)
    with subscribe("kombu", **opts) as events:
        queue = events.queue  # type: ignore[attr-defined]
        backend = create_backend("kombu", opts)
        backend.open()
        backend.publish(messages)
        backend.close()
        received = read_events(events, count=30)
    assert [e.id for e in received] == [m.id for m in messages]
    if transport == "amqp":
        names = rabbitmqctl("list_queues", "--no-table-headers", "name").split()
        assert queue not in names
    else:
        client = redis.Redis.from_url(fixture["url"])
        assert not client.exists(queue)
        tables = [f"_kombu.binding.{fixture['exchange']}"]
        assert not any(queue.encode() in m for t in tables for m in client.smembers(t))
        client.close()


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["amqp", "redis"])
def test_subscriber_waits_out_a_broker_outage(
    transport: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    fixture, endpoint = on(transport, request)
    direct = options(fixture)
    through_proxy = proxied_url(direct["url"], endpoint.port, {"connect-timeout": "1s"})
    messages = synthetic_messages(20)
    backend = create_backend("kombu", direct)
    backend.open()
    try:
        with through_proxy() as (proxy, proxied):
            with subscribe("kombu", **{**direct, **proxied}) as events:
                backend.publish(messages[:10])
                first = read_events(events, count=10)
                proxy.set_mode("refuse")
                assert proxy.cut() >= 1
                poll_until_logged(events, caplog, "cannot reconnect the Kombu consumer yet")
                backend.publish(messages[10:])  # the named queue keeps them meanwhile
                proxy.set_mode("pass")
                # Acknowledgements lost with the connection make the broker
                # deliver those events again: duplicates, no losses.
                read_until_all(events, messages[10:])
    finally:
        backend.close()
    assert [e.id for e in first] == [m.id for m in messages[:10]]
    warnings = [r.getMessage() for r in caplog.records if r.name == "distributed.eventbus.kombu"]
    assert any("lost the Kombu consumer connection" in w for w in warnings), warnings
    assert sum("cannot reconnect the Kombu consumer yet" in w for w in warnings) == 1, warnings
    assert "the Kombu consumer is connected again" in warnings[-1]


def test_subscriptions_that_could_receive_nothing_are_refused(amqp: dict[str, Any]) -> None:
    # The same rules, and words, as the rabbitmq backend's (bindings.amqp.Topology).
    with pytest.raises(ValueError, match=r"eventbus\.backends\.kombu\.queue .* or subscribe with"):
        subscribe("kombu", from_beginning=True, **options(amqp, queue=None))
    direct = options(amqp, queue=None, **{"exchange-type": "direct"})
    with pytest.raises(ValueError, match="binding '#' receives nothing: pass bindings"):
        subscribe("kombu", **direct)


def test_the_publisher_process_loads_neither_reader_nor_diagnosis(
    amqp: dict[str, Any],
) -> None:
    imported = publisher_process_imports(create_backend("kombu", options(amqp)))
    assert "dask_eventbus.backends.kombu" in imported
    assert ours_not_for_publishing(imported) == []
    assert "dask_eventbus.backends.kombu_reader" not in imported


def test_the_publisher_process_loads_kombu_without_its_yaml_and_msgpack_serializers() -> None:
    # Kombu offers them when it can import them; the backend's bytes are never
    # serialized. (Python reports a kept-out import as made, so ask the process.)
    loaded = """
import json, sys
from dask_eventbus.process.child import _import_without
_import_without("dask_eventbus.backends.kombu", ["yaml", "msgpack"])
from kombu.exceptions import SerializerNotInstalled
from kombu.serialization import loads
try:
    loads(b"a: 1", "application/x-yaml", "utf-8", accept=["yaml"])
except SerializerNotInstalled:
    offered = False
else:
    offered = True
print(json.dumps([sorted({"yaml", "msgpack", "kombu.serialization"} & set(sys.modules)), offered]))
"""
    out = subprocess.run(
        [sys.executable, "-c", loaded], env=publisher_environment(), capture_output=True, check=True
    )
    assert json.loads(out.stdout) == [["kombu.serialization"], False]
    assert KombuBackend.unused_when_publishing == ("yaml", "msgpack")


def test_an_exchange_managed_elsewhere_is_not_declared(amqp: dict[str, Any]) -> None:
    managed = options(amqp, queue=None, **{"create-missing": False})
    backend = create_backend("kombu", managed)
    try:
        backend.open()  # nothing declared: the exchange is still missing
        with pytest.raises(Exception) as info:
            backend.send(synthetic_messages(3))
    finally:
        backend.close()
    assert backend.explain(info.value).endswith(
        f"exchange {amqp['exchange']!r} does not exist; create it, "
        "or set eventbus.backends.kombu.create-missing: true"
    )
    created = create_backend("kombu", options(amqp, queue=None))
    created.open()  # declares it, as by default
    created.close()
    backend.open()
    try:
        backend.send(synthetic_messages(3))
    finally:
        backend.close()
    with pytest.raises(ConfigError, match="create-missing: false needs an amqp:// url"):
        create_backend("kombu", {"url": "redis://localhost:6379/0", "create-missing": False})


def test_named_queue_keeps_events_until_a_consumer_comes(amqp: dict[str, Any]) -> None:
    messages = synthetic_messages(40)
    backend = create_backend("kombu", options(amqp))
    backend.open()
    backend.publish(messages)
    backend.close()
    # Unacknowledged events go back to the queue for the next consumer.
    with subscribe("kombu", **options(amqp)) as events:
        first = read_events(events, count=5)
        events.close(ack=False)
    # The first four were acknowledged as the next was read; the fifth and
    # those prefetched but never yielded are delivered again, in order.
    with subscribe("kombu", **options(amqp)) as events:
        again = read_events(events, count=36)
        assert events.poll(timeout=1.0) is None
    assert [e.id for e in first] == [m.id for m in messages[:5]]
    assert [e.id for e in again] == [m.id for m in messages[4:]]


def test_confirms_read_while_a_batch_is_written_are_not_missed(amqp: dict[str, Any]) -> None:
    # py-amqp reads what the broker sent before each publish, so confirms of
    # a batch's first messages arrive while its last ones are written. Slow
    # the writing down so that they surely do.
    backend = create_backend("kombu", options(amqp, **{"publish-timeout": 5}))
    backend.open()
    producer = backend._producer  # type: ignore[attr-defined]
    publish = producer.publish

    def slow_publish(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.005)
        return publish(*args, **kwargs)

    producer.publish = slow_publish
    messages = synthetic_messages(60)
    try:
        for i in range(0, len(messages), 20):
            backend.publish(messages[i : i + 20])
    finally:
        backend.close()
    with subscribe("kombu", **options(amqp)) as events:
        received = read_events(events, count=len(messages))
    assert [e.id for e in received] == [m.id for m in messages]


def test_a_nacked_batch_raises(amqp: dict[str, Any]) -> None:
    # A queue that rejects what does not fit makes the broker nack it.
    limited = options(
        amqp, **{"queue-arguments": {"x-max-length": 5, "x-overflow": "reject-publish"}}
    )
    backend = create_backend("kombu", limited)
    backend.open()
    try:
        with pytest.raises(MessageNacked, match="nacked 5 of 10"):
            backend.publish(synthetic_messages(10))
        assert "refused a published message (nacked)" in backend.explain(
            MessageNacked("nacked 5 of 10")
        )
    finally:
        backend.close()


def test_routing_key_template_and_bindings(memory_exchange: str) -> None:
    opts = {
        "url": "memory://",
        "exchange": memory_exchange,
        "routing-key": "cluster-a.{routing_key}",
    }
    messages = synthetic_messages(12)
    finished = [m for m in messages if m.routing_key.endswith(".memory")]
    assert finished and len(finished) < len(messages)
    with subscribe("kombu", bindings=["cluster-a.dask.task.transition.*.memory"], **opts) as only:
        with subscribe("kombu", bindings=["cluster-b.#"], **opts) as other:
            backend = create_backend("kombu", opts)
            backend.open()
            backend.publish(messages)
            backend.close()
            received = read_events(only, count=len(finished))
            assert other.poll(timeout=0.5) is None
        assert only.poll(timeout=0.5) is None
    assert [e.id for e in received] == [m.id for m in finished]


def test_fanout_exchange_delivers_to_every_subscriber(memory_exchange: str) -> None:
    opts = {"url": "memory://", "exchange": memory_exchange, "exchange-type": "fanout"}
    messages = synthetic_messages(8)
    with subscribe("kombu", **opts) as one, subscribe("kombu", **opts) as two:
        backend = create_backend("kombu", opts)
        backend.open()
        backend.publish(messages)
        backend.close()
        for events in (one, two):
            assert [e.id for e in read_events(events, count=8)] == [m.id for m in messages]


# ------------------------------------------------------------------ for people


def test_secrets_stay_out_of_describe_repr_and_explain(rabbitmq_url: str) -> None:
    secret = "s3cr3t-pa55word"
    wrong = with_url_password({"url": rabbitmq_url, "exchange": "never-made"}, secret)
    backend = create_backend("kombu", wrong)
    error = call_bounded(backend.open)
    assert error is not None
    explained = backend.explain(error)
    assert f"refused authentication for user {urlsplit(wrong['url']).username!r}" in explained
    for text in (explained, backend.describe(), repr(backend)):
        assert secret not in text
    with pytest.raises(ConfigError) as info:
        create_backend("kombu", {"url": f"nosuch://guest:{secret}@host"})
    assert secret not in str(info.value)


def test_missing_transport_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SQS transport needs botocore: make it missing whether or not it is installed.
    monkeypatch.setitem(sys.modules, "botocore", None)
    monkeypatch.delitem(sys.modules, "kombu.transport.SQS", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'kombu\[sqs\]'"):
        KombuBackend(url="sqs://")


def test_bodies_are_not_reserialized(memory_exchange: str) -> None:
    messages = synthetic_messages(3)
    opts = {"url": "memory://", "exchange": memory_exchange}
    with Connection("memory://") as conn:
        exchange = Exchange(memory_exchange, "topic", durable=True)
        queue = Queue(f"{memory_exchange}-raw", exchange, routing_key="#")
        with conn.channel() as channel:
            queue(channel).declare()
        backend = create_backend("kombu", opts)
        backend.open()
        backend.publish(messages)
        backend.close()
        got = drain(conn, [queue], idle=0.2)[queue.name]
    assert [m.body for m in got] == [m.body for m in messages]
    assert {m.content_type for m in got} == {CONTENT_TYPE}
