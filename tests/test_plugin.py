"""EventBusPlugin against real schedulers, workers and clients."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test

from dask_eventbus import EventBusPlugin
from dask_eventbus.backends.memory import get_store
from dask_eventbus.events import key_to_str
from dask_eventbus.testing import run_workload
from dask_eventbus.testing.workload import inc

pytestmark = pytest.mark.timeout(120)


@gen_test(timeout=90)
async def test_every_transition_arrives_in_order_with_the_scheduler_log(
    memory_store_name: str,
) -> None:
    plugin = EventBusPlugin("memory", name=memory_store_name)
    transition_log = await run_workload(plugin)
    events = get_store(memory_store_name).events()

    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    assert len({e.id for e in events}) == len(events)
    assert len({e.source for e in events}) == 1

    transitions = [e.data for e in events if e.type == "dask.task.transition"]
    expected = [(key_to_str(t.key), t.start, t.finish, t.stimulus_id) for t in transition_log]
    got = [(d["key"], d["start"], d["finish"], d["stimulus_id"]) for d in transitions]
    assert got == expected

    by_type = Counter(e.type for e in events)
    assert by_type["dask.scheduler.started"] == 1
    assert by_type["dask.scheduler.closing"] == 1
    assert events[0].type == "dask.scheduler.started"
    assert events[-1].type == "dask.scheduler.closing"
    assert by_type["dask.worker.added"] == 2 and by_type["dask.worker.removed"] == 2
    assert by_type["dask.client.added"] >= 1 and by_type["dask.client.removed"] >= 1
    assert by_type["dask.graph.updated"] >= 5

    finished = [d for d in transitions if d["start"] == "processing" and d["finish"] == "memory"]
    assert all(d["worker"] and d["nbytes"] > 0 and d["typename"] for d in finished)
    assert all(any(s["action"] == "compute" for s in d["startstops"]) for d in finished)
    sent = [d for d in transitions if d["finish"] == "processing"]
    assert sent and all(d["worker"] for d in sent)

    erred = {d["key"]: d for d in transitions if d["finish"] == "erred"}
    assert "deliberate failure" in erred["bad"]["exception"]
    assert "raise ValueError" in erred["bad"]["traceback"]
    assert erred["downstream"]["cause"] == "bad"
    assert "deliberate failure" in erred["downstream"]["exception"]

    retried = [d for d in transitions if d["key"] == "retried"]
    assert [d["finish"] for d in retried].count("processing") == 2
    recomputed = [d for d in transitions if d["key"] == "a" and d["finish"] == "memory"]
    assert len(recomputed) == 2
    tuple_key = [d for d in transitions if d["key"] == "('total', 0)"]
    assert tuple_key and tuple_key[0]["group"] == "total"

    late = [e.data for e in events if e.type == "dask.worker.added"]
    assert any(d["name"] == "late-joiner" and d["nthreads"] == 1 for d in late)
    removed = [e.data for e in events if e.type == "dask.worker.removed"]
    assert all(d["stimulus_id"] for d in removed)
    assert any(d["name"] == "late-joiner" for d in removed)

    logs = [e.data for e in events if e.type == "dask.log" and e.subject == "user-topic"]
    assert logs == [{"topic": "user-topic", "message": {"note": "hello", "values": [1, 2.5, None]}}]

    graphs = [e.data for e in events if e.type == "dask.graph.updated"]
    total = next(g for g in graphs if g["keys"] == ["('total', 0)"])
    assert total["tasks"] == 3 and total["prefixes"] == {"total": 1, "b": 1, "a": 1}
    assert total["keys_total"] == 1 and total["client"].startswith("Client-")
    started = events[0].data
    assert started["versions"]["dask_eventbus"]
    assert started["scheduler_id"].startswith("Scheduler-")


@gen_test(timeout=60)
async def test_register_plugin_through_a_client(memory_store_name: str) -> None:
    plugin = EventBusPlugin("memory", name=memory_store_name)
    pickle.loads(pickle.dumps(plugin))  # travels to the scheduler pickled
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0") as s:
        async with Worker(s.address, nthreads=1):
            async with Client(s.address, asynchronous=True) as c:
                await c.register_plugin(plugin)
                assert await c.submit(inc, 41, key="x") == 42
                stats = await c.scheduler.eventbus_stats()
                assert stats["started"] and stats["backend"] == "memory"
                assert stats["dropped"] == 0
    events = get_store(memory_store_name).events()
    finished = [
        e for e in events if e.type == "dask.task.transition" and e.data["finish"] == "memory"
    ]
    assert [e.subject for e in finished] == ["x"]
    assert events[-1].type == "dask.scheduler.closing"


def test_filters_by_event_type_and_transition(memory_store_name: str) -> None:
    import asyncio

    import dask

    config = {
        "eventbus.events.exclude": ["dask.log", "dask.client.*"],
        "eventbus.transitions.include": ["*->memory", "*->erred"],
    }
    with dask.config.set(config):
        plugin = EventBusPlugin("memory", name=memory_store_name)
    asyncio.run(run_workload(plugin))
    events = get_store(memory_store_name).events()
    types = {e.type for e in events}
    assert "dask.log" not in types and "dask.client.added" not in types
    assert "dask.worker.added" in types
    finishes = {e.data["finish"] for e in events if e.type == "dask.task.transition"}
    assert finishes == {"memory", "erred"}
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))


def test_options_override_config(tmp_path) -> None:
    import dask

    with dask.config.set({"eventbus.backends.jsonl.path": str(tmp_path / "config.jsonl")}):
        assert EventBusPlugin().backend.path == str(tmp_path / "config.jsonl")
        plugin = EventBusPlugin(path=str(tmp_path / "kwarg.jsonl"))
    assert plugin.backend.path == str(tmp_path / "kwarg.jsonl")
    assert plugin.stats() == {"backend": "jsonl", "started": False}
