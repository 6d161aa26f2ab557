"""The facts added in schema 1.1, from real clusters: graph structure, Dask
spans and annotations, worker status and metrics, what a departing worker
was running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterable
from typing import Any

import dask
import dask.array as da
import distributed
import psutil
import pytest
from dask.core import get_dependencies
from dask.delayed import Delayed
from distributed import Client, Nanny, Scheduler, SchedulerPlugin, Worker
from distributed.utils_test import gen_test
from jsonschema import Draft202012Validator, FormatChecker

from dask_eventbus import EventBusPlugin
from dask_eventbus.backends.memory import get_store
from dask_eventbus.events import Event, key_to_str, load_shipped_schema
from dask_eventbus.normalize import listed_dependencies
from dask_eventbus.report import build_report
from dask_eventbus.testing.workload import add, inc

pytestmark = pytest.mark.timeout(120)

VALIDATOR = Draft202012Validator(load_shipped_schema(), format_checker=FormatChecker())


def plugin_for(store: str, **config: Any) -> EventBusPlugin:
    with dask.config.set({f"eventbus.{key}": value for key, value in config.items()}):
        return EventBusPlugin("memory", name=store)


def scheduler(plugin: EventBusPlugin) -> Scheduler:
    return Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin])


def of_type(events: Iterable[Event], type_: str) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == type_]


def structure(events: list[Event]) -> dict[str, list[dict[str, Any]]]:
    """Each submission's tasks, from its complete set of chunks."""
    chunks: dict[str, list[dict[str, Any]]] = {}
    for data in of_type(events, "dask.graph.tasks"):
        chunks.setdefault(data["stimulus_id"], []).append(data)
    graphs = {}
    for stimulus, parts in chunks.items():
        assert [p["chunk"] for p in parts] == list(range(1, parts[0]["chunks"] + 1))
        graphs[stimulus] = [task for part in parts for task in part["tasks"]]
        assert len(graphs[stimulus]) == parts[0]["tasks_total"]
    return graphs


def edges(tasks: list[dict[str, Any]]) -> dict[str, set[str]]:
    return {t["key"]: set(t["dependencies"]) for t in tasks}


def assert_valid(events: list[Event]) -> None:
    for event in events:
        errors = list(VALIDATOR.iter_errors(event.to_dict()))
        assert not errors, f"{event.type}: {errors[0].message}"


class GraphObserver(SchedulerPlugin):
    """The dependencies of each submission's tasks, as the scheduler holds them."""

    name = "graph-observer"

    def __init__(self) -> None:
        self.graphs: list[dict[str, set[str]]] = []

    def update_graph(self, scheduler: Scheduler, *, tasks: list[Any], **kwargs: Any) -> None:
        self.graphs.append(
            {
                key_to_str(key): {key_to_str(d.key) for d in scheduler.tasks[key].dependencies}
                for key in tasks
            }
        )


@gen_test(timeout=60)
async def test_graphs_of_known_shape_arrive_with_exactly_their_edges(
    memory_store_name: str,
) -> None:
    diamond = {"top": (inc, 1), "left": (inc, "top"), "right": (inc, "top")}
    diamond["bottom"] = (add, "left", "right")
    tree = {f"leaf-{i}": (inc, i) for i in range(8)}
    for level, width in enumerate((4, 2, 1), 1):
        below = "leaf" if level == 1 else f"node{level - 1}"
        for i in range(width):
            tree[f"node{level}-{i}"] = (add, f"{below}-{2 * i}", f"{below}-{2 * i + 1}")
    array = da.ones((8, 8), chunks=(2, 2)).sum(split_every=2)

    plugin = plugin_for(memory_store_name)
    observer = GraphObserver()
    async with scheduler(plugin) as s, Worker(s.address, nthreads=2):
        s.add_plugin(observer)
        async with Client(s.address, asynchronous=True) as c:
            assert await c.get(diamond, "bottom", sync=False) == 6
            assert await c.get(tree, "node3-0", sync=False) == 36
            assert await c.compute(array) == 64
    array_edges = observer.graphs[2]
    events = get_store(memory_store_name).events()
    graphs = list(structure(events).values())
    assert len(graphs) == 3
    assert edges(graphs[0]) == {k: get_dependencies(diamond, k) for k in diamond}
    assert edges(graphs[1]) == {k: get_dependencies(tree, k) for k in tree}
    # The client sends the array as an expression; the scheduler materializes
    # it, so its keys are known only there. Every task of it arrived, edges and all.
    assert edges(graphs[2]) == array_edges
    assert sum(len(deps) for deps in array_edges.values()) >= 15  # 16 chunks summed in a tree
    assert any("sum" in t["prefix"] for t in graphs[2])
    updated = of_type(events, "dask.graph.updated")
    assert [g["tasks"] for g in updated] == [len(g) for g in graphs]
    first = next(i for i, e in enumerate(events) if e.type == "dask.graph.tasks")
    assert events[first - 1].type in ("dask.graph.updated", "dask.span")
    assert_valid(events)


