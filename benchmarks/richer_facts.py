"""What the schema 1.1 facts cost the scheduler: graph structure and worker metrics.

Graph structure: a graph of ``--tasks`` tasks (each depending on one or two
others) is submitted with ``Client.compute`` to a scheduler without workers,
alternating the plugin with ``events.graph-structure`` off and on. Per run it
measures the wall time from the call until the scheduler holds every task
(the scheduler's handling of the submission: unpacking, ordering, the plugin
hooks) and the time spent in the plugin's ``update_graph`` hook itself.

Worker metrics: ``--workers`` worker states with real heartbeat metrics are
put into a scheduler and the plugin's metrics capture, what runs on the event
loop every ``events.worker-metrics-interval``, is timed.

    python benchmarks/richer_facts.py --tasks 100000 --runs 5 --workers 100
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from typing import Any

import dask
from common import command_line, markdown_table, median
from dask.delayed import Delayed
from distributed import Client, Scheduler, Worker

from dask_eventbus import EventBusPlugin


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def make_graph(tasks: int) -> dict[str, Any]:
    """``tasks`` tasks: leaves, pairs of them added, sums of 100 pairs, a total."""
    sums = tasks // 202
    half = sums * 100
    graph: dict[str, Any] = {f"a-{i}": (inc, i) for i in range(half)}
    graph.update({f"b-{i}": (add, f"a-{i}", f"a-{(i + 1) % half}") for i in range(half)})
    for j in range(sums):
        graph[f"s-{j}"] = (sum, [f"b-{i}" for i in range(j * 100, (j + 1) * 100)])
    graph["total"] = (sum, [f"s-{j}" for j in range(sums)])
    return graph


async def one_submission(graph: dict[str, Any], structure: bool, path: str) -> tuple[float, float]:
    """Wall time until the scheduler holds the graph, and time in the plugin's hook."""
    config = {"eventbus.events.graph-structure": structure, "eventbus.pipeline.mode": "process"}
    with dask.config.set(config):
        plugin = EventBusPlugin("jsonl", path=path)
    hook = plugin.update_graph
    spent = [0.0]

    def timed(*args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        hook(*args, **kwargs)
        spent[0] += time.perf_counter() - start

    plugin.update_graph = timed  # type: ignore[method-assign]
    async with (
        Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s,
        Client(s.address, asynchronous=True) as c,
    ):
        start = time.perf_counter()
        future = c.compute(Delayed("total", graph))
        while len(s.tasks) < len(graph):
            await asyncio.sleep(0.001)
            assert time.perf_counter() - start < 600, "the scheduler never held the graph"
        wall = time.perf_counter() - start
        await c.cancel(future)
    return wall, spent[0]


async def metrics_capture(workers: int, repeat: int) -> float:
    """Median seconds of one metrics capture over ``workers`` workers."""
    with dask.config.set({"eventbus.events.worker-metrics-interval": "1h"}):
        plugin = EventBusPlugin("memory", name="richer-facts-bench", **{"max-events": 10**6})
    async with (
        Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s,
        Worker(s.address, nthreads=1),
    ):
        while not s.workers or "memory" not in next(iter(s.workers.values())).metrics:
            await asyncio.sleep(0.05)
        (real,) = s.workers.values()
        # The same worker state under many addresses: what one capture reads per worker.
        for i in range(workers - 1):
            s.workers[f"tcp://10.0.0.{i // 250}:{1000 + i}"] = real
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            plugin._capture_worker_metrics()
            times.append(time.perf_counter() - start)
        for address in list(s.workers):
            if address != real.address:
                del s.workers[address]
    return median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=100)
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    graph = make_graph(args.tasks)
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        await one_submission(graph, False, f"{tmp}/warmup.jsonl")
        for run in range(args.runs):
            for structure in (False, True):
                results[structure].append(
                    await one_submission(graph, structure, f"{tmp}/{run}-{structure}.jsonl")
                )
    off = median([wall for wall, _ in results[False]])
    rows = []
    for structure in (False, True):
        wall = median([w for w, _ in results[structure]])
        hook = median([h for _, h in results[structure]])
        rows.append(
            [
                "on" if structure else "off",
                f"{wall * 1000:.0f}",
                f"{wall / off:.3f}",
                f"{hook * 1000:.1f}",
                f"{hook / wall * 100:.1f}%",
            ]
        )
    print(f"graph structure, {len(graph)} tasks, median of {args.runs} alternating runs:\n")
    print(
        markdown_table(
            ["structure", "submission ms", "ratio to off", "update_graph hook ms", "hook share"],
            rows,
        )
    )
    capture = await metrics_capture(args.workers, 50)
    print(f"\nworker metrics: one capture of {args.workers} workers: {capture * 1000:.3f} ms")
    print(f"\n{command_line()}")


if __name__ == "__main__":
    asyncio.run(main())
