"""The spool against real faults: long broker outages, killed schedulers,
killed publisher processes, a writer killed at random points.

Each test runs a ``redis-server`` of its own (appendonly, so that what it
accepted before it was stopped is still there after it starts again) and
stops it by PID. Load comes from the scheduler's own ``log_event``, paced
at LOAD_RATE events per second on its event loop.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import dask.config
import psutil
import pytest
import redis
from distributed import Client, Scheduler
from distributed.utils_test import gen_test
from harness_redis import RedisServer
from helpers import DASK, FAST_RETRY

from dask_eventbus import EventBusPlugin
from dask_eventbus.events import DROPPED, Event
from dask_eventbus.spool import Spool
from dask_eventbus.testing import free_port, unique_name

pytestmark = [pytest.mark.slow]
# The load functions run on schedulers that cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

LOAD_RATE = 5000  # events per second
# With the spool: ten times what MAX_EVENTS in memory hold at LOAD_RATE
# (100,000 events, some 35 MB: several OUTAGE_SEGMENT segments, written during
# the outage and deleted as the backlog drains). A longer outage only adds
# more of the same segments, at a minute of the suite per test.
OUTAGE = 20.0  # seconds
OUTAGE_SEGMENT = "8MiB"
OUTAGE_WITHOUT_SPOOL = 10.0  # five times what 10,000 events in memory hold at LOAD_RATE
MAX_EVENTS = 10_000
SYNC_WINDOW = 1.0  # eventbus.spool.sync-interval's default: the documented bound


def stream_events(url: str, stream: str) -> list[Event]:
    client = redis.Redis.from_url(url, socket_timeout=30)
    try:
        events, start = [], "-"
        while True:
            chunk = client.xrange(stream, min=start, count=20_000)
            events.extend(Event.from_json(fields[b"event"]) for _, fields in chunk)
            if len(chunk) < 20_000:
                return events
            start = "(" + chunk[-1][0].decode()
    finally:
        client.close()


def by_source(events: list[Event]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = defaultdict(set)
    for event in events:
        found[event.source].add(event.sequence_number)
    return found


async def load(scheduler: Any, seconds: float, rate: int = LOAD_RATE) -> int:
    """``log_event`` at ``rate`` per second for ``seconds``; returns how many."""
    tick, sent, started = 0.01, 0, time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) + int(rate * tick)
        for i in range(sent, due):
            scheduler.log_event("load", {"i": i})
        sent = due
        await asyncio.sleep(tick)
    return sent


def spool_config(path: Path | None, url: str, stream: str, mode: str) -> dict[str, Any]:
    return {
        **FAST_RETRY,
        "eventbus.queue.max-events": MAX_EVENTS,
        "eventbus.pipeline.mode": mode,
        "eventbus.spool.path": str(path) if path is not None else None,
        "eventbus.spool.segment-bytes": OUTAGE_SEGMENT,
        "eventbus.close-timeout": "30s",
        **(
            {"eventbus.backends.redis.url": url, "eventbus.backends.redis.stream": stream}
            if url
            else {}
        ),
    }


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


# ---------------------------------------------------------------- outages


@pytest.mark.timeout(300)
@pytest.mark.parametrize("spooled", [True, False], ids=["spool", "no-spool"])
@gen_test(timeout=280)
async def test_an_outage_far_longer_than_memory_holds(
    tmp_path: Path, redis_server: Callable[..., RedisServer], spooled: bool
) -> None:
    server = redis_server("--appendonly", "yes")
    spool = tmp_path / "spool" if spooled else None
    with dask.config.set(spool_config(spool, server.url, "outage", "thread")):
        plugin = EventBusPlugin("redis")
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        await load(s, 2.0)
        server.stop()
        outage = OUTAGE if spooled else OUTAGE_WITHOUT_SPOOL
        await load(s, outage)
        during = plugin.stats()
        server.start()
        await load(s, 3.0)
        await wait_for(lambda: plugin.stats()["queued"] == 0, 120, "the backlog to drain")
    stats = plugin.stats()
    events = stream_events(server.url, "outage")
    sequences = by_source(events)[events[0].source]
    last = max(sequences)
    assert events[-1].type == "dask.scheduler.closing" and events[-1].sequence_number == last
    missing = set(range(1, last + 1)) - sequences
    if spooled:
        assert last > LOAD_RATE * OUTAGE
        assert not missing, f"{len(missing)} events lost"
        assert stats["dropped"] == 0
        # Memory never filled: the spool took the backlog.
        assert during["spool"]["events"] > LOAD_RATE * (OUTAGE - 5)
        assert during["queued"] - during["spool"]["events"] < MAX_EVENTS
    else:
        dropped = [e for e in events if e.type == DROPPED]
        assert dropped and stats["dropped"] > LOAD_RATE * (OUTAGE_WITHOUT_SPOOL - 5)
        announced = {
            n for e in dropped for n in range(e.data["first_sequence"], e.data["last_sequence"] + 1)
        }
        assert missing and missing <= announced


# ---------------------------------------------------------------- crashes


def start_scheduler(config: dict[str, Any], port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    for key, value in {**config, "eventbus.backend": "redis"}.items():
        name = "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split("."))
        env[name] = str(value)
    with log.open("ab") as stderr:  # the scheduler's log, for when the test fails
        return subprocess.Popen(
            [
                *(DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port)),
                *("--dashboard-address", ":0", "--preload", "dask_eventbus"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def start_load_on_scheduler(dask_scheduler: Any) -> None:
    async def forever() -> None:
        tick, sent, started = 0.01, 0, time.monotonic()
        while True:
            due = int((time.monotonic() - started) * 5000) + 50
            for i in range(sent, due):
                dask_scheduler.log_event("load", {"i": i})
            sent = due
            await asyncio.sleep(tick)

    dask_scheduler._eventbus_load = asyncio.get_running_loop().create_task(forever())


async def spool_stats(address: str) -> dict[str, Any]:
    async with Client(address, asynchronous=True, timeout=30) as client:
        stats: dict[str, Any] = await client.scheduler.eventbus_stats()
    return stats


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["thread", "process"])
@gen_test(timeout=280)
async def test_a_scheduler_killed_during_an_outage_leaves_its_events_to_the_next(
    tmp_path: Path, redis_server: Callable[..., RedisServer], mode: str
) -> None:
    server = redis_server("--appendonly", "yes")
    config = spool_config(tmp_path / "spool", server.url, "crash", mode)
    port = free_port()
    first = start_scheduler(config, port, tmp_path / "first.log")
    try:
        address = f"tcp://127.0.0.1:{port}"
        async with Client(address, asynchronous=True, timeout=60) as client:
            await client.run_on_scheduler(start_load_on_scheduler)
            await asyncio.sleep(2.0)
            server.stop()
            await asyncio.sleep(8.0)
            spooled = (await client.scheduler.eventbus_stats())["spool"]["events"]
            assert spooled > 20_000
            killed_at = time.time()
            first.send_signal(signal.SIGKILL)
            first.wait()
    finally:
        first.kill()
        first.wait()
    server.start()
    second = start_scheduler(config, port, tmp_path / "second.log")
    try:
        await asyncio.sleep(3.0)

        async def drained() -> bool:
            return (await spool_stats(address))["spool"]["events"] == 0

        deadline = time.monotonic() + 120
        while not await drained():
            assert time.monotonic() < deadline, "the spool was never drained"
            await asyncio.sleep(0.5)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    events = stream_events(server.url, "crash")
    sources = by_source(events)
    assert len(sources) == 2
    first_source = events[0].source
    sequences = sources[first_source]
    last = max(sequences)
    assert sequences == set(range(1, last + 1)), "a gap before the kill"
    times = {e.sequence_number: e.time.timestamp() for e in events if e.source == first_source}
    lost_window = killed_at - times[last]
    assert lost_window < SYNC_WINDOW, f"the last {lost_window:.2f}s before the kill were lost"
    # The new scheduler delivered the old one's events first.
    second_source = next(iter(set(sources) - {first_source}))
    order = [e.source for e in events if e.source == second_source or e.sequence_number == last]
    assert order.index(first_source) < order.index(second_source)


def publisher_child(scheduler_pid: int) -> psutil.Process:
    for child in psutil.Process(scheduler_pid).children():
        if "dask_eventbus.process" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no publisher process")


@pytest.mark.timeout(200)
@gen_test(timeout=180)
async def test_a_publisher_process_killed_during_an_outage_loses_nothing(
    tmp_path: Path, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server("--appendonly", "yes")
    config = spool_config(tmp_path / "spool", server.url, "child", "process")
    port = free_port()
    scheduler = start_scheduler(config, port, tmp_path / "scheduler.log")
    address = f"tcp://127.0.0.1:{port}"
    try:
        async with Client(address, asynchronous=True, timeout=60) as client:
            await client.run_on_scheduler(start_load_on_scheduler)
            await asyncio.sleep(2.0)
            server.stop()
            await asyncio.sleep(5.0)
            killed = publisher_child(scheduler.pid)
            killed.kill()
            await asyncio.sleep(5.0)
            assert publisher_child(scheduler.pid).pid != killed.pid
            server.start()

            def stop_load(dask_scheduler: Any) -> None:
                dask_scheduler._eventbus_load.cancel()

            await client.run_on_scheduler(stop_load)
            deadline = time.monotonic() + 120
            while (await client.scheduler.eventbus_stats())["spool"]["events"]:
                assert time.monotonic() < deadline, "the spool was never drained"
                await asyncio.sleep(0.5)
    finally:
        scheduler.send_signal(signal.SIGTERM)
        scheduler.wait(60)
    events = stream_events(server.url, "child")
    sequences = by_source(events)[events[0].source]
    last = max(sequences)
    assert events[-1].type == "dask.scheduler.closing" and events[-1].sequence_number == last
    assert sequences == set(range(1, last + 1)), "an event was lost"


# ---------------------------------------------------------------- crash safety

WRITER = """
import os, sys, time, random
from dask_eventbus.backends.contract import Message
from dask_eventbus.spool import Spool

