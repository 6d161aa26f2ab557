"""Process mode: the supervised publisher process and its failure modes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import dask
import pytest
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test
from helpers import not_for_publishing, publisher_process_imports
from startup_probe import StartupProbe

from dask_eventbus import EventBusPlugin
from dask_eventbus.process import ProcessSink
from dask_eventbus.testing import run_workload
from dask_eventbus.testing.workload import inc

pytestmark = pytest.mark.timeout(180)

PROCESS = {"eventbus.pipeline.mode": "process"}


def written(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The events in a JSON Lines file, and how many lines were torn: a
    publisher killed mid-write leaves half a line, which the next one ends
    before writing the batch again (as readers, report and archive skip it)."""
    events, torn = [], 0
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            torn += 1
    return events, torn


def sequences(path: Path) -> list[int]:
    events, torn = written(path)
    assert torn == 0, f"{torn} torn lines"
    return [int(event["sequence"]) for event in events]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"dask_eventbus.process" in cmdline:
            found.append(int(entry.name))
    return found


def test_auto_mode_runs_broker_and_file_backends_in_a_process(tmp_path: Path) -> None:
    assert EventBusPlugin("jsonl", path=str(tmp_path / "x.jsonl")).mode == "process"
    assert EventBusPlugin("memory").mode == "thread"
    with dask.config.set({"eventbus.pipeline.mode": "thread"}):
        assert EventBusPlugin("jsonl", path=str(tmp_path / "x.jsonl")).mode == "thread"


def test_the_memory_backend_refuses_process_mode() -> None:
    from dask_eventbus import ConfigError

    with dask.config.set(PROCESS), pytest.raises(ConfigError, match="only in thread mode"):
        EventBusPlugin("memory")


@gen_test(timeout=120)
async def test_a_killed_publisher_process_is_restarted_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.jsonl"
    with dask.config.set({**PROCESS, "eventbus.queue.batch-size": 50}):
        plugin = EventBusPlugin("jsonl", path=str(path))
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=2):
            async with Client(s.address, asynchronous=True) as c:
                sink = plugin._pipeline.sink
                assert isinstance(sink, ProcessSink)
                killed = []
                for round_ in range(3):
                    futures = c.map(inc, range(round_ * 100, round_ * 100 + 100))
                    # A new child, not the last one killed: the sink may not
                    # have noticed that death yet and still call it alive.
                    while not sink._alive or sink._child.pid in killed:
                        await asyncio.sleep(0.05)
                    killed.append(sink._child.pid)
                    os.kill(sink._child.pid, signal.SIGKILL)
                    assert len(await c.gather(futures)) == 100
                    del futures
    stats = plugin.stats()
    events, torn = written(path)
    assert torn <= len(killed)  # at most one half-written line per kill
    unique = sorted({int(e["sequence"]) for e in events})
    assert unique == list(range(1, unique[-1] + 1)), "an event was lost"
    assert stats["undelivered"] == 0 and stats["dropped"] == 0
    assert len(set(killed)) == 3
    finished = [
        e for e in events if e["type"] == "dask.task.transition" and e["data"]["finish"] == "memory"
    ]
    assert len({e["subject"] for e in finished}) == 300


def test_a_publisher_process_that_cannot_start_is_retried(tmp_path: Path, caplog) -> None:
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    source = textwrap.dedent(
        """
        from dask_eventbus.backends.jsonl import JsonLinesBackend

        class VanishingBackend(JsonLinesBackend):
            name = "vanishing"
        """
    )
    (module_dir / "vanishing_backend.py").write_text(source)
    sys.path.insert(0, str(module_dir))
    try:
        from vanishing_backend import VanishingBackend  # type: ignore[import-not-found]

        path = tmp_path / "events.jsonl"
        overrides = {
            **PROCESS,
            "eventbus.retry.initial-backoff": "50ms",
            "eventbus.retry.max-backoff": "200ms",
        }
        with dask.config.set(overrides):
            plugin = EventBusPlugin(VanishingBackend(path=str(path)))
        (module_dir / "vanishing_backend.py").rename(module_dir / "hidden.py")
        import asyncio

        async def run() -> None:
            async with Scheduler(
                host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]
            ) as s:
                async with Worker(s.address, nthreads=1):
                    async with Client(s.address, asynchronous=True) as c:
                        assert await c.submit(inc, 1, key="during-outage") == 2
                        while "failed to start" not in (plugin.stats()["last_error"] or ""):
                            await asyncio.sleep(0.1)
                        assert not path.exists()
                        (module_dir / "hidden.py").rename(module_dir / "vanishing_backend.py")
                        while not plugin.stats()["connected"]:
                            await asyncio.sleep(0.1)

        with caplog.at_level("ERROR", logger="distributed.eventbus"):
            asyncio.run(run())

    finally:
        sys.path.remove(str(module_dir))
        sys.modules.pop("vanishing_backend", None)
    assert "publisher process" in caplog.text and "failed to start" in caplog.text
    assert "No module named 'vanishing_backend'" in caplog.text
    seen = sequences(path)
    assert seen == list(range(1, len(seen) + 1))
    assert any(
        json.loads(line).get("subject") == "during-outage" for line in path.read_text().splitlines()
    )


