"""The ``rabbitmq`` backend against the real RabbitMQ (``RABBITMQ_URL`` or local).

Every test uses exchanges and queues of its own and deletes them. Broker-side
connection closes use ``rabbitmqctl close_connection`` on this test's
connections only (found by their connection name), never on other clients of
the shared broker. Stalls and outages go through a small TCP proxy in front
of the broker that the test pauses (nothing flows, sockets stay open) or cuts
(connections dropped and new ones refused at once, as during a restart).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

import dask
import pika
import pytest
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test
from harness_rabbitmq import EXCHANGES, close_broker_connections
from helpers import (
    ENDPOINTS,
    FAST_RETRY,
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

from dask_eventbus import ConfigError, Event, EventBusPlugin, create_backend, subscribe
from dask_eventbus.backends.rabbitmq import RabbitMQBackend, RabbitMQError
from dask_eventbus.events import CONTENT_TYPE, TASK_TRANSITION, key_to_str
from dask_eventbus.testing import (
    FaultProxy,
    free_port,
    is_closing,
    read_events,
    run_workload,
    synthetic_messages,
    unique_name,
)
from dask_eventbus.testing.workload import inc

pytestmark = pytest.mark.timeout(180)


# ---------------------------------------------------------------- fixtures and tools


# A fresh exchange, queue and connection name; deleted afterwards.
names = EXCHANGES.fixture()


def options(url: str, names: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "url": url,
        "exchange": names["exchange"],
        "connection-name": names["connection-name"],
        **extra,
    }


@pytest.fixture
def admin(rabbitmq_url: str) -> Iterator[Any]:
    """A plain pika channel for declaring and reading as any other client would."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    yield connection.channel()
    if connection.is_open:
        connection.close()


@pytest.fixture
def proxy(rabbitmq_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(ENDPOINTS["rabbitmq"].address) as made:
        yield made


def outage(proxy: FaultProxy) -> None:
    """As in a broker restart: connections drop, new ones are refused."""
    proxy.set_mode("refuse")
    proxy.cut()


# ---------------------------------------------------------------- end to end


@gen_test(timeout=120)
async def test_transitions_read_with_plain_pika_match_the_transition_log(
    rabbitmq_url: str, names: Place, admin: Any
) -> None:
    exchange = names["exchange"]
    every, failures = names["queue"], unique_name("dask-eventbus-test-q")
    names.extra.append(failures)
    admin.exchange_declare(exchange, "topic", durable=True)
    admin.queue_declare(every, durable=True)
    admin.queue_bind(every, exchange, "dask.task.transition.#")
    admin.queue_declare(failures, durable=True)
    admin.queue_bind(failures, exchange, "dask.task.transition.*.erred")

    log = await run_workload(EventBusPlugin("rabbitmq", **options(rabbitmq_url, names)))

    # The scheduler closed only once the broker had confirmed every event, so
    # the queues hold all of them now.
    received = drain_all(admin, every)
    expected = [(key_to_str(t.key), t.start, t.finish) for t in log]
    events = [Event.from_json(body) for _, _, body in received]
    assert [(e.data["key"], e.data["start"], e.data["finish"]) for e in events] == expected
    for (method, properties, _), event in zip(received, events, strict=True):
        start, finish = event.data["start"], event.data["finish"]
        assert method.routing_key == f"{TASK_TRANSITION}.{start}.{finish}"
        assert properties.content_type == CONTENT_TYPE
        assert properties.message_id == event.id
        assert properties.type == TASK_TRANSITION
        assert properties.app_id == "dask-eventbus"
        assert properties.delivery_mode == 2
        assert abs(properties.timestamp - event.time.timestamp()) <= 1

    failed = [Event.from_json(body) for _, _, body in drain_all(admin, failures)]
    assert [(e.data["key"], e.data["start"]) for e in failed] == [
        (key, start) for key, start, finish in expected if finish == "erred"
    ]
    assert {e.data["key"] for e in failed} == {"bad", "downstream"}


def drain_all(channel: Any, queue: str) -> list:
    got = []
    while True:
        method, properties, body = channel.basic_get(queue)
        if method is None:
            return got
        channel.basic_ack(method.delivery_tag)
        got.append((method, properties, body))


async def _waves_during(
    plugin: EventBusPlugin, disruption: Callable[[], Any]
) -> tuple[int, dict[str, Any], Any]:
    """Keep a cluster computing while ``disruption`` runs in a thread."""
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=2), Client(s.address, asynchronous=True) as c:
            deadline = time.monotonic() + 30
            while not (plugin.stats().get("connected") and plugin.stats().get("published")):
                assert time.monotonic() < deadline, plugin.stats()
                await asyncio.sleep(0.05)
            disrupted = asyncio.get_running_loop().run_in_executor(None, disruption)
            waves = 0
            while not disrupted.done() or waves < 3:
                futures = c.map(inc, range(20), key=[f"wave{waves}-{i}" for i in range(20)])
                total = c.submit(sum, futures, key=f"sum-{waves}")
                assert await total == sum(range(1, 21))
                del futures, total
                waves += 1
                if disrupted.done():
                    # Once more after the disruption: events flow again.
                    futures = c.map(inc, range(5), key=[f"after-{i}" for i in range(5)])
                    assert await c.gather(futures) == list(range(1, 6))
                    del futures
                    break
            outcome = await disrupted
    return waves, plugin.stats(), outcome