path, source = sys.argv[1], sys.argv[2]
spool = Spool(path, 64 << 20, 1 << 20, 0.02)
print("open", flush=True)
sequence, reported = 0, 0
while True:
    batch = [
        Message(b'{"n":%d}' % n, f"{source}-{n}", "t", None, n, time.time(), "t", "x", source)
        for n in range(sequence + 1, sequence + 1 + random.randint(1, 300))
    ]
    if spool.append(batch):
        sequence = batch[-1].sequence
    else:  # full: the test's reader makes room
        time.sleep(0.01)
    synced = spool.synced_through.get(source, 0)
    if synced != reported:
        print(synced, flush=True)
        reported = synced
"""

KILLS = 100


def test_a_writer_killed_at_random_points_never_loses_what_was_synced(tmp_path: Path) -> None:
    spool_path = str(tmp_path / "spool")
    env = {**os.environ, "EVENTBUS_PUBLISHER_PROCESS": "1"}
    delivered: dict[str, set[int]] = defaultdict(set)
    synced: dict[str, int] = {}
    for kill in range(KILLS):
        source = f"writer-{kill}"
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, spool_path, source],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"open\n", "startup failed"
        deadline = time.monotonic() + random.uniform(0.005, 0.12)
        os.set_blocking(writer.stdout.fileno(), False)
        lines = b""
        while time.monotonic() < deadline:
            lines += writer.stdout.read() or b""
            time.sleep(0.005)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        lines += writer.stdout.read() or b""
        writer.stdout.close()
        reported = [int(line) for line in lines.split()]
        synced[source] = max(reported, default=0)
        # A reader every few kills: the spool holds several crashed writers' data.
        if kill % 5 == 4 or kill == KILLS - 1:
            spool = Spool(spool_path, 64 << 20, 1 << 20, 1.0)
            while (batch := spool.read()) is not None:
                assert not batch.damage
                for message in batch.messages:
                    delivered[message.source].add(message.sequence)
                spool.commit(batch)
            spool.close()
    for source, through in synced.items():
        assert set(range(1, through + 1)) <= delivered[source], f"{source} lost synced records"
        if delivered[source]:
            assert delivered[source] == set(range(1, max(delivered[source]) + 1))
    assert sum(1 for through in synced.values() if through) > KILLS / 2


# ---------------------------------------------------------------- Kafka


def kafka_events(bootstrap: str, topic: str, timeout: float = 120.0) -> list[Event]:
    """Every event of ``topic`` (one partition) up to the scheduler's closing event."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique_name("reader"), "log_level": 0}
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        events: list[Event] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in consumer.consume(5000, timeout=0.5):
                if message.error() is None:
                    events.append(Event.from_json(message.value()))
                    if events[-1].type == "dask.scheduler.closing":
                        return events
        raise AssertionError(f"no closing event within {timeout}s ({len(events)} events)")
    finally:
        consumer.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("spooled", [True, False], ids=["spool", "no-spool"])
