"""Scheduler-process CPU per event: the plugin's whole cost, per configuration.

Starts a real scheduler with one worker, creates task states for N/4 keys in
``scheduler.tasks`` and drives each key through released->waiting,
waiting->processing, processing->memory (with the kwargs a finished task
brings) and memory->released by calling the plugin's ``transition`` hook the
way the scheduler does. For EventBusPlugin it then waits until the backend
has acknowledged every event, so the figure includes capture, normalization,
encoding and publishing (all threads of the process). A second column leaves
out what the event loop thread spends while a slow broker drains (the idle
scheduler's and worker's periodic work); the event bus works on its own
threads then. Configurations run alternately; medians are reported.

    python benchmarks/event_cost.py                       # noop, deque, memory, jsonl
    python benchmarks/event_cost.py -c noop -c eventbus:redis --option redis.url=redis://127.0.0.1:6379
    python benchmarks/event_cost.py -c noop -c eventbus:webhook --option webhook.url=http://127.0.0.1:8787/
        # after: python benchmarks/http_receiver.py 8787 &
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import logging
import time
from collections import deque
from typing import Any

import dask
from common import (
    command_line,
    default_jsonl_path,
    make_plugin,
    markdown_table,
    median,
    parse_options,
)
from distributed import Scheduler, Worker
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_eventbus import EventBusPlugin

DEFAULT_CONFIGS = ["noop", "deque", "eventbus:memory", "eventbus:jsonl"]


class DequePlugin(SchedulerPlugin):
    """Appends a small tuple per transition: the cost of capture alone."""

    name = "deque"

    def __init__(self) -> None:
        self.buffer: deque[tuple[Any, ...]] = deque(maxlen=1_000_000)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        self.buffer.append((key, start, finish, time.time(), kwargs))


CYCLE = [("released", "waiting"), ("waiting", "processing"), ("processing", "memory"),
         ("memory", "released")]  # fmt: skip


def plugin_for(config: str, options: dict[str, dict[str, Any]]) -> SchedulerPlugin:
    if config == "deque":
        return DequePlugin()
    plugin = make_plugin(config, options)
    assert plugin is not None, "event_cost needs a plugin; 'none' has nothing to call"
    return plugin


async def measure(
    config: str, options: dict[str, dict[str, Any]], events: int
) -> tuple[float, float, float]:
    plugin = plugin_for(config, options)
    keys = [f"inc-{i:032x}" for i in range(events // len(CYCLE))]
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=1):
            ws = next(iter(s.workers.values()))
            for key in keys:
                s.new_task(key, None, "released").processing_on = ws
            counter = itertools.count()
            published_before = 0
            if isinstance(plugin, EventBusPlugin):
                # Measure the steady state: the backend (or publisher process) is up.
                while not (published_before := plugin.stats()["published"]):
                    await asyncio.sleep(0.01)
            # Garbage the previous configuration left must not be collected
            # on this one's clock.
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            for key in keys:
                for start, finish in CYCLE:
                    kwargs: dict[str, Any] = {}
                    if finish == "memory":
                        now = time.time()
                        kwargs = {
                            "worker": ws.address,
                            "nbytes": 28,
                            "type": b"\x80\x04\x95int",
                            "typename": "int",
                            "startstops": [{"action": "compute", "start": now, "stop": now}],
                            "thread": 1,
                            "metadata": {},
                            "run_id": next(counter),
                        }
                    plugin.transition(
                        key, start, finish, stimulus_id=f"bench-{next(counter)}", **kwargs
                    )
            # While a slow broker drains, the event loop (this thread) runs the
            # idle scheduler's and worker's periodic work: not the event bus's
            # cost, which is all on the event bus's own threads by then.
            draining = time.thread_time()
            if isinstance(plugin, EventBusPlugin):
                target = published_before + len(keys) * len(CYCLE)
                delivery = plugin._pipeline.sink  # type: ignore[union-attr]
                while delivery.stats.published < target:
                    await asyncio.sleep(0.02)
            idle = time.thread_time() - draining
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            for key in keys:
                s.tasks[key].processing_on = None
    return cpu, cpu - idle, wall


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", help="configuration (repeatable)")
    parser.add_argument("--option", action="append", default=[], help="backend.key=value")
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    configs = args.config or DEFAULT_CONFIGS
    options = parse_options(args.option)
    default_jsonl_path(options)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    # The worker shares this process only to give tasks a processing_on; its
    # profiler thread would charge worker CPU to whichever configuration waits
    # longest for its broker.
    dask.config.set({"distributed.worker.profile.enabled": False})
    cpus: dict[str, list[float]] = {c: [] for c in configs}
    nets: dict[str, list[float]] = {c: [] for c in configs}
    walls: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(args.repeat):
        for config in configs:
            cpu, net, wall = await measure(config, options, args.events)
            cpus[config].append(cpu)
            nets[config].append(net)
            walls[config].append(wall)
    n = args.events // len(CYCLE) * len(CYCLE)
    base = median(nets[configs[0]])
    rows = [
        [
            config,
            median(cpus[config]) / n * 1e6,
            median(nets[config]) / n * 1e6,
            median(nets[config]) / base,
            n / median(walls[config]),
        ]
        for config in configs
    ]
    print(f"{n} transitions per run, {args.repeat} alternating runs (medians)\n")
    header = [
        "configuration",
        "process CPU µs/event",
        "less the event loop while draining",
        f"ratio to {configs[0]}",
        "events/s (wall)",
    ]
    print(markdown_table(header, rows))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    asyncio.run(main())
