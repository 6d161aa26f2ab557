"""The spool on disk: order, reclaiming, bounds, restart, damage, lock, inspect.

Real files in a temporary directory, real processes for the lock; the
publisher integration runs real schedulers with the jsonl backend.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import dask.config
import pytest
from click.testing import CliRunner
from distributed import Scheduler
from distributed.utils_test import gen_test
from helpers import FAST_RETRY

from dask_eventbus import EventBusPlugin, spooling
from dask_eventbus.backends import Message
from dask_eventbus.cli import main as cli
from dask_eventbus.config import ConfigError, load_settings
from dask_eventbus.events import DROPPED, Event
from dask_eventbus.spool import SEGMENT_MAGIC, Spool, list_segments, segment_name
from dask_eventbus.spooling import announcement
from dask_eventbus.testing import free_port, run_workload

SOURCE = "dask://test/spool"
MiB = 1 << 20


def messages(first: int, count: int, source: str = SOURCE, size: int = 200) -> list[Message]:
    return [
        Message(
            b'{"n":%d,"pad":"%s"}' % (i, b"x" * size),
            f"run1-{i}",
            "dask.task.transition",
            f"task-{i}",
            i,
            1_700_000_000.0 + i,
            "dask.task.transition",
            "application/cloudevents+json",
            source,
        )
        for i in range(first, first + count)
    ]


def open_spool(path: Path, max_bytes: int = 64 * MiB, segment_bytes: int = MiB) -> Spool:
    return Spool(str(path), max_bytes=max_bytes, segment_bytes=segment_bytes, sync_interval=0.1)


def fill(spool: Spool, batches: int, size: int = 200, batch: int = 100) -> None:
    for b in range(batches):
        assert spool.append(messages(b * batch + 1, batch, size=size))


def drain(spool: Spool) -> tuple[list[int], list[Any]]:
    """Every sequence read back, and the damage met, committing as a drain does."""
    sequences, damage = [], []
    while (batch := spool.read()) is not None:
        sequences.extend(m.sequence for m in batch.messages)
        damage.extend(batch.damage)
        spool.commit(batch)
    return sequences, damage


def spool_cli(path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["spool", str(path), "--json", *args])
    return result.exit_code, json.loads(result.output)


def test_batches_come_back_in_order_and_delivered_segments_are_deleted(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    fill(spool, 200, size=200)  # about 5 MiB: several 1 MiB segments
    assert len(list_segments(str(tmp_path))) > 4
    assert spool.snapshot()["events"] == 20_000
    sequences, damage = drain(spool)
    assert sequences == list(range(1, 20_001)) and not damage
    # Only the segment being written is left, and nothing is undelivered.
    assert list_segments(str(tmp_path)) == [spool._wseg]
    assert spool.snapshot()["events"] == 0
    spool.close()


def test_a_full_spool_refuses_and_never_exceeds_max_bytes(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_bytes=2 * MiB)
    appended = 0
    while spool.append(messages(appended + 1, 100, size=500)):
        appended += 100
    assert spool.bytes() <= 2 * MiB
    assert appended > 1000
    batch = spool.read()
    assert batch is not None
    spool.commit(batch)
    drain(spool)  # delivered segments are reclaimed: there is room again
    assert spool.append(messages(appended + 1, 100, size=500))
    spool.close()


def test_a_new_owner_delivers_what_was_left_first_with_original_ids(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    fill(spool, 10)
    batch = spool.read()
    assert batch is not None
    spool.commit(batch)  # the first 100 were delivered
    spool.close()
    spool = open_spool(tmp_path)
    assert spool.snapshot()["events"] == 900
    assert spool.append(messages(1001, 10))
    batch = spool.read()
    assert batch is not None
    assert [m.id for m in batch.messages[:2]] == ["run1-101", "run1-102"]
    assert {m.source for m in batch.messages} == {SOURCE}
    spool.commit(batch)
    sequences, _ = drain(spool)
    assert sequences == list(range(201, 1011))
    spool.close()


def test_two_owners_are_refused_with_the_path_pid_and_host(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dask_eventbus.spool import Spool; "
            f"s = Spool({str(tmp_path)!r}, 4 << 20, 1 << 20, 1.0); print('ready', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        with pytest.raises(ConfigError) as info:
            open_spool(tmp_path)
        message = str(info.value)
        assert "eventbus.spool.path" in message and str(tmp_path) in message
        assert f"pid {holder.pid} on host {os.uname().nodename}" in message
        code, found = spool_cli(tmp_path)
        assert code == 0 and found["owner"] == f"pid {holder.pid} on host {os.uname().nodename}"
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            assert stream is not None
            stream.close()
    open_spool(tmp_path).close()  # the lock died with its owner


def test_spool_settings_accept_sizes_and_refuse_bad_values() -> None:
    spool = load_settings({"spool": {"path": "/x", "max-bytes": "2GiB", "segment_bytes": "8MiB"}})
    assert (spool.spool.max_bytes, spool.spool.segment_bytes) == (2 << 30, 8 << 20)
    for bad, words in [
        ({"max-bytes": "lots"}, "eventbus.spool.max-bytes = 'lots': expected a size like '1GiB'"),
        ({"max-bytes": "64MiB"}, "max-bytes (67108864) must be at least twice segment-bytes"),
        ({"segment-bytes": "1kB"}, "segment-bytes (1000) must be at least 1MiB"),
        ({"sync-interval": 0}, "eventbus.spool.sync-interval = 0: must be greater than 0"),
        ({"path": ""}, "path must be a directory, or null for no spool"),
    ]:
        with pytest.raises(ConfigError, match=r"eventbus\.spool") as info:
            load_settings({"spool": bad})
        assert words in str(info.value)


# ---------------------------------------------------------------- damage


def records(path: Path, number: int) -> list[tuple[int, int]]:
    """(offset, end) of each record of a segment, read with a fresh reader."""
    from dask_eventbus.spool import Head, read_head

    name = path / segment_name(number)
    size = name.stat().st_size
    found = []
    with open(name, "rb") as f:
        at = len(SEGMENT_MAGIC)
        while at < size:
            head = read_head(f.fileno(), at, size)
            assert isinstance(head, Head)
            found.append((head.offset, head.end))
            at = head.end
    return found


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_torn_write_at_the_end_is_cut_on_start_and_is_no_corruption(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    fill(spool, 5)
    last = spool._wseg
    spool.close()
    offset, end = records(tmp_path, last)[-1]
    os.truncate(tmp_path / segment_name(last), (offset + end) // 2)  # the crash came mid-write
    code, found = spool_cli(tmp_path, "--verify")
    assert code == 0 and found["torn"]["segment"] == last and not found["damaged"]
    spool = open_spool(tmp_path)
    assert spool.snapshot()["truncated_bytes"] == (offset + end) // 2 - offset
    sequences, damage = drain(spool)
    assert sequences == list(range(1, 401)) and not damage
    spool.close()


def test_flipped_bytes_are_quarantined_announced_and_the_rest_delivered(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    fill(spool, 6)
    number = spool._wseg
    spool.close()
    parts = records(tmp_path, number)
    flip(tmp_path / segment_name(number), parts[2][1] - 10)  # in record 3's payload
    flip(tmp_path / segment_name(number), parts[4][0] + 20)  # in record 5's head

    code, found = spool_cli(tmp_path, "--verify")
    assert code == 1
    assert [(d["reason"], d.get("first_sequence")) for d in found["damaged"]] == [
        ("payload checksum", 201),
        ("record header", None),
    ]
    assert CliRunner().invoke(cli, ["spool", str(tmp_path), "--verify"]).exit_code == 1

    spool = open_spool(tmp_path)
    sequences, damage = drain(spool)
    assert sequences == [*range(1, 201), *range(301, 401), *range(501, 601)]
    ranges = [(d.source, d.first, d.last) for d in damage]
    # The damaged head's range is told by the good records around it.
    assert ranges == [(SOURCE, 201, 300), (SOURCE, 401, 500)]
    stats = spool.snapshot()
    assert stats["quarantined_parts"] == 2 and stats["quarantined_events"] == 100
    spool.close()
    assert len(os.listdir(tmp_path / "quarantine")) == 2
    code, found = spool_cli(tmp_path, "--verify")
    assert code == 0 and len(found["quarantined"]) == 2

    announced = announcement(damage[0])
    assert announced is not None
    event = Event.from_json(announced.body)
    assert (event.type, event.source, event.sequence_number, event.id) == (
        DROPPED,
        SOURCE,
        300,
        "run1-300",
    )
    assert (event.data["count"], event.data["first_sequence"], event.data["policy"]) == (
        100,
        201,
        "spool-corrupt",
    )


def test_a_deleted_segment_is_announced_from_its_neighbours(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    fill(spool, 60, size=500)  # about 3 MiB in 1 MiB segments
    segments = list_segments(str(tmp_path))
    assert len(segments) >= 3
    spool.close()
    middle = segments[1]
    (tmp_path / segment_name(middle)).unlink()
    code, found = spool_cli(tmp_path, "--verify")
    assert code == 1 and found["damaged"][0]["reason"] == "missing segment"

    spool = open_spool(tmp_path)
    sequences, damage = drain(spool)
    assert len(damage) == 1
    lost = range(damage[0].first, damage[0].last + 1)
    assert sorted([*sequences, *lost]) == list(range(1, 6001))
    spool.close()


def test_a_segment_with_a_bad_header_is_moved_aside_whole(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    fill(spool, 60, size=500)
    first = list_segments(str(tmp_path))[0]
    spool.close()
    flip(tmp_path / segment_name(first), 0)
    spool = open_spool(tmp_path)
    sequences, damage = drain(spool)
    assert sequences and sequences == list(range(sequences[0], 6001))
    assert len(damage) == 1 and damage[0].first is None  # nothing before it to tell
    assert spool.snapshot()["quarantined_parts"] == 1
    spool.close()
    assert os.listdir(tmp_path / "quarantine") == [segment_name(first) + ".bad"]


# ---------------------------------------------------------------- through a scheduler


@pytest.mark.parametrize("mode", ["thread", "process"])
@gen_test(timeout=90)
async def test_a_workload_through_the_spool_is_delivered_in_full(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "events.jsonl"
    with dask.config.set(
        {"eventbus.spool.path": str(tmp_path / "spool"), "eventbus.pipeline.mode": mode}
    ):
        plugin = EventBusPlugin("jsonl", path=str(target))
    await run_workload(plugin)
    stats = plugin.stats()
    assert stats["spool"]["events"] == 0 and stats["spool"]["path"] == str(tmp_path / "spool")
    events = [Event.from_json(line) for line in target.read_bytes().splitlines()]
    numbers = sorted(e.sequence_number for e in events)
    assert numbers == list(range(1, len(events) + 1))
    assert events[-1].type == "dask.scheduler.closing"
    # What was delivered is reclaimed; the lock is free for the next scheduler.
    assert sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.seg")) < 1 << 20
    open_spool(tmp_path / "spool").close()


def test_sync_reports_what_is_on_disk(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    assert spool.append(messages(1, 10))
    deadline = time.monotonic() + 5
    while spool.synced_through.get(SOURCE) != 10:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    spool.close()


@gen_test(timeout=60)
async def test_spool_metrics_and_stats_count_damage_found_on_start(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    spool = open_spool(tmp_path / "spool")
    fill(spool, 3)
    number = spool._wseg
    spool.close()
    flip(tmp_path / "spool" / segment_name(number), records(tmp_path / "spool", number)[1][1] - 5)
    target = tmp_path / "events.jsonl"
    with dask.config.set(
        {"eventbus.spool.path": str(tmp_path / "spool"), "eventbus.pipeline.mode": "thread"}
    ):
        plugin = EventBusPlugin("jsonl", path=str(target))
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        # Settled once the leftover (200 events and the damaged record's
        # announcement) and the scheduler's own dask.scheduler.started event
        # are delivered. An empty spool alone is not enough: the started event
        # reaches the spool a flush-interval after start, possibly after the
        # leftover was drained, and would then be counted by the scrape.
        while (stats := plugin.stats())["published"] < 201 + 1 or stats["spool"]["events"]:
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{s.http_server.port}/metrics"
        text = await asyncio.get_running_loop().run_in_executor(
            None, lambda: urllib.request.urlopen(url, timeout=10).read().decode()
        )
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("backend") == "jsonl"
    }
    assert samples["dask_eventbus_spool_quarantined_records_total"] == 1
    assert samples["dask_eventbus_spool_events"] == 0
    assert samples["dask_eventbus_spool_bytes"] > 0
    assert "dask_eventbus_spool_oldest_event_age_seconds" in samples
    assert plugin.stats()["spool"]["quarantined_events"] == 100
    # The leftover first (the test's own bodies), the damaged record announced in its place.
    lines = [json.loads(line) for line in target.read_bytes().splitlines()]
    leftover = [line for line in lines if line.get("source", SOURCE) == SOURCE]
    assert [line.get("n") or int(line["sequence"]) for line in leftover] == [
        *range(1, 101),
        200,
        *range(201, 301),
    ]
    assert leftover[100]["type"] == DROPPED and leftover[100]["data"]["policy"] == "spool-corrupt"
    assert lines.index(leftover[-1]) == len(leftover) - 1


@pytest.mark.parametrize("mode", ["thread", "process"])
@gen_test(timeout=60)
async def test_closing_with_the_broker_down_keeps_the_events_on_disk(
    tmp_path: Path, mode: str
) -> None:
    config = {
        "eventbus.spool.path": str(tmp_path / "spool"),
        "eventbus.pipeline.mode": mode,
        # Room for a publisher process to start on a loaded machine before
        # it can spool what it was handed (1s failed once under CI's load).
        "eventbus.close-timeout": "3s",
    }
    with dask.config.set(config):  # nothing listens there: refused at once
        plugin = EventBusPlugin("redis", url=f"redis://127.0.0.1:{free_port()}/0")
    s = await Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin])
    for i in range(500):
        s.log_event("kept", {"i": i})
    started = time.monotonic()
    await s.close()
    assert time.monotonic() - started < 3 + 1.5
    stats = plugin.stats()
    assert stats["undelivered"] == 0 and stats["dropped"] == 0
    code, found = spool_cli(tmp_path / "spool", "--verify")
    assert code == 0 and found["owner"] is None
    (source,) = found["sources"].values()
    assert source["events"] == 502 and source["ranges"] == [[1, 502]]  # started ... closing


@gen_test(timeout=60)
async def test_a_full_spool_leaves_memory_to_the_overflow_policy(tmp_path: Path) -> None:
    blocker = tmp_path / "down"
    blocker.write_text("a file where the backend needs a directory: the broker is down")
    target = blocker / "events.jsonl"
    config = {
        **FAST_RETRY,
        "eventbus.pipeline.mode": "thread",
        "eventbus.queue.max-events": 1000,
        "eventbus.queue.batch-size": 100,
        "eventbus.spool.path": str(tmp_path / "spool"),
        "eventbus.spool.max-bytes": "2MiB",
        "eventbus.spool.segment-bytes": "1MiB",
    }
    with dask.config.set(config):
        plugin = EventBusPlugin("jsonl", path=str(target))
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        for i in range(10_000):
            s.log_event("load", {"i": i, "pad": "x" * 400})
            if i % 100 == 0:
                await asyncio.sleep(0.002)
        deadline = time.monotonic() + 10
        while not plugin.stats()["dropped"]:
            assert time.monotonic() < deadline, plugin.stats()
            await asyncio.sleep(0.05)
        during = plugin.stats()
        assert during["spool"]["bytes"] <= 2 * MiB
        assert during["spool"]["events"] > 2000  # the spool was used up first
        blocker.unlink()  # the broker is back
        deadline = time.monotonic() + 30
        while plugin.stats()["queued"]:
            assert time.monotonic() < deadline, plugin.stats()
            await asyncio.sleep(0.05)
    stats = plugin.stats()
    events = [Event.from_json(line) for line in target.read_bytes().splitlines()]
    delivered = {e.sequence_number for e in events}
    announced = {
        n
        for e in events
        if e.type == DROPPED
        for n in range(e.data["first_sequence"], e.data["last_sequence"] + 1)
    }
    assert len(announced) == stats["dropped"] > 0
    assert delivered | announced == set(range(1, max(delivered) + 1))
    assert not (delivered - {e.sequence_number for e in events if e.type == DROPPED}) & announced


@pytest.mark.parametrize("mode", ["thread", "process"])
@gen_test(timeout=60)
async def test_a_second_scheduler_on_the_same_spool_fails_to_start_clearly(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spooling, "LOCK_WAIT", 0.5)
    config = {"eventbus.spool.path": str(tmp_path / "spool"), "eventbus.pipeline.mode": mode}
    with dask.config.set(config):
        first = EventBusPlugin("jsonl", path=str(tmp_path / "first.jsonl"))
        second = EventBusPlugin("jsonl", path=str(tmp_path / "second.jsonl"))
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[first]):
        while "spool" not in first.stats():  # the publisher process holds it once it reports
            await asyncio.sleep(0.05)
        with pytest.raises(ConfigError) as info:
            await second.start(Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0"))
    message = str(info.value)
    assert "eventbus.spool.path" in message and str(tmp_path / "spool") in message
    # The scheduler's own pid in thread mode, its publisher process's in process mode.
    owner = f"pid {os.getpid()} " if mode == "thread" else "pid "
    assert owner in message and f"on host {os.uname().nodename}" in message
