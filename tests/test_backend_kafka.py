"""The ``kafka`` backend against a real Kafka-protocol broker.

Most tests use the session's broker (Tansu, or ``KAFKA_BOOTSTRAP_SERVERS``),
each on a topic of its own. Outages use a Tansu process of the test's own,
stopped and started again on the same port; Tansu keeps its data in memory,
so a restarted broker starts empty.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka, from_structured
from cloudevents.core.formats.json import JSONFormat
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from distributed import Client, Scheduler, Worker
from distributed import Event as DaskEvent
from distributed.utils_test import gen_test
from harness_kafka import TOPICS, TansuBroker, require_tansu, tansu_behind_a_proxy
from helpers import (
    FAST_RETRY,
    assert_replayed,
    make_certificates,
    ours_not_for_publishing,
    publisher_process_imports,
    tls_server_context,
)

from dask_eventbus import ConfigError, Event, EventBusPlugin, create_backend, subscribe
from dask_eventbus.backends import Message
from dask_eventbus.backends import kafka as kafka_backend
from dask_eventbus.backends.kafka import KafkaBackend
from dask_eventbus.events import CONTENT_TYPE, OVERSIZED, TASK_TRANSITION, key_to_str
from dask_eventbus.testing import (
    FaultProxy,
    free_port,
    is_closing,
    read_events,
    run_workload,
    synthetic_messages,
    unique_name,
)

pytestmark = pytest.mark.timeout(180)

# Fast retries, so that a publisher waiting out an outage notices the
# broker's return quickly.


# ---------------------------------------------------------------- helpers


topic = TOPICS.fixture("topic")


def options_for(bootstrap: str, topic: str, **extra: Any) -> dict[str, Any]:
    config = {"bootstrap.servers": bootstrap, **extra.pop("config", {})}
    return {"topic": topic, "config": config, **extra}


class Record:
    """One Kafka record as a plain confluent-kafka consumer read it."""

    def __init__(self, message: Any) -> None:
        self.partition: int = message.partition()
        self.offset: int = message.offset()
        self.key: bytes | None = message.key()
        self.value: bytes = message.value()
        self.timestamp: int = message.timestamp()[1]
        self.headers: dict[str, bytes] = dict(message.headers() or [])
        self.event = Event.from_json(self.value)


def read_records(
    bootstrap: str,
    topic: str,
    *,
    count: int | None = None,
    until: Callable[[Event], bool] | None = None,
    quiet: float | None = None,
    timeout: float = 60.0,
) -> list[Record]:
    """Every record of ``topic`` from its start, with a plain consumer.

    Stops once ``count`` records arrived, once ``until`` held for one, or once
    nothing new came for ``quiet`` seconds.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("reader"),
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        last_arrival = time.monotonic()
        while time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None:
                    records.append(Record(message))
                    last_arrival = time.monotonic()
            if count is not None and len(records) >= count:
                return records
            if until is not None and any(until(r.event) for r in records):
                return records
            if quiet is not None and time.monotonic() - last_arrival >= quiet:
                return records
        raise AssertionError(f"timed out after {timeout}s with {len(records)} records")
    finally:
        consumer.close()


def publish_and_read(
    bootstrap: str, topic: str, messages: list[Message], **options: Any
) -> list[Record]:
    """Publish ``messages`` in one batch with these backend options; read them back."""
    backend = create_backend("kafka", options_for(bootstrap, topic, **options))
    backend.open()
    try:
        backend.publish(messages)
    finally:
        backend.close()
    return read_records(bootstrap, topic, count=len(messages))


async def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def inc(x: int) -> int:
    return x + 1


def wait_for_gate(x: int, gate: str) -> int:
    """Blocks its worker thread until the test sets the distributed Event ``gate``."""
    assert DaskEvent(gate).wait(timeout=60)
    return x + 1


# ---------------------------------------------------------------- end to end


