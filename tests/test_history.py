"""dask-eventbus archive and history: real workloads into PostgreSQL and SQLite,
redeliveries, crashes at random moments, a database connection cut."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, Nanny, Scheduler, Worker
from helpers import ENDPOINTS, require_endpoint, via

from dask_eventbus import EventBusPlugin
from dask_eventbus.backends.memory import drop_store, get_store
from dask_eventbus.consume.inputs import BackendInput, FileInput
from dask_eventbus.events import Event
from dask_eventbus.history.archiver import Archiver, input_name
from dask_eventbus.history.database import ArchiveLocked, connect
from dask_eventbus.messages import build_messages
from dask_eventbus.normalize import Normalizer
from dask_eventbus.records import (
    SchedulerClosingRecord,
    SchedulerStartedRecord,
    TransitionRecord,
)
from dask_eventbus.report import build_report
from dask_eventbus.testing import FaultProxy, unique_name
from dask_eventbus.testing.workload import inc

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import report_scale

pytestmark = pytest.mark.timeout(240)

BIN = Path(sys.executable).parent


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dask-eventbus"), *args], capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------------ databases


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A database of its own for one test, dropped after it."""
    psycopg = pytest.importorskip("psycopg")
    server = require_endpoint("postgresql")
    name = f"eventbus_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(server + "/postgres", autocommit=True, connect_timeout=3)
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.db'}"
    else:
        with postgres_database() as url:
            yield url


def rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    database = connect(url, migrate=False)
    try:
        return database.execute(sql, params)
    finally:
        database.close()


def archive(url: str, path: Path, **kwargs: Any) -> Archiver:
    archiver = Archiver(
        lambda: connect(url), FileInput(path), input_name=input_name(str(path)), **kwargs
    )
    archiver.run()
    return archiver


def write_jsonl(path: Path, bodies: list[bytes]) -> Path:
    path.write_bytes(b"".join(body.rstrip(b"\n") + b"\n" for body in bodies))
    return path


# --------------------------------------------------------------- a real run


def sleep_then(seconds: float) -> int:
    time.sleep(seconds)
    return 1


def fail(x: int) -> int:
    raise ValueError(f"bad input {x}")


def after(x: int) -> int:
    return x


async def _workload(store: str) -> None:
    plugin = EventBusPlugin("memory", name=store)
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Nanny(s.address, nthreads=1) as nanny, Worker(s.address, nthreads=2) as kept:
            async with Client(s.address, asynchronous=True) as c:
                incs = c.map(inc, range(30), key=[f"inc-{i}" for i in range(30)])
                await c.gather(incs, errors="skip")
                failed = c.submit(fail, 1, key="fail-0", workers=[kept.address])
                dependent = c.submit(after, failed, key="after-0")
                await c.gather([dependent], errors="skip")
                victim = nanny.worker_address
                running = c.submit(sleep_then, 30, key="running-0", workers=[victim])
                while not s.workers[victim].metrics.get("task_counts", {}).get("executing"):
                    await asyncio.sleep(0.05)
                assert nanny.process is not None and nanny.process.pid is not None
                os.kill(nanny.process.pid, signal.SIGKILL)
                while victim in s.workers:
                    await asyncio.sleep(0.02)
                await running.cancel()
                del incs, failed, dependent


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Event]]:
    """A JSON Lines file of a real run: 30 incs, one failure and its dependent,
    a worker killed while it ran ``running-0``."""
    store = unique_name()
    try:
        asyncio.run(_workload(store))
        events = get_store(store).events()
    finally:
        drop_store(store)
    path = tmp_path_factory.mktemp("history") / "events.jsonl"
    write_jsonl(path, [event.to_json() for event in events])
    return path, events