def assert_nothing_lost(url: str, opts: dict[str, Any], stats: dict[str, Any]) -> list[Event]:
    with subscribe("rabbitmq", **{**opts, "url": url}) as events:
        received = read_events(events, until=is_closing, timeout=60)
    last = received[-1].sequence_number
    assert {e.sequence_number for e in received} == set(range(1, last + 1))
    assert stats["published"] >= last
    assert stats["dropped"] == 0 and stats["undelivered"] == 0
    finishes = {
        e.data["key"]
        for e in received
        if e.type == TASK_TRANSITION and e.data["finish"] == "memory"
    }
    assert {"after-0", "after-4"} <= finishes
    return received


@pytest.mark.slow
@gen_test(timeout=150)
async def test_connections_closed_by_the_broker_mid_run_lose_nothing(
    rabbitmq_url: str, names: dict[str, Any]
) -> None:
    opts = options(rabbitmq_url, names, queue=names["queue"])
    with dask.config.set(FAST_RETRY):
        plugin = EventBusPlugin("rabbitmq", **opts)

    def close_twice() -> list[int]:
        closed = [close_broker_connections(names["connection-name"])]
        time.sleep(0.5)
        closed.append(close_broker_connections(names["connection-name"]))
        return closed

    waves, stats, closed = await _waves_during(plugin, close_twice)
    assert closed[0] == 1, "the publisher's connection was not found on the broker"
    assert waves >= 2
    assert_nothing_lost(rabbitmq_url, opts, stats)


@pytest.mark.slow
@gen_test(timeout=150)
async def test_outage_and_stall_lose_nothing(
    rabbitmq_url: str, names: dict[str, Any], proxy: FaultProxy
) -> None:
    opts = options(
        via(rabbitmq_url, proxy.port),
        names,
        queue=names["queue"],
        **{"publish-timeout": "1s", "connect-timeout": "1s"},
    )
    with dask.config.set(FAST_RETRY):
        plugin = EventBusPlugin("rabbitmq", **opts)

    def outage_then_stall() -> None:
        outage(proxy)
        time.sleep(1.5)
        proxy.set_mode("pass")
        time.sleep(1.0)
        proxy.set_mode("stall")  # a broker that stops answering
        time.sleep(2.5)
        proxy.set_mode("pass")

    _, stats, _ = await _waves_during(plugin, outage_then_stall)
    assert stats["retries"] >= 1 and stats["publish_errors"] >= 1
    assert_nothing_lost(rabbitmq_url, opts, stats)


# ---------------------------------------------------------------- publishing