@gen_test(timeout=120)
async def test_end_to_end_events_match_transition_log_one_partition_per_task(
    kafka_broker: str, topic: str
) -> None:
    plugin = EventBusPlugin("kafka", **options_for(kafka_broker, topic, partitions=3))
    transition_log = await run_workload(plugin)
    stats = plugin.stats()
    assert stats["dropped"] == 0 and stats["undelivered"] == 0
    records = await asyncio.to_thread(read_records, kafka_broker, topic, count=stats["published"])
    assert len({r.partition for r in records}) > 1, "expected events spread over partitions"

    by_sequence = sorted(records, key=lambda r: r.event.sequence_number)
    assert [r.event.sequence_number for r in by_sequence] == list(range(1, len(records) + 1))
    transitions = [
        (r.event.data["key"], r.event.data["start"], r.event.data["finish"])
        for r in by_sequence
        if r.event.type == TASK_TRANSITION
    ]
    expected = [(key_to_str(t.key), t.start, t.finish) for t in transition_log]
    assert transitions == expected

    # Every event of one subject is on one partition, in sequence order.
    partitions: dict[str, set[int]] = defaultdict(set)
    for record in records:
        partitions[record.event.subject or ""].add(record.partition)
    assert all(len(p) == 1 for p in partitions.values()), partitions
    per_partition: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        per_partition[record.partition].append(record)
    for part in per_partition.values():
        in_offset_order = sorted(part, key=lambda r: r.offset)
        sequences = [r.event.sequence_number for r in in_offset_order]
        assert sequences == sorted(sequences)

    for record in records:
        event = record.event
        assert record.key == (event.subject or event.source).encode()
        assert abs(record.timestamp - event.time.timestamp() * 1000) <= 1
        assert record.headers == {"content-type": CONTENT_TYPE.encode()}
        # The SDK's auto-detecting reader sees structured mode, as the binding says.
        message = KafkaMessage(headers=record.headers, key=record.key, value=record.value)
        parsed = from_kafka(message, JSONFormat())
        assert parsed.get_id() == event.id and parsed.get_type() == event.type
        assert parsed.get_data() == event.data


def test_the_publisher_process_loads_neither_reader_nor_diagnosis(
    kafka_broker: str, topic: str
) -> None:
    imported = publisher_process_imports(create_backend("kafka", options_for(kafka_broker, topic)))
    assert "dask_eventbus.backends.kafka" in imported
    assert ours_not_for_publishing(imported) == []
    assert "dask_eventbus.backends.kafka_reader" not in imported


def test_attribute_headers_repeat_the_envelope(kafka_broker: str, topic: str) -> None:
    records = publish_and_read(
        kafka_broker, topic, synthetic_messages(30, subjects=4), headers="attributes"
    )
    fmt = JSONFormat()
    for record in records:
        event, headers = record.event, record.headers
        assert headers["content-type"] == CONTENT_TYPE.encode()
        assert headers["ce_id"] == event.id.encode()
        assert headers["ce_type"] == event.type.encode()
        assert headers["ce_source"] == event.source.encode()
        assert headers["ce_specversion"] == b"1.0"
        assert headers["ce_sequence"] == event.sequence.encode()
        assert headers["ce_subject"] == event.subject.encode()
        assert headers["ce_time"].decode() == json.loads(record.value)["time"]
        # With ce_* headers the SDK's from_kafka would pick binary mode; the
        # value is still the whole structured event.
        parsed = from_structured(
            KafkaMessage(headers=headers, key=record.key, value=record.value), fmt
        )
        assert parsed.get_id() == event.id and parsed.get_type() == event.type


def test_no_headers_and_key_by_source(kafka_broker: str, topic: str) -> None:
    messages = synthetic_messages(40, subjects=9)
    records = publish_and_read(
        kafka_broker, topic, messages, headers="none", key="source", partitions=2
    )
    assert {r.headers.get("content-type") for r in records} == {None}
    assert {r.key for r in records} == {records[0].event.source.encode()}
    assert len({r.partition for r in records}) == 1
    assert [r.event.id for r in sorted(records, key=lambda r: r.offset)] == [m.id for m in messages]


def test_full_local_queue_is_back_pressure(kafka_broker: str, topic: str) -> None:
    # A producer queue of 10 records and batches of 300: produce() raises
    # BufferError many times per batch; publish waits and carries on.
    backend = create_backend(
        "kafka",
        options_for(
            kafka_broker,
            topic,
            partitions=1,
            config={"queue.buffering.max.messages": 10, "linger.ms": 1},
        ),
    )
    messages = synthetic_messages(900)
    backend.open()
    try:
        for i in range(0, 900, 300):
            backend.publish(messages[i : i + 300])
    finally:
        backend.close()
    records = read_records(kafka_broker, topic, count=900)
    assert [r.event.id for r in records] == [m.id for m in messages]


# ---------------------------------------------------------------- consumers


