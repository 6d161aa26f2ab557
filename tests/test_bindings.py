"""The pure bindings from messages to broker records: no broker needed."""

from __future__ import annotations

import json
import time

import hiredis
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary, from_structured
from cloudevents.core.formats.json import JSONFormat

from dask_eventbus.backends import BATCH_CONTENT_TYPE, Message, decode_delivery, in_content_mode
from dask_eventbus.bindings import amqp, kafka, nats, redis
from dask_eventbus.events import DROPPED, Event
from dask_eventbus.messages import build_messages
from dask_eventbus.normalize import Normalizer
from dask_eventbus.records import DroppedRecord, TransitionRecord
from dask_eventbus.testing import synthetic_messages


def varied_messages() -> list[Message]:
    """A transition, an event without a subject, and a subject beyond ASCII."""
    normalizer = Normalizer("dask://host/Scheduler-1", "run")
    now = time.time()
    records = [
        TransitionRecord(1, now, "inc-1", "processing", "memory", "s-1"),
        DroppedRecord(2, now + 0.000123, 5, 10, 14, "drop-oldest"),
        TransitionRecord(3, now, "ключ-キー", "waiting", "processing", "s-3"),
    ]
    return build_messages(normalizer, records)


# ---------------------------------------------------------------- kafka


@pytest.mark.parametrize("message", varied_messages(), ids=lambda m: m.type)
def test_kafka_attribute_headers_are_the_bodys_attributes(message: Message) -> None:
    record = kafka.to_record(message, "subject", "attributes")
    body = json.loads(message.body)
    headers = {name: value.encode() for name, value in record.headers or []}
    assert headers.pop("content-type") == b"application/cloudevents+json"
    kept = set(body) - {"data", "datacontenttype"}
    assert headers == {f"ce_{name}": body[name].encode() for name in kept}
    # A CloudEvents SDK reads the same attributes in binary mode as in structured mode.
    fmt = JSONFormat()
    as_binary = from_binary(KafkaMessage(headers=headers, key=None, value=b"{}"), fmt)
    structured = from_structured(KafkaMessage(headers={}, key=None, value=record.value), fmt)
    for attribute in ("id", "source", "type", "time", "subject", "specversion"):
        assert as_binary.get_attributes().get(attribute) == (
            structured.get_attributes().get(attribute)
        ), attribute


def test_kafka_keys_order_by_subject_and_fall_back_to_the_source() -> None:
    transition, dropped, _ = varied_messages()
    assert kafka.to_record(transition, "subject", "content-type").key == "inc-1"
    assert kafka.to_record(dropped, "subject", "content-type").key == "dask://host/Scheduler-1"
    assert kafka.to_record(transition, "source", "none").key == "dask://host/Scheduler-1"
    assert kafka.to_record(transition, "type", "none").key == "dask.task.transition"
    assert kafka.to_record(transition, "none", "none") == (None, transition.body, None)


def test_kafka_batches_carry_the_batch_content_type() -> None:
    (batch,) = in_content_mode(varied_messages(), "batched")
    assert kafka.headers_of(batch, "content-type") == [("content-type", BATCH_CONTENT_TYPE)]
    headers = dict(kafka.headers_of(batch, "attributes") or [])
    assert headers["content-type"] == BATCH_CONTENT_TYPE
    assert "ce_source" not in headers  # a batch is no single event
    assert json.loads(kafka.to_record(batch, "subject", "none").value)[2]["subject"] == "ключ-キー"


# ---------------------------------------------------------------- amqp


def test_amqp_routing_keys_from_templates() -> None:
    transition, dropped, wide = varied_messages()
    default = amqp.routing_key_function(None)
    assert default(transition) == "dask.task.transition.processing.memory"
    assert default(dropped) == DROPPED
    template = amqp.routing_key_function("{type}.{finish}.{subject}")
    assert template(transition) == "dask.task.transition.memory.inc-1"
    assert template(dropped) == f"{DROPPED}.."
    assert template(wide) == "dask.task.transition.processing.ключ-キー"
    (batch,) = in_content_mode([transition, dropped], "batched")
    assert template(batch) == "dask.eventbus.batch"


def test_amqp_routing_keys_are_cut_to_255_bytes_of_whole_characters() -> None:
    (message,) = synthetic_messages(1)
    long_subject = message._replace(subject="é" * 300)
    key = amqp.routing_key_function("{subject}")(long_subject)
    assert len(key.encode()) <= amqp.MAX_ROUTING_KEY_BYTES
    assert key == "é" * 127


