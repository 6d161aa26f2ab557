"""Delivery guarantees of the pipeline: retries, overflow, outages, close."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import dask
import pytest
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test
from helpers import FAST_RETRY

from dask_eventbus import EventBusPlugin, Message, register_backend
from dask_eventbus.backends.memory import MemoryBackend, MemoryOptions, get_store
from dask_eventbus.buffer import Pipeline
from dask_eventbus.config import load_settings
from dask_eventbus.events import TASK_TRANSITION
from dask_eventbus.normalize import Normalizer
from dask_eventbus.publisher import Publisher
from dask_eventbus.records import TransitionRecord
from dask_eventbus.testing import run_workload
from dask_eventbus.testing.workload import inc

pytestmark = pytest.mark.timeout(120)


class FlakyOptions(MemoryOptions):
    failures: int = 0
    """How many publishes fail before the backend recovers."""
    partial: bool = False
    """Failing publishes store the first half of the batch before raising."""


class FlakyBackend(MemoryBackend):
    """A memory backend whose first ``failures`` publishes fail."""

    name = "flaky"
    Options = FlakyOptions
    options: FlakyOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.failed = 0
        self.opened = 0

    def open(self) -> None:
        self.opened += 1

    def publish(self, messages: Sequence[Message]) -> None:
        if self.failed < self.options.failures:
            self.failed += 1
            if self.options.partial:
                super().publish(messages[: len(messages) // 2])
            raise ConnectionError(f"simulated outage {self.failed}")
        super().publish(messages)


class GatedBackend(MemoryBackend):
    """Publishes fail while ``down`` is set, like an unreachable broker."""

    name = "gated"
    down = threading.Event()

    def publish(self, messages: Sequence[Message]) -> None:
        if self.down.is_set():
            time.sleep(0.05)
            raise ConnectionError("broker unreachable")
        super().publish(messages)


register_backend("flaky", FlakyBackend)
register_backend("gated", GatedBackend)


@pytest.mark.parametrize("partial", [False, True], ids=["clean-failures", "half-written"])
@gen_test(timeout=60)
async def test_a_backend_that_fails_then_recovers_loses_nothing(
    memory_store_name: str, partial: bool
) -> None:
    with dask.config.set({**FAST_RETRY, "eventbus.queue.batch-size": 7}):
        plugin = EventBusPlugin("flaky", name=memory_store_name, failures=5, partial=partial)
    await run_workload(plugin)
    events = get_store(memory_store_name).events()
    sequences = [e.sequence_number for e in events]
    unique = sorted(set(sequences))
    assert unique == list(range(1, unique[-1] + 1))
    assert events[-1].type == "dask.scheduler.closing"
    stats = plugin.stats()
    assert stats["publish_errors"] == 5 and stats["retries"] == 5
    assert stats["dropped"] == 0 and stats["undelivered"] == 0
    assert "simulated outage 5" in stats["last_error"]
    assert plugin.backend.opened == 6
    duplicates = len(sequences) - len(unique)
    if partial:
        # Each failed publish wrote half a batch (3 of 7) that is sent again.
        assert 0 < duplicates <= 5 * 3
    else:
        assert duplicates == 0


def make_pipeline(
    backend: MemoryBackend, retry: dict[str, Any] | None = None, **queue: Any
) -> Pipeline:
    overrides = {"queue": {k.replace("_", "-"): v for k, v in queue.items()}, "retry": retry or {}}
    settings = load_settings(overrides)
    publisher = Publisher(backend, Normalizer("/tests/pipeline", "run"), settings)
    return Pipeline(backend, publisher, settings)


def capture_transitions(pipeline: Pipeline, count: int) -> None:
    for i in range(count):
        pipeline.capture(
            TransitionRecord(
                pipeline.next_sequence(), time.time(), f"k-{i}", "waiting", "processing", "s"
            )
        )


@pytest.mark.parametrize(
    ("policy", "kept", "dropped_range"),
    [("drop-oldest", range(91, 101), (1, 90)), ("drop-newest", range(1, 11), (11, 100))],
)
def test_overflow_drops_by_policy_and_announces_it(
    memory_store_name: str, policy: str, kept: range, dropped_range: tuple[int, int], caplog
) -> None:
    backend = MemoryBackend(name=memory_store_name)
    pipeline = make_pipeline(backend, max_events=10, batch_size=5, overflow=policy)
    with caplog.at_level(logging.ERROR, logger="distributed.eventbus"):
        capture_transitions(pipeline, 100)  # the publisher is not running yet
        pipeline.start()
        pipeline.close()
    events = get_store(memory_store_name).events()
    first, last = dropped_range
    announcement = {
        "count": 90,
        "first_sequence": first,
        "last_sequence": last,
        "policy": policy,
    }
    dropped = [e for e in events if e.type == "dask.eventbus.dropped"]
    assert [e.data for e in dropped] == [announcement]
    assert dropped[0].sequence_number == last
    transitions = [e.sequence_number for e in events if e.type == TASK_TRANSITION]
    assert transitions == list(kept)
    sequences = [e.sequence_number for e in events]
    assert sequences == sorted(sequences)
    assert pipeline.dropped == 90 and pipeline.sink.stats.published == 11
    assert "queue was full" in caplog.text and caplog.text.count("queue was full") == 1


def test_drops_while_the_publisher_runs_are_counted_exactly(memory_store_name: str) -> None:
    GatedBackend.down.set()
    backend = GatedBackend(name=memory_store_name)
    fast = {"initial-backoff": "5ms", "max-backoff": "5ms"}
    pipeline = make_pipeline(
        backend, retry=fast, max_events=50, batch_size=10, flush_interval="5ms"
    )
    pipeline.start()
    try:
        capture_transitions(pipeline, 1000)
        time.sleep(0.2)
        GatedBackend.down.clear()
        capture_transitions(pipeline, 10)
    finally:
        GatedBackend.down.clear()
        pipeline.close()
    events = get_store(memory_store_name).events()
    transitions = [e for e in events if e.type == TASK_TRANSITION]
    announced = sum(e.data["count"] for e in events if e.type == "dask.eventbus.dropped")
    assert len(transitions) + announced == 1010
    assert announced == pipeline.dropped > 0
    for e in events:
        if e.type == "dask.eventbus.dropped":
            assert e.data["last_sequence"] - e.data["first_sequence"] + 1 == e.data["count"]
    sequences = [e.sequence_number for e in events]
    assert sequences == sorted(set(sequences))


@gen_test(timeout=60)
async def test_the_scheduler_keeps_computing_while_the_backend_is_down(
    memory_store_name: str, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    GatedBackend.down.set()
    with dask.config.set({**FAST_RETRY, "eventbus.close-timeout": "10s"}):
        plugin = EventBusPlugin("gated", name=memory_store_name)
    try:
        async with Scheduler(
            host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]
        ) as s:
            async with Worker(s.address, nthreads=2):
                async with Client(s.address, asynchronous=True) as c:
                    futures = c.map(inc, range(200))
                    assert sum(await c.gather(futures)) == sum(range(1, 201))
                    stats = await c.scheduler.eventbus_stats()
                    assert stats["published"] == 0 and stats["publish_errors"] > 0
                    assert stats["connected"] is False and stats["queued"] > 800
                    GatedBackend.down.clear()
                    del futures
                    while plugin.stats()["queued"]:
                        await asyncio.sleep(0.05)
    finally:
        GatedBackend.down.clear()
    events = get_store(memory_store_name).events()
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    memory = [e for e in events if e.type == TASK_TRANSITION and e.data["finish"] == "memory"]
    assert len(memory) == 200
    assert "unresponsive" not in caplog.text
    assert "cannot publish to memory store" in caplog.text
    assert "works again" in caplog.text


def test_close_gives_up_after_close_timeout(memory_store_name: str, caplog) -> None:
    GatedBackend.down.set()
    backend = GatedBackend(name=memory_store_name)
    with dask.config.set({"eventbus.close-timeout": "1s"}):
        pipeline = make_pipeline(backend)
    pipeline.start()
    capture_transitions(pipeline, 25)
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="distributed.eventbus"):
            pipeline.close()
        took = time.monotonic() - start
    finally:
        GatedBackend.down.clear()
    assert took < 1.0 + 1.5
    assert pipeline.undelivered == 25
    assert "25 events undelivered" in caplog.text
    assert get_store(memory_store_name).events() == []


def test_drops_are_counted_while_the_publisher_is_stuck(memory_store_name: str) -> None:
    GatedBackend.down.set()
    backend = GatedBackend(name=memory_store_name)
    fast = {"initial-backoff": "5ms", "max-backoff": "5ms"}
    for policy in ("drop-oldest", "drop-newest"):
        pipeline = make_pipeline(backend, retry=fast, max_events=20, batch_size=5, overflow=policy)
        pipeline.start()
        try:
            capture_transitions(pipeline, 5)
            time.sleep(0.2)  # the publisher took a batch and is retrying it
            capture_transitions(pipeline, 100)
            assert pipeline.dropped_so_far() == 80, policy
            assert pipeline.stats()["dropped"] == 80
        finally:
            GatedBackend.down.clear()
            pipeline.close()
            GatedBackend.down.set()
    GatedBackend.down.clear()