def test_group_resumes_after_the_last_acknowledged_event(kafka_broker: str, topic: str) -> None:
    options = options_for(kafka_broker, topic, partitions=1)
    messages = synthetic_messages(20)
    group = unique_name("group")
    backend = create_backend("kafka", options)
    backend.open()
    try:
        backend.publish(messages)
    finally:
        backend.close()

    with subscribe("kafka", from_beginning=True, group=group, **options) as events:
        first = read_events(events, count=5)
    assert [e.sequence_number for e in first] == [1, 2, 3, 4, 5]

    # The group's commits decide where reading resumes, from_beginning or not.
    events = subscribe("kafka", from_beginning=True, group=group, **options)
    second = read_events(events, count=2)
    assert [e.sequence_number for e in second] == [6, 7]
    events.close(ack=False)  # 7 was not processed: it comes again

    with subscribe("kafka", group=group, **options) as events:
        third = read_events(events, count=1)
    assert [e.sequence_number for e in third] == [7]

    # Without a group nothing is committed: from the beginning is from 1.
    with subscribe("kafka", from_beginning=True, **options) as events:
        assert read_events(events, count=1)[0].sequence_number == 1


def test_subscribe_from_now_skips_what_was_published_before(kafka_broker: str, topic: str) -> None:
    options = options_for(kafka_broker, topic, partitions=2)
    backend = create_backend("kafka", options)
    old, new = synthetic_messages(10, run_id="old"), synthetic_messages(10, run_id="new")
    backend.open()
    try:
        # One record per batch: Tansu reports a partition's end as the start
        # of its last record batch plus one, which is the true end only for
        # single-record batches (real Kafka reports the true end always).
        for message in old:
            backend.publish([message])
        with subscribe("kafka", **options) as events:
            backend.publish(new)
            received = read_events(events, count=10)
            assert events.poll(timeout=1.0) is None
    finally:
        backend.close()
    assert sorted(e.id for e in received) == sorted(m.id for m in new)


@gen_test(timeout=120)
async def test_an_event_too_large_for_kafka_is_replaced_not_retried(
    kafka_broker: str, topic: str
) -> None:
    # librdkafka refuses records over message.max.bytes (1,000,000) itself;
    # sent as it is, this event would be retried forever.
    plugin = EventBusPlugin("kafka", **options_for(kafka_broker, topic, partitions=1))
    async with (
        Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s,
        Worker(s.address, nthreads=1),
        Client(s.address, asynchronous=True) as c,
    ):
        await c.log_event("huge", {"blob": "x" * 1_500_000})
        assert await c.submit(inc, 1, key="after-huge") == 2
    stats = plugin.stats()
    assert stats["publish_errors"] == 0 and stats["undelivered"] == 0 and stats["dropped"] == 0
    assert stats["oversized"] == 1
    records = await asyncio.to_thread(read_records, kafka_broker, topic, until=is_closing)
    events = sorted((r.event for r in records), key=lambda e: e.sequence_number)
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    (oversized,) = [e for e in events if e.type == OVERSIZED]
    assert oversized.subject == "huge"
    assert oversized.data["type"] == "dask.log" and oversized.data["limit"] == 900_000
    assert oversized.data["size"] > 1_500_000
    assert any(e.subject == "after-huge" for e in events)


# ---------------------------------------------------------------- outages


@pytest.mark.slow
@gen_test(timeout=150)
async def test_outage_every_event_emitted_during_it_arrives(tansu: TansuBroker) -> None:
    topic = unique_name("dask-eventbus-test-outage")
    options = options_for(
        tansu.bootstrap, topic, partitions=1, timeout=3, config={"message.timeout.ms": 1500}
    )
    with dask.config.set(FAST_RETRY):
        plugin = EventBusPlugin("kafka", **options)
    gate = unique_name("gate")
    async with (
        Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s,
        Worker(s.address, nthreads=2),
        Client(s.address, asynchronous=True) as c,
    ):
        gated = c.submit(wait_for_gate, 1, gate, key="gated")
        await wait_until(lambda: "gated" in s.tasks and s.tasks["gated"].state == "processing")
        # The graph is computing and the scheduler has nothing new to say:
        # read all that reached the broker before it goes (with its data).
        await wait_until(lambda: plugin.stats()["queued"] == 0)
        published = plugin.stats()["published"]
        before = await asyncio.to_thread(read_records, tansu.bootstrap, topic, count=published)

        tansu.stop()
        await DaskEvent(gate, client=c).set()
        during = c.map(inc, range(30), key=[f"during-{i}" for i in range(30)])
        assert await c.gather(during) == list(range(1, 31))
        assert await gated == 2
        await wait_until(lambda: plugin.stats()["publish_errors"] > 0)
        assert plugin.stats()["queued"] > 0
        assert "cannot connect to Kafka" in plugin.stats()["last_error"]

        tansu.start()
        await wait_until(lambda: plugin.stats()["queued"] == 0, timeout=60)
        assert await c.submit(inc, 100, key="after") == 101
    stats = plugin.stats()
    assert stats["dropped"] == 0 and stats["undelivered"] == 0
    after = await asyncio.to_thread(read_records, tansu.bootstrap, topic, until=is_closing)

    sequences = {r.event.sequence_number for r in before} | {r.event.sequence_number for r in after}
    assert sequences == set(range(1, max(sequences) + 1))
    keys = {r.event.data["key"] for r in after if r.event.type == TASK_TRANSITION}
    assert {f"during-{i}" for i in range(30)} | {"gated", "after"} <= keys
    assert is_closing(max((r.event for r in after), key=lambda e: e.sequence_number))