@pytest.mark.slow
def test_stalled_publish_times_out_and_close_returns(
    rabbitmq_url: str, names: dict[str, Any], proxy: FaultProxy
) -> None:
    opts = options(
        via(rabbitmq_url, proxy.port),
        names,
        queue=names["queue"],
        **{"publish-timeout": "1s", "connect-timeout": "1s"},
    )
    backend = create_backend("rabbitmq", opts)
    messages = synthetic_messages(30)
    backend.open()
    backend.publish(messages[:10])
    proxy.set_mode("stall")
    with pytest.raises(RabbitMQError) as info:
        backend.publish(messages[10:20])
    assert "did not answer within 1s while waiting for the broker to confirm" in str(info.value)
    backend.close()
    backend.close()
    with pytest.raises(Exception) as opening:
        backend.open()  # the TCP connect succeeds, the AMQP handshake never does
    assert "cannot connect" in backend.explain(opening.value) or "within 1s" in str(opening.value)
    proxy.set_mode("pass")
    backend.open()
    backend.publish(messages[20:])
    backend.close()
    with subscribe("rabbitmq", **{**opts, "url": rabbitmq_url}) as events:
        received = read_until_all(events, messages[20:])
    ids = [e.id for e in received]
    assert ids[:10] == [m.id for m in messages[:10]]


def test_idle_connection_closed_by_the_broker_is_reopened_quietly(
    rabbitmq_url: str, names: dict[str, Any]
) -> None:
    opts = options(rabbitmq_url, names, queue=names["queue"])
    backend = create_backend("rabbitmq", opts)
    messages = synthetic_messages(20)
    backend.open()
    backend.publish(messages[:10])
    assert close_broker_connections(names["connection-name"]) == 1
    backend.publish(messages[10:])  # no exception: nothing was sent on the dead one
    backend.close()
    with subscribe("rabbitmq", **opts) as events:
        received = read_events(events, count=20)
    assert [e.id for e in received] == [m.id for m in messages]


def test_the_publisher_process_loads_neither_reader_nor_diagnosis(
    rabbitmq_url: str, names: dict[str, Any]
) -> None:
    opts = options(rabbitmq_url, names, queue=names["queue"])
    imported = publisher_process_imports(create_backend("rabbitmq", opts))
    assert "dask_eventbus.backends.rabbitmq" in imported
    assert ours_not_for_publishing(imported) == []
    assert "dask_eventbus.backends.rabbitmq_reader" not in imported


def test_nacked_events_raise(rabbitmq_url: str, names: dict[str, Any]) -> None:
    opts = options(
        rabbitmq_url,
        names,
        queue=names["queue"],
        **{"queue-max-length": 5, "queue-arguments": {"x-overflow": "reject-publish"}},
    )
    backend = create_backend("rabbitmq", opts)
    messages = synthetic_messages(8)
    backend.open()
    try:
        backend.publish(messages[:5])
        # It raises on the first nack; the others may not have arrived yet.
        with pytest.raises(RabbitMQError, match=r"rejected [1-3] of 3 events \(basic.nack\)"):
            backend.publish(messages[5:])
        # The backend reconnects by itself on the next call; still full.
        with pytest.raises(RabbitMQError, match=r"basic\.nack"):
            backend.publish(messages[5:6])
    finally:
        backend.close()


def test_unroutable_mandatory_events_raise_until_a_queue_is_bound(
    rabbitmq_url: str, names: dict[str, Any]
) -> None:
    opts = options(rabbitmq_url, names, mandatory=True)
    backend = create_backend("rabbitmq", opts)
    messages = synthetic_messages(4)
    backend.open()
    try:
        with pytest.raises(RabbitMQError) as info:
            backend.publish(messages)
        text = backend.explain(info.value)
        assert "returned as unroutable (312 NO_ROUTE)" in text
        assert names["exchange"] in text
        with subscribe("rabbitmq", **opts) as events:
            backend.publish(messages)
            assert [e.id for e in read_events(events, count=4)] == [m.id for m in messages]
    finally:
        backend.close()


