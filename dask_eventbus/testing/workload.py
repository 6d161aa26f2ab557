"""A real workload: scheduler, workers and client running a varied graph."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from distributed import Client, Scheduler, Worker
from distributed import Event as DaskEvent

from ..events import Event
from ..plugin import EventBusPlugin
from .reading import unique_name


def is_closing(event: Event) -> bool:
    """Whether ``event`` is the scheduler closing: the last one a workload sends."""
    return event.type == "dask.scheduler.closing"


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def fail(x: int) -> int:
    raise ValueError(f"deliberate failure on {x}")


def flaky(x: int, event_name: str) -> int:
    """Fails on its first run, succeeds when retried."""
    event = DaskEvent(event_name)
    if not event.is_set():
        event.set()
        raise RuntimeError("first attempt fails")
    return x


async def run_workload(plugin: EventBusPlugin, *, workers: int = 2) -> list[Any]:
    """A real scheduler, workers and client running a small but varied graph.

    A chain with dependencies, a failing task and its dependent, a task that
    fails once and is retried, a key released and recomputed, a worker that
    joins late, a log_event and one too large to publish. Returns the
    scheduler's transition log.
    """
    async with Scheduler(
        host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin], validate=True
    ) as s:
        async with Worker(s.address, nthreads=1) as first:
            async with Client(s.address, asynchronous=True) as c:
                a = c.submit(inc, 1, key="a")
                b = c.submit(inc, a, key="b")
                total = c.submit(add, a, b, key=("total", 0))
                assert await total == 5
                bad = c.submit(fail, total, key="bad")
                downstream = c.submit(inc, bad, key="downstream")
                with pytest.raises(ValueError):
                    await downstream
                retried = c.submit(flaky, 7, unique_name("flaky"), key="retried", retries=1)
                assert await retried == 7
                # An erred future stays referenced from its own traceback:
                # release explicitly so that "a" is forgotten, then recompute it.
                for future in (a, b, total, bad, downstream):
                    future.release()
                await _until(lambda: "a" not in s.tasks)
                again = c.submit(inc, 1, key="a")
                assert await again == 2
                await c.log_event("user-topic", {"note": "hello", "values": [1, 2.5, None]})
                # Over eventbus.events.max-event-bytes: published as dask.eventbus.oversized.
                await c.log_event("oversized-topic", {"blob": "x" * 1_000_000})
                async with Worker(s.address, nthreads=1, name="late-joiner"):
                    extra = c.submit(inc, 10, key="extra", workers=["late-joiner"])
                    assert await extra == 11
                    del extra
                del retried, again
        transition_log = list(s.transition_log)
    assert first.status.name == "closed"
    return transition_log


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