@pytest.mark.slow
@gen_test(timeout=120, clean_kwargs={"threads": False})
async def test_close_is_bounded_when_the_broker_never_returns(tansu: TansuBroker) -> None:
    topic = unique_name("dask-eventbus-test-gone")
    # A delivery timeout far beyond close-timeout: close must not wait for it.
    options = options_for(tansu.bootstrap, topic, partitions=1, timeout=8)
    with dask.config.set({**FAST_RETRY, "eventbus.close-timeout": "2s"}):
        plugin = EventBusPlugin("kafka", **options)
    s = await Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin])
    try:
        async with Worker(s.address, nthreads=1), Client(s.address, asynchronous=True) as c:
            assert await c.submit(inc, 1, key="before") == 2
            await wait_until(lambda: plugin.stats()["published"] > 0)
            await wait_until(lambda: plugin.stats()["queued"] == 0)
            tansu.stop()
            assert await c.submit(inc, 2, key="during") == 3
    finally:
        start = time.monotonic()
        await s.close()
        elapsed = time.monotonic() - start
    # close-timeout, the pipeline's one-second margin, and slack for a busy machine.
    assert elapsed < 2 + 1 + 5, f"closing took {elapsed:.1f}s"
    stats = plugin.stats()
    assert stats["undelivered"] > 0
    # The abandoned publisher thread gives up within its delivery timeout;
    # wait for it so that it does not outlive the test.
    await wait_until(
        lambda: not any(t.name == "dask-eventbus-kafka" for t in threading.enumerate()),
        timeout=60,
    )


def test_publish_is_bounded_and_explained_when_unreachable() -> None:
    port = free_port()
    backend = create_backend(
        "kafka",
        {
            "topic": "nowhere",
            "timeout": 1,
            "config": {
                "bootstrap.servers": f"127.0.0.1:{port}",
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "alice",
                "sasl.password": "hunter2-very-secret",
            },
        },
    )
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        backend.open()
    assert time.monotonic() - start < 15
    backend.close()
    explanation = backend.explain(info.value)
    assert f"cannot connect to Kafka at 127.0.0.1:{port}" in explanation
    assert "Connection refused" in explanation
    shown = [explanation, str(info.value), backend.describe(), repr(backend), repr(backend.options)]
    assert not any("hunter2" in text for text in shown), shown
    assert backend.describe() == f"Kafka topic 'nowhere' at 127.0.0.1:{port}"


@pytest.mark.slow
def test_broker_restart_needs_a_new_producer_and_gets_one(tansu: TansuBroker) -> None:
    topic = unique_name("dask-eventbus-test-restart")
    options = options_for(
        tansu.bootstrap, topic, partitions=1, timeout=2, config={"message.timeout.ms": 1000}
    )
    backend = create_backend("kafka", options)
    messages = synthetic_messages(60)
    backend.open()
    try:
        backend.publish(messages[:20])
        tansu.stop()
        with pytest.raises(Exception) as info:
            backend.publish(messages[20:])
        assert "cannot connect to Kafka" in backend.explain(info.value)
        backend.close()
        tansu.start()
        # As the pipeline does: reopen and publish the same batch again. The
        # restarted broker has forgotten the topic and the idempotent
        # producer; open() recreates the one and replaces the other.
        deadline = time.monotonic() + 30
        while True:
            try:
                backend.open()
                backend.publish(messages[20:])
                break
            except Exception:
                backend.close()
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        backend.close()
    records = read_records(tansu.bootstrap, topic, count=40)
    assert [r.event.id for r in records] == [m.id for m in messages[20:]]


