"""The fault matrix: every broker backend, in both pipeline modes, through a
TCP proxy that refuses, cuts and stalls connections.

Each case runs a real scheduler, worker and client through the fault, then
reads back everything the broker holds and accounts for every sequence
number: delivered (once or more), dropped by the overflow policy (and
announced), or lost. The table of results is printed at the end of the run
and kept in ``docs/operations.rst``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import pytest
from distributed import Client, Scheduler, Worker
from webhook_receiver import WebhookReceiver

from dask_eventbus import Event, EventBusPlugin, subscribe
from dask_eventbus.testing import FaultProxy, Target
from dask_eventbus.testing.workload import inc

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow, pytest.mark.networked]

FAULTS = ["unreachable-at-start", "cut-mid-run", "stall-until-full", "gone-at-close"]
# What only an HTTP receiver answers (tests/harness_webhook.py's receiver).
WEBHOOK_FAULTS = ["429-retry-after", "503-bursts", "413-smaller-batches"]
MODES = ["thread", "process"]
WAVES, TASKS_PER_WAVE = 6, 40
CLOSE_TIMEOUT = 2.0
QUEUE_FOR_STALL = 300


@dataclass
class Outcome:
    backend: str
    mode: str
    fault: str
    emitted: int
    delivered: int
    duplicated: int
    dropped: int
    lost: int


RESULTS: list[Outcome] = []


@pytest.fixture(scope="module", autouse=True)
def report_fault_matrix(request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints the matrix; with DASK_EVENTBUS_FAULT_MATRIX=path, writes it for the docs."""
    if os.environ.get("DASK_EVENTBUS_FAULT_MATRIX") and os.environ.get("PYTEST_XDIST_WORKER"):
        # Each worker process would hold, print and write only its share.
        pytest.fail("write the fault matrix from one process: add -n 0 to the pytest command")
    yield
    if not RESULTS:
        return
    header = ["backend", "mode", "fault", "emitted", "delivered", "duplicated", "dropped", "lost"]
    rows = [
        [r.backend, r.mode, r.fault, r.emitted, r.delivered, r.duplicated, r.dropped, r.lost]
        for r in sorted(
            RESULTS, key=lambda r: (r.backend, r.mode, [*FAULTS, *WEBHOOK_FAULTS].index(r.fault))
        )
    ]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        for row in [header, *rows]:
            reporter.write_line("| " + " | ".join(map(str, row)) + " |")
    target = os.environ.get("DASK_EVENTBUS_FAULT_MATRIX")
    if target:
        table = [".. list-table::", "   :header-rows: 1", ""]
        for row in [header, *rows]:
            table.append(f"   * - {row[0]}")
            table.extend(f"     - {cell}" for cell in row[1:])
        Path(target).write_text("\n".join(table) + "\n")