@gen_test(timeout=60)
async def test_close_is_bounded_when_the_destination_is_broken(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with dask.config.set({**PROCESS, "eventbus.close-timeout": "1s"}):
        plugin = EventBusPlugin("jsonl", path=str(blocker / "events.jsonl"))
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=1):
            async with Client(s.address, asynchronous=True) as c:
                assert await c.submit(inc, 1) == 2
                while not plugin.stats()["publish_errors"]:
                    await asyncio.sleep(0.05)
                assert "cannot use the events file" in plugin.stats()["last_error"]
        started = time.monotonic()
    took = time.monotonic() - started
    stats = plugin.stats()
    assert stats["undelivered"] > 0 and stats["published"] == 0
    assert took < 1.0 + 2.5


def test_the_publisher_process_exits_with_its_scheduler(tmp_path: Path) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    env = {
        **os.environ,
        "DASK_EVENTBUS__BACKENDS__JSONL__PATH": str(tmp_path / "events.jsonl"),
        "DASK_EVENTBUS__PIPELINE__MODE": "process",
    }
    scheduler = subprocess.Popen(
        [str(Path(sys.executable).parent / "dask"), "scheduler", "--preload", "dask_eventbus",
         "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", "127.0.0.1:0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not children_of(scheduler.pid):
            assert time.monotonic() < deadline, "no publisher process appeared"
            time.sleep(0.1)
        (child,) = children_of(scheduler.pid)
    finally:
        scheduler.kill()
        scheduler.wait()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{child}").exists():
        state = (Path(f"/proc/{child}") / "stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":  # exited; only its parent may reap it
            break
        assert time.monotonic() < deadline, "the publisher process outlived its scheduler"
        time.sleep(0.1)


@gen_test(timeout=90)
async def test_the_whole_workload_in_process_mode(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with dask.config.set(PROCESS):
        plugin = EventBusPlugin("jsonl", path=str(path))
    log = await run_workload(plugin)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    transitions = [
        (e["data"]["key"], e["data"]["start"], e["data"]["finish"])
        for e in events
        if e["type"] == "dask.task.transition"
    ]
    from dask_eventbus.events import key_to_str

    assert transitions == [(key_to_str(t.key), t.start, t.finish) for t in log]
    groups = {e["data"]["key"]: e["data"]["group"] for e in events if "group" in e.get("data", {})}
    assert groups["('total', 0)"] == "total"


@gen_test(timeout=60)
async def test_values_msgpack_cannot_carry_still_arrive(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with dask.config.set(PROCESS):
        plugin = EventBusPlugin("jsonl", path=str(path))
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        # Scheduler-side code may log what no client could send.
        s.log_event("huge", {"n": 2**70, "nested": [{"m": -(2**80)}]})
    events = [json.loads(line) for line in path.read_text().splitlines()]
    (logged,) = [e for e in events if e.get("subject") == "huge"]
    assert logged["data"]["message"] == {"n": str(2**70), "nested": [{"m": str(-(2**80))}]}
    assert plugin.stats()["dropped"] == 0


def test_the_publisher_process_imports_only_what_publishing_needs(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    imported = publisher_process_imports(EventBusPlugin("jsonl", path=str(events_file)).backend)
    assert json.loads(events_file.read_text())["type"] == "dask.log"
    assert "dask_eventbus.backends.jsonl" in imported
    # With a file, no network (ssl) and no process supervision either.
    assert not_for_publishing(imported, "ssl", "subprocess", "urllib") == []


def test_the_publisher_process_starts_without_what_its_backend_does_not_use(
    tmp_path: Path,
) -> None:
    events_file = tmp_path / "events.jsonl"
    publisher_process_imports(StartupProbe(path=str(events_file)))
    startup = json.loads(events_file.with_name("events.jsonl.startup").read_text())
    # Kept out only while the backend's module was imported.
    assert startup["wave_when_imported"] is False
    assert startup["wave_when_publishing"] is True
    # The collector, off while the process started, is on again, and what
    # starting made is frozen out of its collections.
    assert startup["gc_when_imported"] is False
    assert startup["gc_when_publishing"] is True
    assert startup["frozen"] > 10_000