@pytest.mark.slow
def test_a_stalled_broker_makes_publish_fail_in_bounded_time() -> None:
    port = free_port()
    with FaultProxy(("127.0.0.1", port)) as proxy:
        with TansuBroker(require_tansu(), port, advertised_port=proxy.port):
            bootstrap = f"127.0.0.1:{proxy.port}"
            topic = unique_name("dask-eventbus-test-stall")
            backend = create_backend(
                "kafka", options_for(bootstrap, topic, partitions=1, timeout=2)
            )
            messages = synthetic_messages(30)
            backend.open()
            try:
                backend.publish(messages[:10])
                proxy.set_mode("stall")
                start = time.monotonic()
                with pytest.raises(Exception) as info:
                    backend.publish(messages[10:])
                # message.timeout.ms (2 s) plus the flush's grace, with slack.
                assert time.monotonic() - start < 15
                assert "Kafka at 127.0.0.1" in backend.explain(info.value)
                backend.close()
                proxy.set_mode("pass")
                proxy.cut()
                backend.open()
                backend.publish(messages[10:])
            finally:
                backend.close()
            records = read_records(bootstrap, topic, quiet=2.0)
    # What the stalled connection held may arrive as well: duplicates, no loss.
    assert {r.event.id for r in records} == {m.id for m in messages}


# ---------------------------------------------------------------- options


def test_missing_topic_is_explained_when_not_created(kafka_broker: str, topic: str) -> None:
    # With create-missing off the producer asks brokers that allow it to
    # auto-create topics (Tansu does, and Kafka by default); this one must not.
    options = options_for(
        kafka_broker, topic, create_missing=False, config={"allow.auto.create.topics": False}
    )
    backend = create_backend("kafka", options)
    with pytest.raises(Exception) as info:
        backend.open()
    backend.close()
    explanation = backend.explain(info.value)
    assert f"topic {topic!r} does not exist" in explanation
    assert "create-missing" in explanation


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"linger.mss": 5}, "No such configuration property"),
        ({"acks": 1}, "acks"),
        ({"on_delivery": print}, "delivery reports"),
        ({"transactional.id": "x"}, "transactional.id"),
        ({"delivery.timeout.ms": 0}, "message.timeout.ms must be greater than 0"),
    ],
)
def test_bad_client_settings_are_refused_up_front(config: dict, fragment: str) -> None:
    secret = {"sasl.password": "hunter2-very-secret"}
    with pytest.raises(ConfigError) as info:
        EventBusPlugin("kafka", config={**secret, **config})
    message = str(info.value)
    assert fragment in message
    assert "eventbus.backends.kafka" in message
    assert "hunter2" not in message


def test_defaults_and_pickling() -> None:
    backend = create_backend("kafka", {"config": {"sasl.password": "hunter2-very-secret"}})
    assert isinstance(backend, KafkaBackend)
    assert backend.describe() == "Kafka topic 'dask-events' at localhost:9092"
    copy = pickle.loads(pickle.dumps(backend))
    assert copy.options == backend.options
    assert "hunter2" not in repr(copy.options)


@pytest.mark.slow
def test_the_tls_block_reaches_librdkafka(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    context = tls_server_context(certificates)
    with tansu_behind_a_proxy(unique_name(), tls=context) as (_, plain):
        messages = synthetic_messages(5)
        assert_replayed("kafka", {**plain, "tls": {"ca-file": certificates["ca"]}}, messages)

        untrusted = create_backend("kafka", {**plain, "tls": {}})  # the system's CAs
        with pytest.raises(Exception) as info:
            untrusted.open()
            untrusted.publish(messages)
        untrusted.close()
        assert "certificate verify failed" in untrusted.explain(info.value)


def test_only_making_a_backend_asks_librdkafka_to_check_its_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match=r"linger\.mss"):
        create_backend("kafka", {"config": {"linger.mss": 5}})
    backend = create_backend("kafka", {"topic": "checked-once"})
    producers: list[dict[str, Any]] = []
    monkeypatch.setattr(kafka_backend, "Producer", producers.append)
    restored = pickle.loads(pickle.dumps(backend))  # as the publisher process does
    assert restored.options == backend.options
    assert producers == [], "restoring a backend made a librdkafka producer"