def test_a_real_run_is_stored_as_its_events_say(
    database_url: str, real_run: tuple[Path, list[Event]]
) -> None:
    path, events = real_run
    counts = archive(database_url, path).counts
    assert counts.archived == len(events) and counts.read == len(events)

    summary = build_report(events).summary()
    by_prefix = {
        prefix: (tasks, memory, erred)
        for prefix, tasks, memory, erred, *_ in rows(
            database_url,
            "SELECT prefix, COUNT(*), SUM(CASE WHEN outcome = 'memory' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN outcome = 'erred' THEN 1 ELSE 0 END) FROM tasks GROUP BY prefix",
        )
    }
    expected = {p: (v["tasks"], v["memory"], v["erred"]) for p, v in summary["prefixes"].items()}
    assert by_prefix == expected
    assert by_prefix["inc"] == (30, 30, 0) and by_prefix["fail"] == (1, 0, 1)

    ((exception, cause, worker),) = rows(
        database_url, "SELECT exception, cause, worker FROM tasks WHERE key = 'fail-0'"
    )
    assert "bad input 1" in exception and cause is None and worker
    ((dependent_cause,),) = rows(database_url, "SELECT cause FROM tasks WHERE key = 'after-0'")
    assert dependent_cause == "fail-0"
    # Incs held only by the killed worker run again (or are cancelled with it);
    # the ones that ran once have their run's times: the first of its
    # start-stops (the worker's clock, as the scheduler corrected it) and when
    # the scheduler heard it was done.
    runs = Counter(
        e.data["key"]
        for e in events
        if e.type == "dask.task.transition" and e.data["finish"] == "processing"
    )
    done = {
        e.data["key"]: e
        for e in events
        if e.type == "dask.task.transition" and e.data["finish"] == "memory"
    }
    once = {key for key, count in runs.items() if key.startswith("inc-") and count == 1}
    assert once
    for key, started, finished, compute in rows(
        database_url,
        "SELECT key, started, finished, compute_seconds FROM tasks WHERE outcome = 'memory'",
    ):
        assert finished is not None and compute >= 0, key
        if key in once:
            startstops = done[key].data["startstops"]
            assert started == min(s["start"] for s in startstops), key
            assert finished == done[key].time.timestamp(), key
            compute_actions = [s for s in startstops if s["action"] == "compute"]
            assert compute == pytest.approx(sum(s["stop"] - s["start"] for s in compute_actions))

    departed = rows(
        database_url,
        "SELECT expected, processing, processing_total FROM workers WHERE departed IS NOT NULL "
        "AND processing_total > 0",
    )
    assert [(bool(e), json.loads(p), n) for e, p, n in departed] == [(False, ["running-0"], 1)]
    ((closed, address, versions),) = rows(
        database_url, "SELECT closed, address, versions FROM schedulers"
    )
    assert closed is not None and address.startswith("tcp://")
    assert json.loads(versions)["dask_eventbus"]
    assert rows(database_url, "SELECT COUNT(*) FROM events") == [(len(events),)]
    assert rows(database_url, "SELECT COUNT(*) FROM gaps") == [(0,)]
    assert rows(database_url, "SELECT COUNT(*) FROM clients")[0][0] >= 1
    assert rows(database_url, "SELECT COUNT(*) FROM graphs")[0][0] >= 3
    assert rows(database_url, "SELECT COUNT(*) FROM tasks WHERE unfinished")[0][0] == 0


def test_history_answers_and_the_report_from_the_database_equals_the_files(
    tmp_path: Path, real_run: tuple[Path, list[Event]]
) -> None:
    path, events = real_run
    url = f"sqlite:///{tmp_path / 'h.db'}"
    done = run_cli("archive", str(path), "--to", url)
    assert done.returncode == 0, done.stderr
    assert f"Archived {len(events):,} new events" in done.stderr

    answers = {}
    for question in ("runs", "failures", "prefixes", "workers"):
        answered = run_cli("history", url, question, "--json")
        assert answered.returncode == 0, answered.stderr
        answers[question] = json.loads(answered.stdout)
    (run,) = answers["runs"]
    assert run["ending"] == "closed" and run["tasks"] == 33 and run["erred"] == 2
    # The killed one, the kept one, and the nanny's restart if it joined in time.
    addresses = {
        e.data["address"] for e in events if e.type in ("dask.worker.added", "dask.worker.removed")
    }
    assert run["workers"] == len(addresses) >= 2
    assert {(f["key"], f["cause"]) for f in answers["failures"]} == {
        ("fail-0", None),
        ("after-0", "fail-0"),
    }
    assert {p["prefix"]: p["tasks"] for p in answers["prefixes"]}["inc"] == 30
    killed = [w for w in answers["workers"] if w["processing"]]
    assert [(w["expected"], w["processing"]) for w in killed] == [(False, ["running-0"])]
    table = run_cli("history", url, "failures")
    assert "fail-0" in table.stdout and "bad input 1" in table.stdout

    from_file = run_cli("report", str(path), "--format", "json")
    from_database = run_cli("report", url, "--format", "json", "--source", events[0].source)
    assert from_database.returncode == 0, from_database.stderr
    assert json.loads(from_database.stdout) == json.loads(from_file.stdout)


# ------------------------------------------------------- redelivery and runs


VERSIONS = {"dask": "2026.1.0", "distributed": "2026.1.0", "dask_eventbus": "0.2.0"}


