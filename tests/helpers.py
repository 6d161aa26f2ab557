"""Helpers shared by the test modules: harnesses, a real workload, reading back."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from distributed import Client, Scheduler, Worker
from distributed import Event as DaskEvent
from faultproxy import FaultProxy

from dask_eventbus import EventBusPlugin
from dask_eventbus.backends import Delivery, Message, Subscription
from dask_eventbus.events import Event, Normalizer, transition_record
from dask_eventbus.pipeline import build_messages

IN_CI = bool(os.environ.get("CI"))


def unique_name(prefix: str = "dask-eventbus-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def require_broker(available: bool, what: str) -> None:
    """Skip a broker test on a laptop without the broker; fail it under CI."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is not reachable, and CI must test against it")
    pytest.skip(f"{what} is not reachable")


def require_program(name: str) -> str:
    """The path of a program a test runs; skip without it, fail under CI."""
    path = shutil.which(name)
    if path is not None:
        return path
    if IN_CI:
        pytest.fail(f"{name} is not installed, and CI must run this test")
    pytest.skip(f"{name} is not installed")


@dataclass
class Harness:
    """How one backend joins the conformance suite."""

    backend: str
    options: dict[str, Any]
    bad_options: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    """Options that must be refused, each with a fragment of the error message."""
    cleanup: Callable[[], None] = lambda: None
    proxied: Callable[[], AbstractContextManager[tuple[FaultProxy, dict[str, Any]]]] | None = None
    """A fault proxy in front of the broker and options reaching this harness's
    broker objects through it, with short timeouts (the fault suite uses it)."""


def proxied_url(
    url: str, default_port: int, options: dict[str, Any]
) -> Callable[[], AbstractContextManager[tuple[FaultProxy, dict[str, Any]]]]:
    """For ``Harness.proxied``: a fault proxy in front of the broker at ``url``,
    and ``options`` plus that url rewritten to reach the broker through it."""
    parsed = urlsplit(url)
    auth = parsed.netloc.rpartition("@")[0]
    upstream = (parsed.hostname or "127.0.0.1", parsed.port or default_port)

    @contextlib.contextmanager
    def proxied() -> Iterator[tuple[FaultProxy, dict[str, Any]]]:
        with FaultProxy(upstream) as proxy:
            host = f"127.0.0.1:{proxy.port}"
            netloc = f"{auth}@{host}" if auth else host
            yield proxy, {"url": urlunsplit(parsed._replace(netloc=netloc)), **options}

    return proxied


def synthetic_messages(count: int, subjects: int = 7, run_id: str = "test") -> list[Message]:
    """``count`` transition messages spread over ``subjects`` task keys."""
    normalizer = Normalizer(f"/tests/{run_id}", run_id)
    states = ["released", "waiting", "processing", "memory"]
    records = [
        transition_record(
            seq, f"task-{seq % subjects}", states[seq % 3], states[seq % 3 + 1], f"stimulus-{seq}"
        )
        for seq in range(1, count + 1)
    ]
    return build_messages(normalizer, records)


def read_until_all(events: Any, messages: list[Any], timeout: float = 30.0) -> list[Event]:
    """Events until every one of ``messages`` arrived (duplicates allowed)."""
    wanted = {m.id for m in messages}
    received: list[Event] = []
    deadline = time.monotonic() + timeout
    while not wanted <= {e.id for e in received}:
        assert time.monotonic() < deadline, f"{len(received)} events, some missing"
        event = events.poll(timeout=1.0)
        if event is not None:
            received.append(event)
    return received


def read_events(
    subscription: Subscription,
    *,
    count: int | None = None,
    until: Callable[[Event], bool] | None = None,
    timeout: float = 30.0,
) -> list[Event]:
    """Events from ``subscription`` until ``count`` arrived or ``until`` holds."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = subscription.poll(timeout=min(1.0, deadline - time.monotonic()))
        if event is None:
            continue
        events.append(event)
        if count is not None and len(events) >= count:
            return events
        if until is not None and until(event):
            return events
    raise AssertionError(
        f"timed out after {timeout}s with {len(events)} events "
        f"(wanted count={count}, until={until})"
    )


def read_raw(
    subscription: Subscription,
    count: int | None = None,
    *,
    until: Callable[[Event], bool] | None = None,
    timeout: float = 30.0,
) -> list[bytes]:
    """Raw message bodies as the broker holds them, until ``count`` or ``until``."""
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries: Iterable[Delivery] = subscription.fetch(1.0)
        for delivery in deliveries:
            bodies.append(delivery.body)
            subscription.ack(delivery.token)
            if count is not None and len(bodies) >= count:
                return bodies
            if until is not None and until(Event.from_json(delivery.body)):
                return bodies
    raise AssertionError(f"timed out after {timeout}s with {len(bodies)} messages")


def is_closing(event: Event) -> bool:
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
    import asyncio

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
