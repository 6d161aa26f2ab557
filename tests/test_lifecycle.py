"""Closing a scheduler releases everything the event bus opened for it.

One process creates and closes many schedulers, each with a worker, a small
graph and the plugin, on ``jsonl``, ``redis``, ``kafka`` and ``nats`` in their default
(process) mode and on ``memory`` (thread mode). Afterwards its open file
descriptors, threads (the operating system's, so a broker client's native
threads count too) and child processes must be back where they were, and no
warning (a ``ResourceWarning`` for a pipe the garbage collector had to close,
say) may have been raised on the way.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test
from harness_kafka import kafka_harness
from harness_nats import nats_harness
from harness_redis import redis_harness

from dask_eventbus import EventBusPlugin
from dask_eventbus.testing import Target
from dask_eventbus.testing.workload import inc

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(600)]

SCHEDULERS = 100
BACKENDS = ["jsonl", "redis", "kafka", "nats", "memory"]
# Left for things that are not the event bus's: the event loop's executor
# growing by a thread, a socket distributed keeps for reuse.
TOLERANCE = {"fds": 4, "threads": 2, "children": 0}


def resources() -> dict[str, int]:
    me = psutil.Process()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": me.num_threads(),
        "children": len(me.children(recursive=True)),
    }


def settled(baseline: dict[str, int], timeout: float = 5.0) -> dict[str, int]:
    """Resources in use once they stop falling (threads just told to exit may
    take a moment), or after ``timeout``."""
    deadline = time.monotonic() + timeout
    now = resources()
    while time.monotonic() < deadline and any(
        now[name] > baseline[name] + TOLERANCE[name] for name in now
    ):
        time.sleep(0.05)
        now = resources()
    return now


async def one_scheduler(plugin: EventBusPlugin, n: int) -> None:
    async with (
        Scheduler(
            host="127.0.0.1",
            port=0,
            dashboard=False,
            dashboard_address="127.0.0.1:0",
            plugins=[plugin],
        ) as scheduler,
        Worker(scheduler.address, nthreads=1, host="127.0.0.1") as worker,
        Client(scheduler.address, asynchronous=True) as client,
    ):
        futures = client.map(inc, range(3), key=[f"inc-{n}-{i}" for i in range(3)])
        assert await client.submit(sum, futures, key=f"sum-{n}") == 6
        assert plugin.mode == ("thread" if plugin.backend.name == "memory" else "process")
    assert worker.status.name == "closed"
    stats = plugin.stats()
    assert stats["undelivered"] == 0 and stats["dropped"] == 0, stats


@pytest.fixture
def harnesses(request: pytest.FixtureRequest) -> Iterator[dict[str, Target]]:
    from conftest import jsonl_harness, memory_harness

    made = {
        "jsonl": jsonl_harness(request),
        "redis": redis_harness(request),
        "kafka": kafka_harness(request),
        "nats": nats_harness(request),
        "memory": memory_harness(request),
    }
    try:
        yield made
    finally:
        for harness in made.values():
            harness.cleanup()


def test_closed_schedulers_leave_nothing_behind(harnesses: dict[str, Target]) -> None:
    def plugin(backend: str) -> EventBusPlugin:
        return EventBusPlugin(backend, **harnesses[backend].options)

    async def cycle(backends: Iterator[str], count: int) -> None:
        for n in range(count):
            await one_scheduler(plugin(next(backends)), n)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Once per backend first: imports, the broker's topic and stream, the
        # event loop's executor, distributed's own lazily started threads.
        asyncio.run(cycle(iter(BACKENDS), len(BACKENDS)))
        gc.collect()
        baseline = resources()
        started = time.monotonic()
        asyncio.run(cycle(itertools.cycle(BACKENDS), SCHEDULERS))
        elapsed = time.monotonic() - started
        before_gc = settled(baseline)
        gc.collect()
        after = settled(baseline)
    print(
        f"{SCHEDULERS} schedulers in {elapsed:.1f}s; baseline {baseline}, "
        f"before gc {before_gc}, after gc {after}"
    )
    assert [str(w.message) for w in caught] == []
    for name, limit in TOLERANCE.items():
        # Before collecting garbage: nothing may be left for the collector.
        assert before_gc[name] <= baseline[name] + limit, (name, baseline, before_gc)
        assert after[name] <= baseline[name] + limit, (name, baseline, after)


@gen_test()
async def test_what_the_plugin_holds_is_all_there_once_the_scheduler_started(
    tmp_path: Path,
) -> None:
    # distributed's test_file_descriptors_dont_leak counts the scheduler
    # process's descriptors right after start: they must not change later on
    # their own, as the publisher process gets ready and publishes.
    events_file = tmp_path / "events.jsonl"
    plugin = EventBusPlugin("jsonl", path=str(events_file))
    me = psutil.Process()
    async with Scheduler(
        host="127.0.0.1", port=0, dashboard=False, dashboard_address="127.0.0.1:0", plugins=[plugin]
    ):
        fds, threads = me.num_fds(), set(threading.enumerate())
        deadline = time.monotonic() + 30
        while plugin.stats()["published"] < 1:
            assert time.monotonic() < deadline, "the started event was not published"
            await asyncio.sleep(0.01)
        assert "dask.scheduler.started" in events_file.read_text()
        assert (me.num_fds(), set(threading.enumerate())) == (fds, threads)
