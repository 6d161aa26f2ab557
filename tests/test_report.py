"""dask-eventbus report: real runs with known numbers, bad input, a real browser."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from browser import Browser, find_chromium
from distributed import Client, LocalCluster
from harness_redis import STREAMS
from helpers import IN_CI

from dask_eventbus import EventBusPlugin
from dask_eventbus.backends.memory import MemoryBackend, drop_store, get_store
from dask_eventbus.backends.redis import RedisBackend
from dask_eventbus.consume.inputs import BackendInput, bodies
from dask_eventbus.consume.sequence import SequenceTracker
from dask_eventbus.events import Event
from dask_eventbus.messages import build_messages
from dask_eventbus.normalize import Normalizer
from dask_eventbus.records import DroppedRecord, LogRecord, Record, TransitionRecord
from dask_eventbus.report import ReportInputWarning, build_report
from dask_eventbus.report.progress import Progress
from dask_eventbus.report.timeline import Timeline

pytestmark = pytest.mark.timeout(240)

BIN = Path(sys.executable).parent


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dask-eventbus"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------- the workload


def inc(x: int) -> int:
    time.sleep(0.02)
    return x + 1


def double(x: int) -> int:
    return 2 * x


def boom(x: int) -> int:
    raise ValueError(f"boom on {x}")


def after(x: int) -> int:
    return x


def final(x: int) -> int:
    return x


@pytest.fixture(scope="module")
def known_run() -> Iterator[list[Event]]:
    """Events of a real LocalCluster run whose numbers are known.

    40 ``inc`` and 20 ``double`` tasks reach memory; ``boom-0`` and ``boom-1``
    fail; ``after-0`` depends on ``boom-0`` and ``final-0`` on ``after-0``, so
    both fail because of it. A third worker joins, runs the 3 ``extra`` tasks
    and is retired before the end.
    """
    name = f"report-{uuid.uuid4().hex[:10]}"
    plugin = EventBusPlugin("memory", name=name)
    try:
        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=2,
                processes=False,
                dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"plugins": [plugin]},
            ) as cluster,
            Client(cluster) as client,
        ):
            incs = client.map(inc, range(40), key=[f"inc-{i}" for i in range(40)])
            doubles = client.map(double, incs[:20], key=[f"double-{i}" for i in range(20)])
            assert client.gather(doubles) == [2 * (i + 1) for i in range(20)]
            assert client.gather(incs) == list(range(1, 41))  # all done before the third joins
            booms = client.map(boom, range(2), key=["boom-0", "boom-1"])
            chained = client.submit(after, booms[0], key="after-0")
            last = client.submit(final, chained, key="final-0")
            assert isinstance(last.exception(), ValueError)
            assert isinstance(booms[1].exception(), ValueError)
            cluster.scale(3)
            client.wait_for_workers(3)
            workers = client.scheduler_info()["workers"]
            third = next(w for w, info in workers.items() if info["name"] == 2)
            extras = client.map(
                inc, range(3), key=[f"extra-{i}" for i in range(3)], workers=[third]
            )
            assert client.gather(extras) == [1, 2, 3]
            client.retire_workers([third])
            del incs, doubles, booms, chained, last, extras
        yield get_store(name).events()
    finally:
        drop_store(name)


EXPECTED_PREFIXES = {
    "inc": (40, 40, 0),
    "double": (20, 20, 0),
    "boom": (2, 0, 2),
    "after": (1, 0, 1),
    "final": (1, 0, 1),
    "extra": (3, 3, 0),
}


def test_a_real_run_gives_exactly_its_known_numbers(known_run: list[Event]) -> None:
    summary = build_report(known_run).summary()

    assert summary["tasks"] == {
        "total": 67,
        "memory": 63,
        "erred": 4,
        "unfinished": 0,
        "final_states": {"forgotten": 67},
    }
    got = {p: (v["tasks"], v["memory"], v["erred"]) for p, v in summary["prefixes"].items()}
    assert got == EXPECTED_PREFIXES
    inc_row = summary["prefixes"]["inc"]
    assert inc_row["computations"] == 40
    assert 0.02 <= inc_row["compute_seconds_median"] <= inc_row["compute_seconds_max"]
    assert inc_row["compute_seconds_total"] >= 40 * 0.02
    assert inc_row["nbytes_total"] > 0

    failures = {f["key"]: f for f in summary["failures"]}
    assert set(failures) == {"boom-0", "boom-1", "after-0", "final-0"}
    assert failures["boom-0"]["cause"] is None and failures["boom-1"]["cause"] is None
    assert failures["after-0"]["cause"] == "boom-0" and failures["final-0"]["cause"] == "boom-0"
    assert "boom on 0" in failures["boom-0"]["exception"]
    assert failures["boom-0"]["worker"]

    workers = summary["workers"]
    assert len(workers) == 3
    retired = [w for w in workers if w["reason"] == "retire-workers"]
    assert len(retired) == 1 and retired[0]["tasks"] == 3
    assert retired[0]["added"] < retired[0]["removed"] < summary["end"]
    # Tasks that ran: inc, double, boom (erred on a worker) and extra; after-0 and
    # final-0 never ran.
    assert sum(w["tasks"] for w in workers) == 40 + 20 + 2 + 3
    assert summary["clients"] >= 1
    assert len(summary["graphs"]) == 6  # map, map, map, submit, submit, map
    assert summary["graphs"][0]["tasks"] == 40 and summary["graphs"][0]["prefixes"] == {"inc": 40}

    (source,) = summary["sources"]
    assert source["first_sequence"] == 1 and source["last_sequence"] == len(known_run)
    assert source["events"] == len(known_run)
    assert (source["gaps"], source["dropped"], source["duplicates"]) == (0, 0, 0)
    assert source["schedulers"][0]["versions"]["dask_eventbus"]
    assert summary["start"] < summary["end"] and summary["duration_seconds"] > 0


def test_the_command_writes_the_same_summary_from_a_jsonl_file(
    known_run: list[Event], tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"".join(e.to_json() + b"\n" for e in known_run))
    result = run_cli("report", str(path), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == build_report(known_run).summary()
    assert "Reading events" not in result.stderr  # no progress bar when not a terminal

    twice = subprocess.run(
        [str(BIN / "dask-eventbus"), "report", "-", "--format", "json"],
        input=path.read_bytes() * 2,  # two gzip members, one after the other
        capture_output=True,
        timeout=120,
    )
    assert twice.returncode == 0, twice.stderr
    (health,) = json.loads(twice.stdout)["sources"]
    assert health["events"] == len(known_run) and health["duplicates"] == len(known_run)

    html = tmp_path / "run.html"
    result = run_cli("report", str(path), "-o", str(html))
    assert result.returncode == 0, result.stderr
    assert f"Wrote {html}: 67 tasks" in result.stderr
    page = html.read_text()
    assert "<script src=" not in page and "cdn.bokeh.org" not in page  # self-contained
    for section in ("Task Stream", "Progress", "Task Prefixes", "Failures", "Workers", "Graphs"):
        assert section in page


# ------------------------------------------------------------ synthetic input


def encoded(records: list[Record], source: str = "dask://test/one") -> list[bytes]:
    normalizer = Normalizer(source, "run1")
    return [m.body for m in build_messages(normalizer, records)]


def transitions(seqs: list[int], start: float = 1_796_000_000.0) -> list[Record]:
    return [TransitionRecord(seq, start + seq, f"t-{seq}", "released", "waiting") for seq in seqs]


def test_health_shows_gaps_duplicates_drops_and_oversized() -> None:
    normalizer = Normalizer("dask://test/one", "run1")
    records = [
        *transitions([1, 2, 3, 6]),
        DroppedRecord(9, 1_796_000_009.0, 3, 7, 9, "drop-oldest"),  # 7 and 8 lost
        LogRecord(10, 1_796_000_010.0, "topic", {"x": 1}),
    ]
    messages = build_messages(normalizer, records)
    oversized = normalizer.oversized(Event.from_json(messages[-1].body), 2_000_000)
    bodies = [m.body for m in messages[:-1]] + [oversized.to_json()]
    bodies += [bodies[1], bodies[-1]]  # redelivered
    bodies.insert(0, bodies.pop(3))  # out of order: 6 first

    report = build_report(bodies)
    (health,) = report.summary()["sources"]
    assert health["events"] == 6
    assert (health["first_sequence"], health["last_sequence"]) == (1, 10)
    assert health["gaps"] == 2 and health["gap_ranges"] == [[4, 5]]
    assert health["dropped"] == 3
    assert health["oversized"] == 1
    assert health["duplicates"] == 2

    page = report.to_html()
    assert "Missing, not announced (gaps)" in page
    assert "4-5" in page
    assert "Announced as dropped" in page and "Duplicates removed" in page


def test_bad_input_is_counted_and_skipped_with_one_warning_per_kind(tmp_path: Path) -> None:
    good = encoded(transitions([1, 2, 3]))
    unknown = json.loads(good[0])
    unknown["type"] = "com.example.something"
    newer = json.loads(good[1])
    newer["type"] = "dask.task.transition.v2"
    keyless = json.loads(good[2])
    keyless["id"], keyless["sequence"] = "run1-4", "4".zfill(20)
    del keyless["data"]["key"]
    lines = [
        b"this is not json",
        b'{"also": "not a cloudevent"}',
        b"[1, 2]",
        json.dumps(unknown).encode(),
        json.dumps(newer).encode(),
    ]
    bodies = [*good, *lines, *lines, b"{broken", json.dumps(keyless).encode()]

    with pytest.warns(ReportInputWarning) as warned:
        summary = build_report(bodies).summary()
    messages = [str(w.message) for w in warned]
    assert len(messages) == 4, messages
    assert any("not JSON" in m for m in messages)
    assert any("not dask-eventbus CloudEvents" in m for m in messages)
    assert any("com.example.something" in m for m in messages)
    assert any("newer schema version" in m and ".v2" in m for m in messages)
    assert summary["input"]["skipped"] == {
        "not_json": 3,
        "not_cloudevent": 5,
        "unknown_type": 2,
        "newer_version": 2,
    }
    assert summary["tasks"]["total"] == 3
    assert summary["sources"][0]["events"] == 3

    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(bodies) + b"\n\n")
    result = run_cli("report", str(path), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Warning: skipping") == 4
    assert json.loads(result.stdout)["input"]["skipped"]["not_json"] == 3


def test_an_empty_input_gives_a_report_that_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    result = run_cli("report", str(path), "--format", "json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sources"] == [] and summary["tasks"]["total"] == 0
    assert summary["start"] is None and summary["duration_seconds"] is None

    html = tmp_path / "empty.html"
    result = run_cli("report", str(path), "-o", str(html))
    assert result.returncode == 0, result.stderr
    assert "The input holds no events to report on." in html.read_text()

    missing = run_cli("report", str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"Error: no such events file: {tmp_path / 'missing.jsonl'}"


def test_several_schedulers_get_a_chooser_or_one_is_picked(tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    one = encoded(transitions([1, 2]), "dask://host/one")
    two = encoded(transitions([1, 2, 3]), "dask://host/two")
    path.write_bytes(b"\n".join(one + two) + b"\n")

    report = build_report(one + two)
    assert report.sources == ["dask://host/one", "dask://host/two"]
    assert [s["events"] for s in report.summary()["sources"]] == [2, 3]
    assert "2 schedulers in this input" in report.to_html()

    result = run_cli("report", str(path), "--format", "json", "--source", "dask://host/two")
    assert result.returncode == 0, result.stderr
    picked = json.loads(result.stdout)
    assert [s["source"] for s in picked["sources"]] == ["dask://host/two"]
    assert picked["tasks"]["total"] == 3

    result = run_cli("report", str(path), "--source", "dask://host/three")
    assert result.returncode == 1
    assert "dask://host/one, dask://host/two" in result.stderr


def test_since_and_until_keep_a_window(tmp_path: Path) -> None:
    start = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    bodies = encoded(transitions(list(range(1, 11)), start.timestamp()))
    report = build_report(
        bodies, since=start + timedelta(seconds=3), until=start + timedelta(seconds=7)
    )
    summary = report.summary()
    assert summary["tasks"]["total"] == 5
    assert summary["input"]["outside_window"] == 5
    assert summary["start"] == "2026-12-01T12:00:03Z"

    path = tmp_path / "window.jsonl"
    path.write_bytes(b"\n".join(bodies))
    result = run_cli(
        "report", str(path), "--format", "json",
        "--since", "2026-12-01T12:00:03Z", "--until", "2026-12-01 13:00:07+01:00",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tasks"]["total"] == 5
    bad = run_cli("report", str(path), "--since", "yesterday")
    assert bad.returncode == 2 and "not an ISO 8601 time" in bad.stderr


def test_a_backend_is_read_from_the_beginning_to_the_end(memory_store_name: str) -> None:
    backend = MemoryBackend(name=memory_store_name)
    backend.open()
    normalizer = Normalizer("dask://test/backend", "run1")
    backend.publish(build_messages(normalizer, transitions([1, 2, 3, 4])))
    backend.close()
    started = time.monotonic()
    report = build_report(bodies(BackendInput(backend, from_beginning=True, idle_timeout=0.3)))
    assert time.monotonic() - started < 5
    assert report.summary()["tasks"]["total"] == 4


stream = STREAMS.fixture("stream")


def test_the_command_reads_a_broker_from_the_beginning_to_the_end(
    redis_url: str, stream: str
) -> None:
    backend = RedisBackend(url=redis_url, stream=stream)
    try:
        backend.open()
        normalizer = Normalizer("dask://test/redis", "run1")
        backend.publish(build_messages(normalizer, transitions(list(range(1, 8)))))
        backend.close()
        started = time.monotonic()
        result = run_cli(
            "report", "--format", "json", "-b", "redis",
            "--option", f"url={redis_url}", "--option", f"stream={stream}",
            "--idle-timeout", "1",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 60
        summary = json.loads(result.stdout)
        assert summary["tasks"]["total"] == 7
        assert [s["source"] for s in summary["sources"]] == ["dask://test/redis"]
    finally:
        backend.close()


def test_large_runs_keep_a_bounded_task_stream_sample() -> None:
    records: list[Record] = []
    for i in range(1, 301):
        extra = {
            "nbytes": 8,
            "startstops": [{"action": "compute", "start": 1e9 + i, "stop": 1e9 + i + 0.5}],
        }
        records.append(
            TransitionRecord(
                i,
                1e9 + i + 0.5,
                f"x-{i}",
                "processing",
                "memory",
                worker="tcp://w:1",
                extra=extra,
            )
        )
    report = build_report(encoded(records), stream_limit=100)
    (aggregate,) = report.aggregates
    assert len(aggregate.stream) == 100 and aggregate.stream_seen == 300
    assert report.summary()["prefixes"]["x"]["computations"] == 300
    assert "A random sample of 100 of the 300 finished tasks" in report.to_html()


def test_sequence_tracker_tells_late_events_from_redeliveries() -> None:
    tracker = SequenceTracker()
    assert all(tracker.is_new(n) for n in (5, 9, 7, 1))
    assert not tracker.is_new(7) and not tracker.is_new(9)
    assert tracker.duplicates == 2
    tracker.announce_dropped(3, 4)
    assert tracker.unexplained_gaps() == [(2, 2), (6, 6), (8, 8)]


def test_timeline_keeps_totals_when_it_coarsens() -> None:
    timeline = Timeline(max_buckets=10, width=0.01)
    for i in range(1000):
        timeline.add(100.0 + i * 0.05, "done")
    times, values = timeline.cumulative(["done"])
    assert len(times) <= 11
    assert values["done"][-1] == 1000
    assert values["done"] == sorted(values["done"])


def test_importing_the_package_does_not_import_bokeh() -> None:
    code = "import sys, dask_eventbus.report.html; print('bokeh' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_without_bokeh_the_html_report_names_the_extra(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(encoded(transitions([1]))))
    code = (
        "import sys; sys.modules['bokeh'] = None\n"
        "from dask_eventbus.cli import main\n"
        f"main(['report', {str(path)!r}, '-o', {str(tmp_path / 'x.html')!r}])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "pip install 'dask-eventbus[report]'" in out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------ browser

RENDERED = """(() => {
  const canvases = (root) => {
    let n = 0;
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'CANVAS' && el.width > 0 && el.height > 0) n++;
      if (el.shadowRoot) n += canvases(el.shadowRoot);
    }
    return n;
  };
  return canvases(document);
})()"""


READY = "typeof Bokeh !== 'undefined' && Bokeh.documents.length > 0"


def require_chromium() -> str:
    binary = find_chromium()
    if binary is not None:
        return binary
    if IN_CI:
        pytest.fail("chromium is not installed, and CI must run the browser test")
    pytest.skip("no chromium binary (apt-get install chromium) to open the report in")


@pytest.mark.slow
def test_the_page_renders_in_a_real_browser(known_run: list[Event], tmp_path: Path) -> None:
    binary = require_chromium()
    page = tmp_path / "report.html"
    build_report(known_run).write_html(page)

    async def visit() -> tuple[list[str], dict[int, int], int]:
        async with Browser(binary, tmp_path / "profile", width=1400, height=900) as browser:
            await browser.open(page.as_uri())
            deadline = time.monotonic() + 30
            while not await browser.evaluate(
                "typeof Bokeh !== 'undefined' && Bokeh.documents.length > 0"
            ):
                assert time.monotonic() < deadline, "Bokeh never made a document"
                await asyncio.sleep(0.2)
            tabs = await browser.evaluate(
                "Bokeh.documents[0].get_model_by_name('report-tabs-0').tabs.length"
            )
            canvases = {}
            for tab in range(tabs):
                await browser.evaluate(
                    f"Bokeh.documents[0].get_model_by_name('report-tabs-0').active = {tab}"
                )
                await asyncio.sleep(0.5)
                canvases[tab] = await browser.evaluate(RENDERED)
                await browser.screenshot(tmp_path / f"report-tab-{tab}.png")
            return browser.errors.messages, canvases, tabs

    errors, canvases, tabs = asyncio.run(visit())
    assert errors == []
    assert tabs == 7
    assert all(count > 0 for count in canvases.values()), canvases
    for tab in range(tabs):
        shot = tmp_path / f"report-tab-{tab}.png"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_the_progress_line_shows_on_a_terminal_only() -> None:
    controller, terminal = os.openpty()
    with os.fdopen(terminal, "w") as tty, open(os.devnull, "w") as file:
        count = [0]
        shown = Progress(tty, lambda: count[0], lambda: 0.5)
        silent = Progress(file, lambda: count[0])
        assert shown.enabled and not silent.enabled
        count[0] = 12_345
        shown.close()
        silent.close()
    try:
        drawn = os.read(controller, 4096).decode()
    finally:
        os.close(controller)
    assert "Reading events: 12,345" in drawn and "/s)" in drawn and "50%" in drawn


@pytest.mark.slow
def test_the_chooser_switches_between_schedulers_in_a_real_browser(
    known_run: list[Event], tmp_path: Path
) -> None:
    binary = require_chromium()
    other = [msgspec.structs.replace(e, source="dask://elsewhere/other") for e in known_run]
    page = tmp_path / "two.html"
    build_report([*known_run, *other]).write_html(page)
    doc = "Bokeh.documents[0]"

    async def visit() -> tuple[list[str], list[bool], int, int]:
        async with Browser(binary, tmp_path / "profile", width=1400, height=900) as browser:
            await browser.open(page.as_uri())
            deadline = time.monotonic() + 30
            while not await browser.evaluate(READY):
                assert time.monotonic() < deadline, "Bokeh never made a document"
                await asyncio.sleep(0.2)
            before = await browser.evaluate(RENDERED)
            await browser.evaluate(
                f"{doc}.get_model_by_name('report-chooser').value = 'dask://elsewhere/other'"
            )
            await asyncio.sleep(1.0)
            visible = [
                await browser.evaluate(f"{doc}.get_model_by_name('report-tabs-{i}').visible")
                for i in (0, 1)
            ]
            after = await browser.evaluate(RENDERED)
            await browser.screenshot(tmp_path / "second-scheduler.png")
            return browser.errors.messages, visible, before, after

    errors, visible, before, after = asyncio.run(visit())
    assert errors == []
    assert visible == [False, True]
    assert before > 0 and after > 0
    assert (tmp_path / "second-scheduler.png").stat().st_size > 10_000