def synthetic_run(source: str, run: str, keys: int, *, closing: bool = True) -> list[bytes]:
    """A scheduler run's events: every task released, waiting, processing; the
    even ones reach memory; closing (if asked) while the odd ones still run."""
    normalizer = Normalizer(source, run)
    start = 1_796_000_000.0
    records: list[Any] = [
        SchedulerStartedRecord(1, start, "sched-" + run, "tcp://s:8786", VERSIONS, 0)
    ]
    for i in range(keys):
        for step, (a, b) in enumerate(
            [("released", "waiting"), ("waiting", "processing")]
            + ([("processing", "memory")] if i % 2 == 0 else [])
        ):
            records.append(
                TransitionRecord(len(records) + 1, start + i + step / 10, f"t-{i}", a, b)
            )
    if closing:
        records.append(
            SchedulerClosingRecord(
                len(records) + 1, start + keys + 1, "sched-" + run, "tcp://s:8786", VERSIONS, 0
            )
        )
    return [message.body for message in build_messages(normalizer, records)]


def test_events_delivered_twice_are_stored_once_and_two_runs_stay_apart(
    database_url: str, tmp_path: Path
) -> None:
    first = synthetic_run("dask://one", "runA", 40)
    second = synthetic_run("dask://one", "runB", 10, closing=False)
    batch = b"[" + b",".join(first[5:15]) + b"]"  # batched-mode redelivery
    bodies = first + second[:5] + first[:20] + [batch] + second[5:] + second
    archiver = archive(database_url, write_jsonl(tmp_path / "twice.jsonl", bodies))
    assert archiver.counts.archived == len(first) + len(second)

    assert rows(database_url, "SELECT COUNT(*) FROM events") == [(len(first) + len(second),)]
    per_run = dict(rows(database_url, "SELECT run, COUNT(*) FROM tasks GROUP BY run"))
    assert per_run == {"runA": 40, "runB": 10}
    states = rows(
        database_url,
        "SELECT run, state, unfinished, COUNT(*) FROM tasks GROUP BY run, state, unfinished "
        "ORDER BY run, state",
    )
    # runA closed with its odd tasks processing: those are marked unfinished.
    assert [(r, s, bool(u), n) for r, s, u, n in states] == [
        ("runA", "memory", False, 20),
        ("runA", "processing", True, 20),
        ("runB", "memory", False, 5),
        ("runB", "processing", False, 5),
    ]
    ended = rows(database_url, "SELECT run, closed IS NOT NULL FROM schedulers ORDER BY run")
    assert [(r, bool(c)) for r, c in ended] == [("runA", True), ("runB", False)]


def test_a_silent_run_is_marked_crashed_after_stale_after(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    path = write_jsonl(tmp_path / "silent.jsonl", synthetic_run("dask://x", "r", 6, closing=False))
    archive(url, path, stale_after=60.0)  # its events are from 2026-12: long silent
    ((crashed, closed),) = rows(url, "SELECT crashed, closed FROM schedulers")
    assert crashed is not None and closed is None
    assert rows(url, "SELECT COUNT(*) FROM tasks WHERE unfinished") == [(3,)]


def test_bad_input_is_counted_and_skipped_once_per_kind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    good = synthetic_run("dask://x", "r", 4)
    unknown = json.loads(good[1])
    unknown.update(type="dask.something.new", id="r-999", sequence="999")
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [good[0], b"not json", b'{"json": "but no event"}', json.dumps(unknown).encode()]
        + [b"garbage"] * 3
        + good[1:],
    )
    said: list[str] = []
    archiver = Archiver(lambda: connect(url), FileInput(path), input_name=None, warn=said.append)
    counts = archiver.run()
    assert counts.archived == len(good)
    assert dict(archiver.reader.skipped) == {
        "not_json": 4,
        "not_cloudevent": 1,
        "unknown_type": 1,
    }
    assert len(said) == 3 and all("the archive counts every one skipped" in s for s in said)


# ---------------------------------------------------------------- exclusivity


def test_a_second_archiver_on_the_same_database_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    first = connect(database_url)
    first.lock_for_archiving()
    try:
        second = connect(database_url)
        with pytest.raises(ArchiveLocked, match="another dask-eventbus archive is writing"):
            second.lock_for_archiving()
        second.close()
    finally:
        first.close()
    third = connect(database_url)  # the lock goes with its holder
    third.lock_for_archiving()
    third.close()