@gen_test(timeout=60)
async def test_a_ten_thousand_task_graph_arrives_complete_in_chunks(
    memory_store_name: str,
) -> None:
    graph: dict[str, Any] = {f"a-{i}": (inc, i) for i in range(5000)}
    graph.update({f"b-{i}": (inc, f"a-{i}") for i in range(5000)})
    graph.update({f"s-{j}": (sum, [f"b-{i}" for i in range(j, 5000, 50)]) for j in range(50)})
    graph["total"] = (sum, [f"s-{j}" for j in range(50)])
    limit = 200_000
    plugin = plugin_for(memory_store_name, **{"events.max-event-bytes": limit})
    store = get_store(memory_store_name)
    # No worker: the structure is published when the graph arrives, and
    # running 10,000 tasks would only make the test slow.
    async with scheduler(plugin), Client(plugin.scheduler.address, asynchronous=True) as c:
        future = c.compute(Delayed("total", graph))
        while not any(
            e.type == "dask.graph.tasks" and e.data["chunk"] == e.data["chunks"]
            for e in store.events()
        ):
            await asyncio.sleep(0.05)
        await c.cancel(future)
    events = store.events()
    chunks = [e for e in events if e.type == "dask.graph.tasks"]
    assert len(chunks) > 5
    assert all(len(e.to_json()) <= limit for e in chunks)
    (tasks,) = structure(events).values()
    assert len(tasks) == len(graph) == 10051
    assert edges(tasks) == {k: get_dependencies(graph, k) for k in graph}
    assert not any(e.type == "dask.eventbus.oversized" for e in events)


@gen_test(timeout=60)
async def test_keys_of_hundreds_of_characters_still_fit_the_event_size(
    memory_store_name: str,
) -> None:
    limit = 20_000
    plugin = plugin_for(memory_store_name, **{"events.max-event-bytes": limit})
    store = get_store(memory_store_name)
    keys = [f"{'long-function-name-' * 14}-{i:04d}" for i in range(300)]
    async with scheduler(plugin), Client(plugin.scheduler.address, asynchronous=True) as c:
        futures = c.map(inc, range(300), key=keys)
        while (
            sum(len(e.data["tasks"]) for e in store.events() if e.type == "dask.graph.tasks") < 300
        ):
            await asyncio.sleep(0.05)
        await c.cancel(futures)
    events = store.events()
    chunks = [e for e in events if e.type == "dask.graph.tasks"]
    assert len(keys[0]) > 250 and len(chunks) > 10
    assert all(len(e.to_json()) <= limit for e in chunks)
    # (The dask.graph.updated event's 100 requested keys are what is too large here.)
    assert not [e for e in events if e.type == "dask.eventbus.oversized" and
                e.data["type"] == "dask.graph.tasks"]  # fmt: skip


