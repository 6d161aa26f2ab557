"""Capture records: one type per event, untracked by the garbage collector,
carried to the publisher process as arrays and decoded back into their types."""

from __future__ import annotations

import gc
import time
from typing import get_args

import msgspec
import pytest

from dask_eventbus.events import EVENT_TYPES, OVERSIZED
from dask_eventbus.normalize import Normalizer
from dask_eventbus.process.frames import BatchFrame, decode_parent_frame, pack, parent_frames
from dask_eventbus.records import (
    RECORD_TYPES,
    AnyRecord,
    DroppedRecord,
    GraphRecord,
    GraphTasksRecord,
    LogRecord,
    ProbeRecord,
    Record,
    SchedulerStartedRecord,
    SpanRecord,
    TransitionRecord,
    WorkerMetricsRecord,
    WorkerRemovedRecord,
    WorkerStatusRecord,
)

NOW = 1_796_000_000.25
VERSIONS = {"dask": "2026.8.0", "distributed": "2026.8.0", "dask_eventbus": "0.2.0"}
WORKER = {"address": "tcp://10.0.0.1:4000", "name": "0", "host": "10.0.0.1", "nthreads": 2,
          "memory_limit": 1 << 30, "resources": {}}  # fmt: skip

ONE_OF_EACH: list[Record] = [
    TransitionRecord(
        1,
        NOW,
        ("inc", 3),
        "processing",
        "erred",
        "s-1",
        "tcp://w:1",
        {"exception_text": "ZeroDivisionError()", "nbytes": 8},
    ),
    GraphRecord(2, NOW, "Client-1", ["a", ("b", 1)], ["a"], 2, "update-graph-1"),
    WorkerRemovedRecord(3, NOW, WORKER, "retire"),
    SchedulerStartedRecord(4, NOW, "Scheduler-1", "tcp://10.0.0.0:8786", VERSIONS, 1),
    LogRecord(5, NOW, "all", {"action": "add-worker", "big": 2**70}),
    DroppedRecord(9, NOW, 3, 6, 8, "drop-oldest"),
    ProbeRecord(10, NOW, "probe-1", "host", "0.2.0"),
    GraphTasksRecord(
        11,
        NOW,
        "Client-1",
        "update-graph-1",
        1,
        2,
        ["a", ("b", 1)],
        [0, 2],
        ["a", ("c", 0)],
        ["span-1", "span-1"],
        {0: {"retries": 2}},
        3,
        0,
    ),
    SpanRecord(12, NOW, "span-2", ["load", "clean"], "span-1"),
    WorkerStatusRecord(13, NOW, "tcp://10.0.0.1:4000", "paused", "running", "worker-status-1"),
    WorkerMetricsRecord(
        14,
        NOW,
        "tcp://10.0.0.1:4000",
        "running",
        1 << 30,
        3,
        (900, 500, 400, 0),
        {"time": NOW, "cpu": 12.5, "task_counts": {"executing": 2}, "transfer": {}},
    ),
    WorkerRemovedRecord(
        15,
        NOW,
        WORKER,
        "handle-worker-cleanup-1",
        {"expected": False, "processing": [("x", 1)], "processing_total": 1},
    ),
]


def test_every_event_type_but_oversized_has_a_record_type() -> None:
    assert set(RECORD_TYPES) == set(EVENT_TYPES) - {OVERSIZED}
    assert set(RECORD_TYPES.values()) == set(get_args(AnyRecord))
    for event_type, record_type in RECORD_TYPES.items():
        assert record_type.event_type == event_type


def test_records_are_never_tracked_by_the_garbage_collector() -> None:
    # A burst of buffered records must not set off collections of the heap.
    record = TransitionRecord(1, time.time(), "k", "waiting", "processing", "s", None, {"a": []})
    gc.collect()
    assert not gc.is_tracked(record)


def test_a_record_travels_to_the_publisher_process_as_an_array() -> None:
    record = LogRecord(5, NOW, "topic", {"x": 1})
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(record)) == [
        "dask.log", 5, NOW, "topic", {"x": 1}
    ]  # fmt: skip


@pytest.mark.parametrize("record", ONE_OF_EACH, ids=lambda r: type(r).__name__)
def test_the_publisher_process_normalizes_a_record_as_this_process_does(record: Record) -> None:
    """A batch frame decodes into the same record types, and gives the same event
    (tuple keys come back as lists; integers beyond 64 bits as text)."""
    frame = parent_frames.decode(pack(BatchFrame(7, [record])))  # type: ignore[list-item]
    assert isinstance(frame, BatchFrame) and frame.batch_id == 7
    (decoded,) = frame.records
    assert type(decoded) is type(record)
    normalizer = Normalizer("dask://test/records", "run")
    here, there = normalizer.event(record).to_dict(), normalizer.event(decoded).to_dict()
    if isinstance(record, LogRecord):
        assert there["data"]["message"]["big"] == str(2**70)
        there["data"]["message"]["big"] = here["data"]["message"]["big"]
    assert there == here


def test_a_record_the_publisher_process_cannot_decode_costs_only_that_event() -> None:
    bad = ["dask.task.transition", 1, NOW, "k", 5, "memory"]  # a start state that is no string
    good = ["dask.log", 2, NOW, "topic", {"x": 1}]
    frame = decode_parent_frame(msgspec.msgpack.encode(["batch", 3, [bad, good]]))
    assert isinstance(frame, BatchFrame) and frame.batch_id == 3
    error, log = frame.records
    assert isinstance(error, LogRecord) and error.sequence == 1
    assert error.topic == "dask-eventbus.normalization-error"
    assert "Expected `str`, got `int`" in error.message["error"]
    assert log == LogRecord(2, NOW, "topic", {"x": 1})