@gen_test(timeout=280)
async def test_a_kafka_outage_far_longer_than_memory_holds(tmp_path: Path, spooled: bool) -> None:
    """Kafka unreachable (a fault proxy in front of Tansu refusing connections
    and cutting open ones): a Tansu restart would lose what it had stored."""
    from harness_kafka import tansu_behind_a_proxy

    topic = unique_name("spool-kafka")
    with tansu_behind_a_proxy(topic) as (proxy, options):
        bootstrap = options["config"]["bootstrap.servers"]
        config = spool_config(tmp_path / "spool" if spooled else None, "", "", "thread")
        with dask.config.set(config):
            plugin = EventBusPlugin("kafka", **options)
        async with Scheduler(
            host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]
        ) as s:
            await load(s, 2.0)
            proxy.set_mode("refuse")
            proxy.cut()
            outage = OUTAGE if spooled else OUTAGE_WITHOUT_SPOOL
            await load(s, outage)
            during = plugin.stats()
            proxy.set_mode("pass")
            await load(s, 3.0)
            await wait_for(lambda: plugin.stats()["queued"] == 0, 120, "the backlog to drain")
        stats = plugin.stats()
        events = await asyncio.to_thread(kafka_events, bootstrap, topic)
    sequences = {e.sequence_number for e in events}
    last = max(sequences)
    missing = set(range(1, last + 1)) - sequences
    if spooled:
        assert last > LOAD_RATE * OUTAGE
        assert not missing, f"{len(missing)} events lost"
        assert stats["dropped"] == 0
        assert during["spool"]["events"] > LOAD_RATE * (OUTAGE - 10)
    else:
        dropped = [e for e in events if e.type == DROPPED]
        assert dropped and stats["dropped"] > LOAD_RATE * (OUTAGE_WITHOUT_SPOOL - 5)
        announced = {
            n for e in dropped for n in range(e.data["first_sequence"], e.data["last_sequence"] + 1)
        }
        assert missing and missing <= announced