@gen_test(timeout=60)
async def test_past_the_cap_the_events_say_how_many_tasks_were_left_out(
    memory_store_name: str,
) -> None:
    plugin = plugin_for(memory_store_name, **{"events.max-graph-tasks": 10})
    async with scheduler(plugin) as s, Worker(s.address, nthreads=2):
        async with Client(s.address, asynchronous=True) as c:
            await c.gather(c.map(inc, range(25)))
            await c.submit(inc, 1, key="alone")
    chunks = of_type(get_store(memory_store_name).events(), "dask.graph.tasks")
    capped = chunks[0]
    assert len(capped["tasks"]) == 10 and capped["tasks_total"] == 25
    assert capped["tasks_omitted"] == 15
    assert "tasks_omitted" not in chunks[-1] and chunks[-1]["tasks_total"] == 1


@gen_test(timeout=60)
async def test_one_task_with_more_dependencies_than_a_chunk_holds_lists_what_fits(
    memory_store_name: str,
) -> None:
    most = listed_dependencies(20_000)
    graph: dict[str, Any] = {f"part-{i}": (inc, i) for i in range(most + 5)}
    graph["combine"] = (sum, list(graph))
    plugin = plugin_for(memory_store_name, **{"events.max-event-bytes": 20_000})
    async with scheduler(plugin) as s, Worker(s.address, nthreads=1):
        async with Client(s.address, asynchronous=True) as c:
            assert await c.get(graph, "combine", sync=False) == sum(range(1, most + 6))
    events = get_store(memory_store_name).events()
    tasks = [t for d in of_type(events, "dask.graph.tasks") for t in d["tasks"]]
    (combine,) = [t for t in tasks if t["key"] == "combine"]
    assert len(combine["dependencies"]) == most
    assert combine["dependencies_omitted"] == 5


@gen_test(timeout=60)
async def test_nested_spans_arrive_as_their_tree_and_annotations_on_their_tasks(
    memory_store_name: str,
) -> None:
    plugin = plugin_for(memory_store_name)
    async with scheduler(plugin) as s, Worker(s.address, nthreads=2):
        async with Client(s.address, asynchronous=True) as c:
            with distributed.span("load"):
                with distributed.span("clean"):
                    with dask.annotate(retries=2, priority=5, owner={"team": "data"}):
                        cleaned = c.submit(inc, 1, key="cleaned")
                    other = c.submit(inc, cleaned, key="other")
                loaded = c.submit(add, cleaned, other, key="loaded")
            plain = c.submit(inc, 0, key="plain")
            await c.gather([loaded, plain])
    events = get_store(memory_store_name).events()
    spans = {d["span_id"]: d for d in of_type(events, "dask.span")}
    by_name = {tuple(d["name"]): d for d in spans.values()}
    assert set(by_name) == {("load",), ("load", "clean"), ("default",)}
    assert by_name["load",]["parent_id"] is None
    assert by_name["load", "clean"]["parent_id"] == by_name["load",]["span_id"]
    order = [e.subject for e in events if e.type == "dask.span"]
    assert order.index(by_name["load",]["span_id"]) < order.index(
        by_name["load", "clean"]["span_id"]
    )
    tasks = {t["key"]: t for g in structure(events).values() for t in g}
    assert tasks["cleaned"]["span_id"] == by_name["load", "clean"]["span_id"]
    assert tasks["other"]["span_id"] == by_name["load", "clean"]["span_id"]
    assert tasks["loaded"]["span_id"] == by_name["load",]["span_id"]
    assert tasks["plain"]["span_id"] == by_name["default",]["span_id"]
    assert tasks["cleaned"]["annotations"] == {
        "retries": 2,
        "priority": 5,
        "owner": {"team": "data"},
    }
    assert all(tasks[k]["annotations"] is None for k in ("other", "loaded", "plain"))
    # Each span once, though several submissions used it.
    assert len(order) == len(spans) == 3
    assert_valid(events)
    in_report = {tuple(s["name"]): s for s in build_report(events).summary()["spans"]}
    assert in_report["load", "clean"]["parent_id"] == by_name["load",]["span_id"]
    assert in_report["load", "clean"]["tasks"] == 2 and in_report["load",]["tasks"] == 1
    assert in_report["default",]["tasks"] == 1


