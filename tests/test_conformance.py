"""The conformance suite: every backend passes these, through its harness."""

from __future__ import annotations

import json
from collections import defaultdict

import dask
import pytest
from cloudevents.core.formats.json import JSONFormat
from distributed.utils_test import gen_test
from helpers import (
    Harness,
    is_closing,
    read_events,
    read_raw,
    run_workload,
    synthetic_messages,
)
from jsonschema import Draft202012Validator, FormatChecker

from dask_eventbus import (
    ConfigError,
    Event,
    EventBusPlugin,
    create_backend,
    subscribe,
)
from dask_eventbus.events import EVENT_TYPES, load_shipped_schema

pytestmark = pytest.mark.timeout(180)


def publish(harness: Harness, batches: list[list]) -> None:
    backend = create_backend(harness.backend, harness.options)
    backend.open()
    try:
        for batch in batches:
            backend.send(batch)
    finally:
        backend.close()


def test_round_trip_keeps_every_event_and_per_subject_order(harness: Harness) -> None:
    messages = synthetic_messages(300, subjects=7)
    with subscribe(harness.backend, **harness.options) as events:
        publish(harness, [messages[:1], messages[1:120], messages[120:]])
        received = read_events(events, count=len(messages))
    assert sorted(e.id for e in received) == sorted(m.id for m in messages)
    by_subject = defaultdict(list)
    for event in received:
        by_subject[event.subject].append(event.sequence_number)
    for subject, sequences in by_subject.items():
        assert sequences == sorted(sequences), f"order broken for {subject}"
    first = received[0]
    assert first.data["key"] == first.subject
    assert first.type == "dask.task.transition"


@pytest.mark.replays
def test_subscribe_from_beginning_replays(harness: Harness) -> None:
    messages = synthetic_messages(50)
    publish(harness, [messages])
    with subscribe(harness.backend, from_beginning=True, **harness.options) as events:
        received = read_events(events, count=50)
    assert [e.id for e in received] == [m.id for m in messages]


def test_subscribe_filters_by_type(harness: Harness) -> None:
    messages = synthetic_messages(20)
    with subscribe(harness.backend, types=["dask.scheduler.*"], **harness.options) as events:
        publish(harness, [messages])
        assert events.poll(timeout=1.0) is None


@gen_test(timeout=120)
async def test_real_events_are_valid_cloudevents_and_match_the_schema(
    harness: Harness,
) -> None:
    validator = Draft202012Validator(load_shipped_schema(), format_checker=FormatChecker())
    plugin = EventBusPlugin(harness.backend, **harness.options)
    with subscribe(harness.backend, **harness.options) as events:
        await run_workload(plugin)
        bodies = read_raw(events, until=is_closing)
    assert plugin.stats()["oversized"] == 1
    received = [Event.from_json(body) for body in bodies]
    assert {e.type for e in received} >= set(EVENT_TYPES) - {
        "dask.scheduler.restarted",
        "dask.eventbus.dropped",
        "dask.eventbus.probe",
    }
    fmt = JSONFormat()
    for body in bodies:
        parsed = fmt.read(None, body)
        assert parsed.get_specversion() == "1.0"
        document = json.loads(body)
        errors = sorted(validator.iter_errors(document), key=str)
        assert not errors, f"{document['type']}: {errors[0].message}"


@gen_test(timeout=120)
async def test_close_flushes_everything(harness: Harness) -> None:
    # Nothing is published before close: the batch never fills and the flush
    # interval never passes while the scheduler runs.
    slow = {"eventbus.queue.flush-interval": "1h", "eventbus.queue.batch-size": 100000}
    with subscribe(harness.backend, **harness.options) as events:
        with dask.config.set(slow):
            plugin = EventBusPlugin(harness.backend, **harness.options)
        await run_workload(plugin)
        stats = plugin.stats()
        received = read_events(events, until=is_closing)
    sequences = [e.sequence_number for e in received]
    assert sequences == list(range(1, len(received) + 1))
    assert stats["published"] == len(received)
    assert stats["undelivered"] == 0 and stats["dropped"] == 0


def test_bad_options_are_refused_clearly(harness: Harness) -> None:
    with pytest.raises(ConfigError, match="no-such-option"):
        create_backend(harness.backend, {**harness.options, "no-such-option": 1})
    for options, fragment in harness.bad_options:
        with pytest.raises(ConfigError) as info:
            EventBusPlugin(harness.backend, **{**harness.options, **options})
        message = str(info.value)
        assert fragment in message
        assert f"eventbus.backends.{harness.backend}" in message


@pytest.mark.batched
def test_batched_content_mode_round_trip(harness: Harness) -> None:
    options = {**harness.options, "content-mode": "batched"}
    messages = synthetic_messages(250, subjects=5)
    with subscribe(harness.backend, **harness.options) as events:
        publish(Harness(harness.backend, options), [messages[:100], messages[100:]])
        bodies = read_raw(events, 2)
    assert [len(json.loads(body)) for body in bodies] == [100, 150]
    with subscribe(harness.backend, **harness.options) as events:
        publish(Harness(harness.backend, options), [messages[:100], messages[100:]])
        received = read_events(events, count=250)
    assert [e.id for e in received] == [m.id for m in messages]


def test_raw_bodies_are_cloudevents(harness: Harness) -> None:
    messages = synthetic_messages(5)
    with subscribe(harness.backend, **harness.options) as events:
        publish(harness, [messages])
        bodies = read_raw(events, 5)
    assert bodies == [m.body for m in messages]