def test_without_mandatory_unbound_events_are_dropped_by_the_exchange(
    rabbitmq_url: str, names: dict[str, Any]
) -> None:
    backend = create_backend("rabbitmq", options(rabbitmq_url, names))
    backend.open()
    backend.publish(synthetic_messages(3))  # confirmed: the exchange accepted them
    backend.close()


def test_routing_key_template_and_headers_exchange(
    rabbitmq_url: str, names: Place, admin: Any
) -> None:
    exchange, queue = names["exchange"], names["queue"]
    opts = options(rabbitmq_url, names, **{"routing-key": "cluster-a.{finish}.{type}"})
    backend = create_backend("rabbitmq", opts)
    backend.open()
    admin.queue_declare(queue, durable=True)
    admin.queue_bind(queue, exchange, "cluster-a.memory.#")
    messages = synthetic_messages(9)  # released->waiting, waiting->processing, ...->memory
    backend.publish(messages)
    backend.close()
    got = drain_all(admin, queue)
    wanted = [m for m in messages if m.routing_key.endswith(".memory")]
    assert [props.message_id for _, props, _ in got] == [m.id for m in wanted]
    assert {method.routing_key for method, _, _ in got} == {"cluster-a.memory.dask.task.transition"}

    headers = {**names, "exchange": unique_name("dask-eventbus-test-x")}
    names.extra.append(headers["queue"] + "-h")
    backend = create_backend(
        "rabbitmq", options(rabbitmq_url, headers, **{"exchange-type": "headers"})
    )
    backend.open()
    try:
        admin.queue_declare(headers["queue"] + "-h", durable=True)
        admin.queue_bind(
            headers["queue"] + "-h",
            headers["exchange"],
            arguments={"x-match": "all", "subject": "task-3"},
        )
        backend.publish(messages)
        got = drain_all(admin, headers["queue"] + "-h")
        assert [props.headers["subject"] for _, props, _ in got] == ["task-3"]
    finally:
        backend.close()
        admin.exchange_delete(headers["exchange"])


def test_long_templated_routing_keys_are_cut_to_255_bytes(
    rabbitmq_url: str, names: dict[str, Any]
) -> None:
    backend = create_backend(
        "rabbitmq", options(rabbitmq_url, names, **{"routing-key": "{subject}.é" * 200})
    )
    (message,) = synthetic_messages(1)
    key = backend._routing_key(message)
    assert len(key.encode()) <= 255 and key.startswith("task-1.é")
    backend.open()
    backend.publish([message])  # would fail forever if the key were too long
    backend.close()


# ---------------------------------------------------------------- diagnosis, options