@gen_test(timeout=60)
async def test_a_huge_annotation_value_is_cut_to_its_text() -> None:
    name = f"annot-{os.getpid()}-{time.monotonic_ns()}"
    plugin = plugin_for(name)
    async with scheduler(plugin) as s, Worker(s.address, nthreads=1):
        async with Client(s.address, asynchronous=True) as c:
            with dask.annotate(note="x" * 5000, ok=[1, 2]):
                await c.submit(inc, 1, key="noted")
    (task,) = [t for g in structure(get_store(name).events()).values() for t in g]
    assert task["annotations"]["ok"] == [1, 2]
    assert len(task["annotations"]["note"]) == 200 and task["annotations"]["note"].endswith("...")


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def hold(megabytes: int) -> bytes:
    return os.urandom(megabytes * 2**20)


@gen_test(timeout=90)
async def test_a_worker_under_memory_pressure_pauses_and_resumes_with_its_memory_in_metrics(
    memory_store_name: str,
) -> None:
    plugin = plugin_for(memory_store_name, **{"events.worker-metrics-interval": "100ms"})
    limit = _rss() + 400 * 2**20
    pause = (_rss() + 150 * 2**20) / limit
    settings = {
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.terminate": False,
        "distributed.worker.memory.pause": pause,
        "distributed.worker.memory.monitor-interval": "20ms",
    }
    with dask.config.set(settings):
        async with scheduler(plugin) as s, Worker(s.address, nthreads=1, memory_limit=limit) as w:
            async with Client(s.address, asynchronous=True) as c:
                big = c.submit(hold, 250, key="big")
                await big
                while s.workers[w.address].status.name != "paused":
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)  # a few metrics intervals while paused
                del big
                while s.workers[w.address].status.name != "running":
                    await asyncio.sleep(0.02)
    events = get_store(memory_store_name).events()
    statuses = [
        (d["previous"], d["status"])
        for d in of_type(events, "dask.worker.status")
        if d["address"] == w.address
    ]
    assert statuses[:3] == [("init", "running"), ("running", "paused"), ("paused", "running")]
    metrics = [d for d in of_type(events, "dask.worker.metrics") if d["address"] == w.address]
    assert len(metrics) >= 5
    assert all(d["memory_limit"] == limit for d in metrics)
    lowest = min(d["memory_process"] for d in metrics if d.get("memory_process"))
    highest = max(d["memory_process"] for d in metrics if d.get("memory_process"))
    assert highest - lowest > 200 * 2**20
    assert any(d["status"] == "paused" for d in metrics)
    assert max(d.get("memory_managed") or 0 for d in metrics) >= 250 * 2**20
    assert_valid(events)


def sleep_then(seconds: float) -> int:
    time.sleep(seconds)
    return 1


