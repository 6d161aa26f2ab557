"""``dask scheduler --preload dask_eventbus`` in real processes, and via config."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster
from helpers import DASK

from dask_eventbus.testing.workload import inc

pytestmark = pytest.mark.timeout(180)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # The child writes to its own copy of the file descriptor; ours is closed.
    with log.open("w") as out:
        return subprocess.Popen(
            [DASK, *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def scheduler_args(*extra: str) -> list[str]:
    return ["scheduler", "--preload", "dask_eventbus", *extra,
            "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0"]  # fmt: skip


def stop(process: subprocess.Popen, timeout: float = 30.0) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout)
    finally:
        process.kill()


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_preloaded_scheduler_configured_by_environment(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    scheduler_file = tmp_path / "scheduler.json"
    env = {
        "DASK_EVENTBUS__BACKEND": "jsonl",
        "DASK_EVENTBUS__BACKENDS__JSONL__PATH": str(events_file),
        "DASK_EVENTBUS__QUEUE__FLUSH_INTERVAL": "20ms",
    }
    scheduler = start(
        scheduler_args("--scheduler-file", str(scheduler_file)), env, tmp_path / "scheduler.log"
    )
    worker = None
    try:
        wait_for(scheduler_file.exists, what="the scheduler file")
        worker = start(
            ["worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
             "--name", "preload-worker", "--no-nanny", "--host", "127.0.0.1",
             "--dashboard-address", "127.0.0.1:0"],
            {}, tmp_path / "worker.log",
        )  # fmt: skip
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
            # A builtin: the scheduler process cannot import the tests' modules.
            assert client.submit(sum, [1, 1], key="preloaded").result() == 2
            live = client.sync(client.scheduler.eventbus_stats)
            assert live["backend"] == "jsonl" and live["started"]
            # Retired by the scheduler rather than by a signal: how a worker process
            # exits on SIGINT is distributed's business (and flaky upstream,
            # dask/distributed#7699), not this test's.
            client.retire_workers(close_workers=True)
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
        exit_code = stop(scheduler)
    log = (tmp_path / "scheduler.log").read_text()
    assert exit_code == 0, log
    events = read_events(events_file)
    types = [e["type"] for e in events]
    assert types[0] == "dask.scheduler.started"
    assert types[-1] == "dask.scheduler.closing"
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    finished = [
        e for e in events if e["type"] == "dask.task.transition" and e["data"]["finish"] == "memory"
    ]
    assert [e["subject"] for e in finished] == ["preloaded"]
    added = [e["data"] for e in events if e["type"] == "dask.worker.added"]
    assert [w["name"] for w in added] == ["preload-worker"]
    removed = [e["data"] for e in events if e["type"] == "dask.worker.removed"]
    assert [w["name"] for w in removed] == ["preload-worker"]
    assert "publishing scheduler events" in log


def test_preload_arguments_choose_backend_and_options(tmp_path: Path) -> None:
    events_file = tmp_path / "from-argv.jsonl"
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = start(
        scheduler_args("--eventbus-backend", "jsonl", "--eventbus-option", f"path={events_file}",
                       "--eventbus-option", "fsync=true", "--scheduler-file", str(scheduler_file)),
        {"DASK_EVENTBUS__BACKEND": "memory"}, tmp_path / "scheduler.log",
    )  # fmt: skip
    try:
        wait_for(scheduler_file.exists, what="the scheduler file")
        wait_for(lambda: events_file.exists() and events_file.stat().st_size > 0, what="events")
    finally:
        assert stop(scheduler) == 0
    types = [e["type"] for e in read_events(events_file)]
    assert types == ["dask.scheduler.started", "dask.scheduler.closing"]


def test_a_misconfigured_event_bus_stops_the_scheduler_with_a_clear_error(tmp_path: Path) -> None:
    log = tmp_path / "scheduler.log"
    scheduler = start(
        scheduler_args("--eventbus-backend", "jsonl", "--eventbus-option", "fsync=sometimes"),
        {}, log,
    )  # fmt: skip
    try:
        exit_code = scheduler.wait(60)
    finally:
        scheduler.kill()
    text = log.read_text()
    assert exit_code != 0
    assert "Invalid event bus config eventbus.backends.jsonl.fsync = 'sometimes'" in text


def test_an_unreachable_destination_does_not_stop_the_scheduler(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    scheduler_file = tmp_path / "scheduler.json"
    log = tmp_path / "scheduler.log"
    scheduler = start(
        scheduler_args("--eventbus-backend", "jsonl",
                       "--eventbus-option", f"path={blocker / 'events.jsonl'}",
                       "--scheduler-file", str(scheduler_file)),
        {"DASK_EVENTBUS__CLOSE_TIMEOUT": "1s"}, log,
    )  # fmt: skip
    try:
        wait_for(scheduler_file.exists, what="the scheduler file")
        wait_for(lambda: "cannot publish" in log.read_text(), what="the error in the log")
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            assert client.sync(client.scheduler.eventbus_stats)["publish_errors"] >= 1
    finally:
        exit_code = stop(scheduler)
    text = log.read_text()
    assert exit_code == 0, text
    assert "cannot use the events file" in text and "Retrying with backoff" in text
    assert "publisher thread failed" not in text
    assert re.search(r"closed with \d+ events undelivered", text)


def test_config_preload_reaches_a_local_cluster(memory_store_name: str) -> None:
    config = {
        "distributed.scheduler.preload": ["dask_eventbus"],
        "eventbus.backend": "memory",
        "eventbus.backends.memory.name": memory_store_name,
    }
    from dask_eventbus.backends.memory import get_store

    with dask.config.set(config):
        with (
            LocalCluster(n_workers=1, processes=False, dashboard_address="127.0.0.1:0") as cluster,
            Client(cluster) as client,
        ):
            assert client.submit(inc, 1, key="via-config").result() == 2
    events = get_store(memory_store_name).events()
    assert events[0].type == "dask.scheduler.started"
    assert any(e.subject == "via-config" for e in events)


def test_option_values_stay_strings_unless_written_as_lists_or_mappings() -> None:
    from dask_eventbus import ConfigError
    from dask_eventbus.preload import parse_option_pairs

    options = parse_option_pairs(
        ["password=@hunter2*", "maxlen=0", "bindings=[a.#, b.*]", "config.linger.ms=5", "x="]
    )
    assert options == {
        "password": "@hunter2*",
        "maxlen": "0",
        "bindings": ["a.#", "b.*"],
        "config": {"linger.ms": "5"},
        "x": "",
    }
    with pytest.raises(ConfigError) as info:
        parse_option_pairs(["secret=[unclosed, hunter2"])
    assert "hunter2" not in str(info.value)