def test_a_refused_write_stops_with_its_cause(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    bodies = synthetic_run("dask://x", "r", 4)
    event = Event.from_json(bodies[2])
    database = connect(url)
    # A row the archive's own bookkeeping does not know of: a constraint refuses.
    database.execute(
        "INSERT INTO events (source, id, run, sequence, type, time, body) "
        "VALUES (?, ?, 'r', 3, ?, 0, '{}')",
        (event.source, event.id, event.type),
    )
    database.commit()
    database.close()
    path = write_jsonl(tmp_path / "e.jsonl", bodies)
    failed = run_cli("archive", str(path), "--to", url)
    assert failed.returncode == 1
    assert "SQLite refused the write: UNIQUE constraint failed: events.source, events.id" in (
        failed.stderr
    )
    assert rows(url, "SELECT COUNT(*) FROM tasks") == [(0,)]  # nothing half-written


def test_unknown_database_urls_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="postgresql://USER@HOST:PORT/DATABASE or sqlite:///PATH"):
        connect("mysql://root@localhost/x")
    refused = run_cli("history", "mysql://root:secret@localhost/x", "runs")
    assert refused.returncode == 1 and "secret" not in refused.stderr


# ------------------------------------------------------------- crash safety


def _table_contents(url: str) -> dict[str, list[tuple[Any, ...]]]:
    tables = ("events", "schedulers", "tasks", "workers", "worker_metrics", "clients")
    tables += ("graphs", "spans", "logs", "gaps")
    return {table: sorted(rows(url, f"SELECT * FROM {table}"), key=repr) for table in tables}