@gen_test(timeout=90)
async def test_a_killed_worker_names_what_it_was_running_and_a_retired_one_is_expected(
    memory_store_name: str,
) -> None:
    plugin = plugin_for(memory_store_name)
    async with scheduler(plugin) as s:
        async with Nanny(s.address, nthreads=1) as nanny, Worker(s.address, nthreads=1) as kept:
            async with Client(s.address, asynchronous=True) as c:
                kept_result = c.submit(inc, 1, key="kept-result", workers=[kept.address])
                await kept_result
                victim = nanny.worker_address
                running = c.submit(sleep_then, 30, key="running", workers=[victim])
                while not s.tasks.get("running") or s.tasks["running"].processing_on is None:
                    await asyncio.sleep(0.02)
                while not s.workers[victim].metrics.get("task_counts", {}).get("executing"):
                    await asyncio.sleep(0.05)
                assert nanny.process is not None and nanny.process.pid is not None
                os.kill(nanny.process.pid, signal.SIGKILL)
                while victim in s.workers:
                    await asyncio.sleep(0.02)
                await running.cancel()
                # Nothing unique left on it, so that the retirement goes ahead.
                del kept_result
                while "kept-result" in s.tasks:
                    await asyncio.sleep(0.02)
                await c.retire_workers([kept.address])
    events = get_store(memory_store_name).events()
    removed = {d["address"]: d for d in of_type(events, "dask.worker.removed")}
    killed = removed[victim]
    assert killed["expected"] is False
    assert killed["processing"] == ["running"] and killed["processing_total"] == 1
    retired = removed[kept.address]
    assert retired["expected"] is True
    assert retired["processing"] == [] and retired["lost_scattered"] == []
    closing = [d for d in of_type(events, "dask.worker.status") if d["address"] == kept.address]
    assert ("running", "closing_gracefully") in [(d["previous"], d["status"]) for d in closing]
    assert_valid(events)

    report = build_report(events)
    workers = {w["address"]: w for w in report.summary()["workers"]}
    assert workers[victim]["expected"] is False
    assert workers[victim]["processing_at_departure"] == ["running"]
    assert workers[kept.address]["expected"] is True
    statuses = [s["status"] for s in workers[kept.address]["statuses"]]
    assert statuses[:2] == ["running", "closing_gracefully"]
    page = report.to_html()
    assert "Workers that left while running tasks" in page and victim in page


def test_readers_accept_events_of_a_newer_minor_version(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from dask_eventbus import subscribe
    from dask_eventbus.cli import main
    from dask_eventbus.report import ReportBuilder

    base = {
        "specversion": "1.0",
        "source": "dask://host/Scheduler-future",
        "time": "2026-12-06T12:00:00Z",
        "datacontenttype": "application/json",
        "futureattribute": "kept or ignored",
    }
    known = {
        **base,
        "id": "r-1",
        "type": "dask.worker.added",
        "sequence": "1".zfill(20),
        "subject": "tcp://10.0.0.1:1",
        "data": {"address": "tcp://10.0.0.1:1", "nthreads": 2, "gpu_model": "from 1.9"},
    }
    future = {
        **base,
        "id": "r-2",
        "type": "dask.cluster.resized",
        "sequence": "2".zfill(20),
        "data": {"workers": 3},
    }
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in (known, future)))

    with subscribe("jsonl", path=str(path), from_beginning=True) as events:
        read = [events.poll(timeout=5), events.poll(timeout=5)]
    assert [e.type for e in read if e] == ["dask.worker.added", "dask.cluster.resized"]
    assert read[0] is not None and read[0].data["gpu_model"] == "from 1.9"

    warned: list[str] = []
    builder = ReportBuilder(warn=warned.append)
    for line in path.read_bytes().splitlines():
        builder.add_json(line)
    report = builder.report()
    assert report.skipped["unknown_type"] == 1 and len(warned) == 1
    workers = report.summary()["workers"]
    assert [w["address"] for w in workers] == ["tcp://10.0.0.1:1"]

    result = CliRunner().invoke(
        main,
        ["tail", "-b", "jsonl", "-o", f"path={path}", "--from-beginning", "--json", "-n", "2"],
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["type"] for line in result.output.splitlines()] == [
        "dask.worker.added",
        "dask.cluster.resized",
    ]


@gen_test(timeout=30)
async def test_the_metrics_timer_stops_with_the_scheduler(memory_store_name: str) -> None:
    plugin = plugin_for(memory_store_name, **{"events.worker-metrics-interval": "20ms"})
    async with scheduler(plugin) as s, Worker(s.address, nthreads=1):
        timer = plugin._metrics_callback
        assert timer is not None and timer.is_running()
        while not of_type(get_store(memory_store_name).events(), "dask.worker.metrics"):
            await asyncio.sleep(0.02)
    assert not timer.is_running() and plugin._metrics_callback is None
    await asyncio.sleep(0.1)  # several intervals: a running timer would have captured again
    events = get_store(memory_store_name).events()
    assert events[-1].type == "dask.scheduler.closing"