class UnresponsiveLoop(logging.Handler):
    """Collects distributed's "event loop was unresponsive" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "unresponsive" in record.getMessage():
            self.messages.append(record.getMessage())


async def run_through(fault: str, plugin: EventBusPlugin, proxy: FaultProxy) -> float:
    """Run waves of tasks while the fault happens; returns how long closing took."""
    if fault == "unreachable-at-start":
        proxy.set_mode("refuse")
    s = await Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin])
    w = await Worker(s.address, nthreads=2)
    c = await Client(s.address, asynchronous=True)
    try:
        for wave in range(WAVES):
            if fault == "unreachable-at-start" and wave == WAVES // 2:
                proxy.set_mode("pass")
            if fault == "cut-mid-run" and wave % 2:
                proxy.cut()
            if fault == "stall-until-full" and wave == 1:
                proxy.set_mode("stall")
            numbers = range(wave * TASKS_PER_WAVE, (wave + 1) * TASKS_PER_WAVE)
            results = await c.gather(c.map(inc, numbers, key=[f"wave-{n}" for n in numbers]))
            assert results == [n + 1 for n in numbers]
            await asyncio.sleep(0.3)
        if fault == "stall-until-full":
            proxy.set_mode("pass")
            proxy.cut()  # connections hung on the stall are done for
        deadline = time.monotonic() + 60
        while plugin.stats()["queued"]:
            assert time.monotonic() < deadline, f"never caught up: {plugin.stats()}"
            await asyncio.sleep(0.05)
        if fault == "gone-at-close":
            proxy.set_mode("refuse")
            proxy.cut()
            await c.gather(c.map(inc, range(10), key=[f"last-{n}" for n in range(10)]))
    finally:
        started = time.monotonic()
        await c.close()
        await w.close()
        await s.close()
    return time.monotonic() - started


def read_everything(harness: Target, options: dict[str, Any], emitted: int) -> list[Event]:
    """Every event the broker holds for this test, until all are seen or none come."""
    events: list[Event] = []
    seen: set[int] = set()
    if harness.read_back is not None:  # a publish-only backend: where its events arrive
        reading = harness.read_back(from_beginning=True)
    else:
        reading = subscribe(harness.backend, from_beginning=True, **options)
    with reading as subscription:
        while len(seen) < emitted:
            event = subscription.poll(timeout=5.0)
            if event is None:
                break
            events.append(event)
            seen.add(event.sequence_number)
    return events


def account(events: list[Event], emitted: int) -> tuple[int, int, int, int]:
    """(delivered, duplicated, dropped, lost) by sequence number."""
    numbers = [e.sequence_number for e in events]
    delivered = set(numbers)
    announced = {e.sequence_number: e.data for e in events if e.type == "dask.eventbus.dropped"}
    covered = set(delivered)
    for data in announced.values():
        covered.update(range(data["first_sequence"], data["last_sequence"] + 1))
    lost = len(set(range(1, emitted + 1)) - covered)
    dropped = sum(data["count"] for data in announced.values())
    return len(delivered), len(numbers) - len(delivered), dropped, lost


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", FAULTS)
def test_fault(harness: Target, fault: str, mode: str) -> None:
    assert harness.proxied is not None
    config: dict[str, Any] = {
        "eventbus.pipeline.mode": mode,
        "eventbus.retry.initial-backoff": "50ms",
        "eventbus.retry.max-backoff": "500ms",
        "eventbus.close-timeout": f"{CLOSE_TIMEOUT}s",
        "distributed.admin.tick.limit": "1s",
    }
    if fault == "stall-until-full":
        config["eventbus.queue.max-events"] = QUEUE_FOR_STALL
        config["eventbus.queue.batch-size"] = 50
    watcher = UnresponsiveLoop()
    logging.getLogger("distributed").addHandler(watcher)
    try:
        with harness.proxied() as (proxy, options), dask.config.set(config):
            plugin = EventBusPlugin(harness.backend, **options)
            assert plugin.mode == mode
            closing_took = asyncio.run(run_through(fault, plugin, proxy))
            stats = plugin.stats()
            emitted = plugin._pipeline._final_sequence  # type: ignore[union-attr]
            proxy.set_mode("pass")
            events = read_everything(harness, options, emitted)
    finally:
        logging.getLogger("distributed").removeHandler(watcher)

    delivered, duplicated, dropped, lost = account(events, emitted)
    name = harness.options.get("url", harness.backend).split(":", 1)[0]
    backend = harness.backend if harness.backend != "kombu" else f"kombu ({name})"
    RESULTS.append(Outcome(backend, mode, fault, emitted, delivered, duplicated, dropped, lost))

    assert not watcher.messages, watcher.messages
    assert closing_took < CLOSE_TIMEOUT + 3.0
    assert dropped == stats["dropped"], "drops must be exactly counted and announced"
    if fault == "gone-at-close":
        # What was not confirmed is counted as undelivered, though the broker
        # may have taken some of it: nothing is lost without being counted.
        assert 0 < lost <= stats["undelivered"], (lost, stats)
    else:
        assert lost == 0, f"{lost} events lost: {stats}"
        assert stats["undelivered"] == 0
    if fault == "stall-until-full":
        assert dropped > 0, "the stall should have filled the queue"
    else:
        assert dropped == 0


def test_a_broker_answering_garbage_is_retried_with_backoff(harness: Target) -> None:
    assert harness.proxied is not None
    config = {
        "eventbus.pipeline.mode": "thread",
        "eventbus.retry.initial-backoff": "100ms",
        "eventbus.retry.max-backoff": "1s",
        "eventbus.close-timeout": "1s",
    }
    watcher = UnresponsiveLoop()
    logging.getLogger("distributed").addHandler(watcher)
    try:
        with harness.proxied() as (proxy, options), dask.config.set(config):
            proxy.set_mode("garbage")
            plugin = EventBusPlugin(harness.backend, **options)

            async def run() -> dict[str, Any]:
                async with Scheduler(
                    host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]
                ) as s:
                    async with Worker(s.address, nthreads=1):
                        async with Client(s.address, asynchronous=True) as c:
                            started = time.monotonic()
                            while time.monotonic() - started < 8.0:
                                assert await c.submit(inc, 1, pure=False) == 2
                                await asyncio.sleep(0.2)
                            return plugin.stats()

            stats = asyncio.run(run())
    finally:
        logging.getLogger("distributed").removeHandler(watcher)
    assert not watcher.messages
    assert stats["published"] == 0 and stats["last_error"]
    # From 100 ms doubling to 1 s over 8 s, with timeouts in between: a handful.
    assert 1 <= stats["publish_errors"] <= 20, stats


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", WEBHOOK_FAULTS)
def test_webhook_answers(webhook_receiver: WebhookReceiver, fault: str, mode: str) -> None:
    """A receiver that asks to slow down, fails in bursts or takes only small
    requests, early in the run: nothing is lost, refused or dropped."""
    receiver, requests = webhook_receiver, [0]
    size = 5_000

    def answer(body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        requests[0] += 1
        if requests[0] > 60:  # then calm, for a clean close
            return None
        if fault == "429-retry-after" and requests[0] % 10 == 0:
            return 429, {"Retry-After": "1"}, b"slow down"
        if fault == "503-bursts" and requests[0] % 20 < 5:
            return 503, {}, b"busy"
        if fault == "413-smaller-batches" and len(body) > size:
            return 413, {}, b"too large"
        return None

    receiver.answer = answer
    config: dict[str, Any] = {
        "eventbus.pipeline.mode": mode,
        "eventbus.retry.initial-backoff": "50ms",
        "eventbus.retry.max-backoff": "500ms",
        "eventbus.close-timeout": f"{CLOSE_TIMEOUT}s",
        "distributed.admin.tick.limit": "1s",
    }
    options = {"url": receiver.url, "timeout": "2s"}
    if fault == "413-smaller-batches":
        options["content-mode"] = "batched"
        # Every single event fits the receiver's limit (the graph structure's
        # chunks included), as the docs tell users to configure it.
        config["eventbus.events.max-event-bytes"] = size - 1000
    watcher = UnresponsiveLoop()
    logging.getLogger("distributed").addHandler(watcher)
    try:
        with FaultProxy(("127.0.0.1", receiver.port)) as proxy, dask.config.set(config):
            plugin = EventBusPlugin("webhook", **options)
            closing_took = asyncio.run(run_through(fault, plugin, proxy))
            stats = plugin.stats()
            emitted = plugin._pipeline._final_sequence  # type: ignore[union-attr]
    finally:
        logging.getLogger("distributed").removeHandler(watcher)
    with receiver.subscribe(from_beginning=True) as subscription:
        events = []
        while (event := subscription.poll(timeout=2.0)) is not None:
            events.append(event)
    delivered, duplicated, dropped, lost = account(events, emitted)
    RESULTS.append(Outcome("webhook", mode, fault, emitted, delivered, duplicated, dropped, lost))

    statuses = [r.status for r in receiver.requests]
    assert int(fault[:3]) in statuses, statuses  # the fault did happen
    assert not watcher.messages, watcher.messages
    assert closing_took < CLOSE_TIMEOUT + 3.0
    assert lost == 0 and dropped == 0 and delivered == emitted, stats
    assert stats["refused"] == 0 and stats["undelivered"] == 0, stats
    if fault == "413-smaller-batches":
        assert all(len(r.body) <= size for r in receiver.requests if r.status == 200)