def _archive_in_a_child(url: str, path: Path, batch_events: int) -> int:
    """Fork a process that archives ``path``; its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            archiver = Archiver(
                lambda: connect(url),
                FileInput(path),
                input_name=input_name(str(path)),
                batch_events=batch_events,
            )
            archiver.run()
        except ArchiveLocked:
            code = 3  # the killed one's connection not yet gone (PostgreSQL)
        except BaseException:
            code = 1
        os._exit(code)
    return pid


@pytest.fixture(scope="module")
def hundred_thousand_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "events.jsonl"
    report_scale.generate(path, 100_000, workers=8, threads=2, graph_size=5000)
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def two_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'once.db'}", f"sqlite:///{tmp_path / 'killed.db'}"
    else:
        with postgres_database() as once, postgres_database() as killed:
            yield once, killed


@pytest.mark.slow
def test_killed_at_a_hundred_random_moments_the_archive_ends_exactly_right(
    hundred_thousand_events: Path, two_databases: tuple[str, str]
) -> None:
    path = hundred_thousand_events
    expected_url, url = two_databases
    started = time.monotonic()
    archive(expected_url, path)
    ingest = time.monotonic() - started
    expected = _table_contents(expected_url)

    connect(url).close()  # the schema, so that children do not race to make it
    started = time.monotonic()
    measured = Archiver(lambda: connect(url), FileInput(path), input_name=None)
    measured.database.close()
    measured.input.close()
    startup = time.monotonic() - started  # connecting, locking, restoring
    rng = random.Random(7)

    def position() -> int:
        found = rows(url, "SELECT MAX(position) FROM archive_positions")
        return found[0][0] or 0

    kills = locked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        while kills < 100:
            reached = position()
            pid = _archive_in_a_child(url, path, batch_events=250)
            ended = (0, 0)
            if rng.random() < 0.1:
                time.sleep(rng.uniform(0.0, startup))  # while it starts
            else:
                # While it archives: after its first commit (however loaded the
                # machine, each kill interrupts real work), somewhere within
                # the time of about one batch.
                deadline = time.monotonic() + 60
                while position() == reached and time.monotonic() < deadline:
                    ended = os.waitpid(pid, os.WNOHANG)
                    if ended != (0, 0):
                        break
                    time.sleep(0.002)
                else:
                    time.sleep(rng.uniform(0.0, ingest / 400))
            if ended == (0, 0):
                os.kill(pid, signal.SIGKILL)
                ended = os.waitpid(pid, 0)
            status = ended[1]
            kills += os.WIFSIGNALED(status)
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3:
                locked += 1
            elif os.WIFEXITED(status):
                break  # it finished before the kill: nothing left to interrupt
    assert locked < 20
    # The killed ones got somewhere, and the last one carries on from there.
    ((position,),) = rows(url, "SELECT position FROM archive_positions")
    assert 0 < position < path.stat().st_size
    pid = _archive_in_a_child(url, path, batch_events=250)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert kills == 100
    assert _table_contents(url) == expected


@pytest.mark.slow
def test_a_cut_postgresql_connection_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    report_scale.generate(path, 30_000, workers=8, threads=2, graph_size=3000)
    with postgres_database() as direct_url, postgres_database() as url:
        archive(direct_url, path)
        proxy = FaultProxy(ENDPOINTS["postgresql"].address)
        proxied = via(url, proxy.port)
        archivers: list[Archiver] = []
        try:
            proxy.set_mode("refuse")  # down when the archive starts: it waits
            starter = threading.Thread(
                target=lambda: archivers.append(
                    Archiver(
                        lambda: connect(proxied, connect_timeout=2),
                        FileInput(path),
                        input_name=input_name(str(path)),
                        batch_events=500,
                    )
                )
            )
            starter.start()
            time.sleep(1.0)
            assert not archivers and starter.is_alive()
            proxy.set_mode("pass")
            starter.join(timeout=30)
            (archiver,) = archivers
            runner = threading.Thread(target=archiver.run)
            runner.start()
            while archiver.counts.transactions < 5:
                time.sleep(0.01)
            proxy.set_mode("refuse")
            assert proxy.cut() >= 1
            time.sleep(1.5)  # down: the archiver retries, the input waits
            proxy.set_mode("pass")
            runner.join(timeout=120)
            assert not runner.is_alive()
        finally:
            proxy.close()
        assert archiver.counts.retries >= 2
        assert _table_contents(url) == _table_contents(direct_url)


def test_following_a_broker_acknowledges_only_what_was_committed(
    tmp_path: Path, memory_store_name: str
) -> None:
    from dask_eventbus.backends.memory import MemoryBackend

    backend = MemoryBackend(name=memory_store_name)
    backend.open()
    backend.publish(build_messages(Normalizer("dask://b", "r"), _records(10)))
    url = f"sqlite:///{tmp_path / 'h.db'}"
    archiver = Archiver(
        lambda: connect(url),
        BackendInput(backend, from_beginning=True, idle_timeout=None),
        input_name=None,
    )
    deadline = time.monotonic() + 30
    archiver.run(should_stop=lambda: archiver.counts.archived >= 10 or time.monotonic() > deadline)
    backend.close()
    assert rows(url, "SELECT COUNT(*) FROM events") == [(10,)]


def _records(count: int) -> list[Any]:
    start = 1_796_000_000.0
    return [
        TransitionRecord(i, start + i, f"k-{i}", "released", "waiting") for i in range(1, count + 1)
    ]


def test_sqlite_database_is_left_consistent_for_readers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    path = write_jsonl(tmp_path / "e.jsonl", synthetic_run("dask://x", "r", 4))
    archive(url, path)
    with sqlite3.connect(tmp_path / "h.db") as plain:
        assert plain.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert plain.execute("SELECT MAX(version) FROM eventbus_schema").fetchone() == (1,)


def test_following_a_file_takes_lines_as_they_are_completed(tmp_path: Path) -> None:
    bodies = synthetic_run("dask://f", "r", 6)
    path = write_jsonl(tmp_path / "grow.jsonl", bodies[:4])
    url = f"sqlite:///{tmp_path / 'h.db'}"
    archiver = Archiver(
        lambda: connect(url), FileInput(path, follow=True), input_name=input_name(str(path))
    )
    stop = threading.Event()
    runner = threading.Thread(target=archiver.run, kwargs={"should_stop": stop.is_set})
    runner.start()
    try:
        with open(path, "ab") as f:
            f.write(bodies[4][:30])  # half a line: not read until complete
            f.flush()
            time.sleep(0.3)
            assert archiver.counts.archived == 4
            f.write(bodies[4][30:] + b"\n" + b"\n".join(bodies[5:]) + b"\n")
        deadline = time.monotonic() + 10
        while archiver.counts.archived < len(bodies) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        runner.join(timeout=10)
    assert archiver.counts.archived == len(bodies)
    ((position,),) = rows(url, "SELECT position FROM archive_positions")
    assert position == path.stat().st_size


def test_a_gzipped_file_archived_twice_is_stored_once(tmp_path: Path) -> None:
    import gzip

    bodies = synthetic_run("dask://z", "r", 10)
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(bodies) + b"\n"))
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert archive(url, path).counts.archived == len(bodies)
    # No position for a gzip file: read again from the start, every event known.
    again = archive(url, path)
    assert (again.counts.read, again.counts.archived) == (len(bodies), 0)
    assert rows(url, "SELECT COUNT(*) FROM events") == [(len(bodies),)]