def test_errors_are_explained_without_secrets(
    rabbitmq_url: str, names: dict[str, Any], admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    params = pika.URLParameters(rabbitmq_url)
    secret = "not-the-password-s3cr3t"
    bad_password = with_url_password({"url": rabbitmq_url}, secret)["url"]
    backend = create_backend("rabbitmq", options(bad_password, names))
    for text in (repr(backend), backend.describe()):
        assert secret not in text and params.host in text
    with pytest.raises(Exception) as info:
        backend.open()
    explained = backend.explain(info.value)
    assert f"refused authentication for user {params.credentials.username!r}" in explained
    assert secret not in explained

    port = free_port()
    refused = create_backend("rabbitmq", options(f"amqp://u:{secret}@127.0.0.1:{port}/", names))
    with pytest.raises(Exception) as info:
        refused.open()
    explained = refused.explain(info.value)
    assert f"cannot connect to RabbitMQ at amqp://u@127.0.0.1:{port}/" in explained
    assert "connection refused" in explained and secret not in explained

    vhost = create_backend("rabbitmq", options(rabbitmq_url.rsplit("/", 1)[0] + "/nope", names))
    with pytest.raises(Exception) as info:
        vhost.open()
    assert "virtual host" in vhost.explain(info.value)

    missing = create_backend("rabbitmq", options(rabbitmq_url, names, declare=False))
    with pytest.raises(Exception) as info:
        missing.open()
        missing.publish(synthetic_messages(1))
    missing.close()
    assert f"exchange {names['exchange']!r} does not exist" in missing.explain(info.value)

    admin.exchange_declare(names["exchange"], "fanout", durable=True)
    clash = create_backend("rabbitmq", options(rabbitmq_url, names))
    with pytest.raises(Exception) as info:
        clash.open()
    assert "exists with other settings" in clash.explain(info.value)

    with pytest.raises(RabbitMQError) as subscribe_error:
        subscribe("rabbitmq", **options(bad_password, names))
    assert "refused authentication" in str(subscribe_error.value)
    assert secret not in str(subscribe_error.value)
    # pika's own half-dozen ERROR records per failed attempt are kept out of
    # the scheduler's log: the explanations above replace them.
    assert not [r for r in caplog.records if r.name.startswith("pika")]


def test_tls_through_a_tls_terminating_proxy(
    rabbitmq_url: str, names: dict[str, Any], tmp_path: Any
) -> None:
    certificates = make_certificates(tmp_path)
    context = tls_server_context(certificates)
    tls_proxy = FaultProxy(ENDPOINTS["rabbitmq"].address, tls=context)
    try:
        url = via(rabbitmq_url, tls_proxy.port, scheme="amqps")
        opts = options(url, names, queue=names["queue"], tls={"ca-file": certificates["ca"]})
        backend = create_backend("rabbitmq", opts)
        assert backend.describe().endswith(f"at amqps://guest@127.0.0.1:{tls_proxy.port}/%2F")
        messages = synthetic_messages(5)
        backend.open()
        backend.publish(messages)
        backend.close()
        with subscribe("rabbitmq", **opts) as events:
            assert [e.id for e in read_events(events, count=5)] == [m.id for m in messages]

        untrusted = create_backend("rabbitmq", options(url, names))  # system CAs only
        with pytest.raises(Exception) as info:
            untrusted.open()
        assert "TLS with RabbitMQ" in untrusted.explain(info.value)
        assert "certificate verify failed" in untrusted.explain(info.value)
    finally:
        tls_proxy.close()


def test_parameters_honour_the_url_and_pickling_keeps_options(rabbitmq_url: str) -> None:
    backend = create_backend(
        "rabbitmq",
        {
            "url": "amqp://bob:pw@broker.example:5673/events%2Fprod?heartbeat=15&channel_max=9",
            "connection-name": "scheduler-a",
            "queue": "kept",
            "queue-max-length": 10,
            "queue-message-ttl": "1h",
        },
    )
    params = backend.parameters()
    assert (params.host, params.port, params.virtual_host) == (
        "broker.example",
        5673,
        "events/prod",
    )
    assert (params.heartbeat, params.channel_max) == (15, 9)
    assert params.client_properties["connection_name"] == "scheduler-a"
    assert "pw" not in backend.describe() and "events%2Fprod" in backend.describe()
    copy = pickle.loads(pickle.dumps(backend))
    assert isinstance(copy, RabbitMQBackend) and copy.options == backend.options
    queue = copy.topology().publisher_queue()
    assert queue is not None
    assert queue.arguments == {"x-max-length": 10, "x-message-ttl": 3_600_000}
    with pytest.raises(ConfigError, match=r"eventbus\.backends\.rabbitmq"):
        create_backend("rabbitmq", {"url": "amqp://x/", "exchange": "", "queue": "q"})
    with pytest.raises(ConfigError, match="direct exchange cannot"):
        create_backend("rabbitmq", {"exchange-type": "direct", "queue": "q"})
    with pytest.raises(ValueError, match="pass bindings"):
        subscribe("rabbitmq", **{"exchange-type": "direct"})


# ---------------------------------------------------------------- consuming


def test_exclusive_subscription_binds_filters_and_goes_away(
    rabbitmq_url: str, names: dict[str, Any], admin: Any
) -> None:
    opts = options(rabbitmq_url, names)
    with pytest.raises(
        ValueError, match=r"eventbus\.backends\.rabbitmq\.queue .* or subscribe with"
    ):
        subscribe("rabbitmq", from_beginning=True, **opts)
    messages = synthetic_messages(12)
    backend = create_backend("rabbitmq", opts)
    backend.open()
    try:
        with subscribe("rabbitmq", bindings=["dask.task.transition.*.memory"], **opts) as events:
            queue = events.queue  # type: ignore[attr-defined]
            assert queue.startswith("amq.gen-")
            backend.publish(messages)
            received = read_events(events, count=4)
            assert events.poll(timeout=0.5) is None
        assert [e.id for e in received] == [
            m.id for m in messages if m.routing_key.endswith(".memory")
        ]
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
            admin.queue_declare(queue, passive=True)
    finally:
        backend.close()


def test_durable_queue_keeps_events_and_redelivers_unacknowledged(
    rabbitmq_url: str, names: dict[str, Any]
) -> None:
    opts = options(rabbitmq_url, names, queue=names["queue"])
    messages = synthetic_messages(10)
    backend = create_backend("rabbitmq", opts)
    backend.open()
    backend.publish(messages)  # nobody is consuming: the queue keeps them
    backend.close()
    events = subscribe("rabbitmq", **opts)
    first = read_events(events, count=3)
    events.close(ack=False)  # the third was being processed when we stopped
    # The queue named when subscribing, as Kombu's subscribers may name it.
    subscriber_options = {k: v for k, v in opts.items() if k != "queue"}
    with subscribe(
        "rabbitmq", from_beginning=True, queue=names["queue"], **subscriber_options
    ) as events:
        assert events.keeps_events_while_away
        rest = read_events(events, count=8)
    assert [e.id for e in first + rest[1:]] == [m.id for m in messages]
    assert rest[0].id == first[-1].id


def test_subscriber_reconnects_after_the_broker_closes_its_connection(
    rabbitmq_url: str, names: dict[str, Any]
) -> None:
    opts = options(rabbitmq_url, names, queue=names["queue"])
    messages = synthetic_messages(20)
    backend = create_backend("rabbitmq", opts)
    with subscribe("rabbitmq", **opts) as events:
        backend.open()
        backend.publish(messages[:10])
        first = read_events(events, count=10)
        assert close_broker_connections(f"{names['connection-name']} subscriber") == 1
        backend.publish(messages[10:])
        # Acknowledgements that were not sent before the connection closed
        # make the broker deliver those events again: duplicates, no losses.
        read_until_all(events, messages[10:])
    backend.close()
    assert [e.id for e in first] == [m.id for m in messages[:10]]


def test_subscriber_waits_out_a_broker_outage(
    rabbitmq_url: str, names: dict[str, Any], proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    direct = options(rabbitmq_url, names, queue=names["queue"])
    proxied = {**direct, "url": via(rabbitmq_url, proxy.port), "connect-timeout": "1s"}
    messages = synthetic_messages(20)
    backend = create_backend("rabbitmq", direct)
    backend.open()
    try:
        with subscribe("rabbitmq", **proxied) as events:
            backend.publish(messages[:10])
            first = read_events(events, count=10)
            outage(proxy)
            poll_until_logged(events, caplog, "cannot reconnect the RabbitMQ consumer yet")
            backend.publish(messages[10:])  # kept by the durable queue meanwhile
            proxy.set_mode("pass")
            read_until_all(events, messages[10:])
    finally:
        backend.close()
    assert [e.id for e in first] == [m.id for m in messages[:10]]
    warnings = [r.getMessage() for r in caplog.records if r.name == "distributed.eventbus.rabbitmq"]
    assert any("lost the RabbitMQ consumer connection" in w for w in warnings)
    assert sum("cannot reconnect the RabbitMQ consumer yet" in w for w in warnings) == 1