@pytest.mark.parametrize(
    ("template", "fragment"),
    [("{worker}", "unknown placeholders ['worker']"), ("{type", "not a valid template")],
)
def test_amqp_bad_templates_are_refused(template: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        amqp.check_routing_key(template)


def test_amqp_properties() -> None:
    transition = varied_messages()[0]
    assert amqp.properties_of(transition) == {
        "content_type": "application/cloudevents+json",
        "message_id": transition.id,
        "type": "dask.task.transition",
        "timestamp": int(transition.time),
        "app_id": "dask-eventbus",
    }


def test_amqp_topology_of_publisher_and_subscribers() -> None:
    arguments = amqp.queue_arguments({"x-queue-type": "quorum"}, max_length=10, message_ttl=3600)
    assert arguments == {"x-queue-type": "quorum", "x-max-length": 10, "x-message-ttl": 3_600_000}
    topic = amqp.Topology(amqp.ExchangeSpec("events"), "kept", queue_arguments=arguments)
    kept = amqp.QueueSpec("kept", ("#",), durable=True, arguments=arguments)
    assert topic.exchange.declared and topic.publisher_queue() == kept
    # A named queue is the subscriber's, bound also with its keys; without
    # one, a temporary queue of its own.
    failures = ("dask.task.transition.*.erred",)
    assert topic.subscriber_queue(failures) == amqp.QueueSpec(
        "kept", failures, durable=True, arguments=arguments
    )
    assert amqp.Topology(topic.exchange).publisher_queue() is None
    own = amqp.Topology(topic.exchange).subscriber_queue(failures)
    assert own == amqp.QueueSpec("", failures) and own.temporary and not kept.temporary
    assert amqp.Topology(topic.exchange, queue_durable=False).subscriber_queue(["#"], "q") == (
        amqp.QueueSpec("q", ("#",), durable=False)
    )

    fanout = amqp.Topology(amqp.ExchangeSpec("events", "fanout"))
    assert fanout.subscriber_queue(failures).keys == ("",)  # the keys mean nothing there
    # The default exchange is neither declared nor bound to.
    default = amqp.Topology(amqp.ExchangeSpec(""), "kept")
    assert not default.exchange.declared and default.subscriber_queue(["#"]).keys == ()
    assert not amqp.ExchangeSpec("managed", declare=False).declared


# ---------------------------------------------------------------- redis


@pytest.mark.parametrize("maxlen", [0, 1000])
def test_redis_xadd_commands_carry_each_entrys_fields(maxlen: int) -> None:
    messages = varied_messages()
    reader = hiredis.Reader()
    reader.feed(redis.xadd_commands(messages, "dask-events", maxlen))
    head = [b"XADD", b"dask-events", *([b"MAXLEN", b"~", b"1000"] if maxlen else []), b"*"]
    for message in messages:
        command = reader.gets()
        assert command[: len(head)] == head
        fields = command[len(head) :]
        assert list(zip(fields[::2], fields[1::2], strict=True)) == redis.entry_fields(message)
        assert redis.body_of(dict(redis.entry_fields(message))) == message.body
    assert reader.gets() is False
    assert redis.body_of(None) is None  # an entry trimmed away


# ---------------------------------------------------------------- nats


def test_nats_records_carry_subject_message_id_and_content_type() -> None:
    transition, dropped, wide = varied_messages()
    record = nats.to_record(transition, "dask-events")
    assert record.subject == "dask-events.dask.task.transition.processing.memory"
    assert record.payload is transition.body
    assert record.headers == {
        "Content-Type": "application/cloudevents+json",
        "Nats-Msg-Id": f"dask://host/Scheduler-1#{transition.id}",
    }
    assert nats.to_record(dropped, "a.b").subject == f"a.b.{DROPPED}"
    assert nats.to_record(wide, "p").subject == "p.dask.task.transition.waiting.processing"
    assert "Nats-Msg-Id" not in nats.to_record(transition, "p", deduplicate=False).headers
    # The same event of another scheduler has another message id.
    other = transition._replace(source="dask://host/Scheduler-2")
    assert nats.message_id(other) != nats.message_id(transition)


def test_nats_records_read_back_as_the_events() -> None:
    messages = varied_messages()
    for message in messages:
        record = nats.to_record(message, "p")
        delivery = nats.delivery_of(record.payload, record.headers)
        assert decode_delivery(delivery) == [Event.from_json(message.body)]
    (batch,) = in_content_mode(messages, "batched")
    record = nats.to_record(batch, "p")
    assert record.subject == "p.dask.eventbus.batch"
    assert record.headers["Content-Type"] == BATCH_CONTENT_TYPE
    assert decode_delivery(nats.delivery_of(record.payload, record.headers)) == [
        Event.from_json(m.body) for m in messages
    ]
    with pytest.raises(ValueError, match="not a CloudEvent"):
        decode_delivery(nats.delivery_of(b"{}", {"Content-Type": "text/plain"}))


def test_nats_subject_filters_from_types() -> None:
    assert nats.subject_filters("p", None) is None
    assert nats.subject_filters("p", ["dask.task.*"]) == ["p.dask.task.>", "p.dask.eventbus.batch"]
    assert nats.subject_filters("p", ["dask.worker.added"]) == [
        "p.dask.worker.added",
        "p.dask.worker.added.>",
        "p.dask.eventbus.batch",
    ]
    # Overlapping filters are refused by JetStream: the wider one stays.
    assert nats.subject_filters("p", ["dask.*", "dask.task.*"]) == ["p.dask.>"]
    assert nats.subject_filters("p", ["dask.task.transition.*.erred"]) is None
    assert nats.subject_filters("p", ["*"]) is None


@pytest.mark.parametrize("prefix", ["", "a..b", ".a", "a.", "a.*", "a.>", "a b"])
def test_nats_bad_subject_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="subject-prefix"):
        nats.check_subject_prefix(prefix)


def test_publisher_confirms_settle_in_any_order_and_count_refusals() -> None:
    confirms = amqp.PublisherConfirms()
    confirms.expect(6)
    confirms.settle(2, multiple=False)
    confirms.settle(4, multiple=False, refused=True)
    assert (confirms.unsettled, confirms.nacked) == (4, 1)
    confirms.settle(1, multiple=False)  # 1 and 2 settled: contiguous now
    assert confirms.unsettled == 3
    confirms.settle(5, multiple=True, refused=True)  # 3 and 5; 4 was refused before
    assert (confirms.unsettled, confirms.nacked) == (1, 3)
    confirms.settle(6, multiple=True)
    confirms.settle(6, multiple=False)  # settled twice counts once
    assert (confirms.unsettled, confirms.nacked) == (0, 3)
    confirms.expect(2)
    assert confirms.unsettled == 2
