"""What the event bus adds to starting and closing a scheduler.

Starts and closes a scheduler (no workers, no tasks) again and again in this
process, alternating the plugin configurations, and prints per start+close
the median wall time, its difference to the first configuration (by default
a no-op plugin), how much of it the start took (making the plugin included),
the CPU of this process, and the CPU of the processes it started and reaped
meanwhile: in process mode, the publisher process, from interpreter start to
exit (it starts, publishes the scheduler's started and closing events,
flushes and exits). Every scheduler in a notebook's ``LocalCluster``, an
adaptive deployment or a test suite pays this.

    python benchmarks/start_close.py         # noop, jsonl, redis (their default modes)
    python benchmarks/start_close.py -c noop -c eventbus:kafka \\
        --option 'kafka.config={bootstrap.servers: "127.0.0.1:19092"}'
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import time

from common import (
    command_line,
    default_jsonl_path,
    make_plugin,
    markdown_table,
    median,
    parse_options,
)
from distributed import Scheduler

DEFAULT_CONFIGS = ["noop", "eventbus:jsonl", "eventbus:redis"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def start_and_close(config: str, options: dict) -> tuple[float, float, float, float]:
    """Wall, this process's CPU, reaped children's CPU and the start's wall
    of one start+close (the plugin is made in the start)."""
    wall, cpu, child = time.perf_counter(), time.process_time(), children_cpu()
    plugin = make_plugin(config, options)
    async with Scheduler(
        host="127.0.0.1",
        port=0,
        dashboard=False,
        plugins=[plugin] if plugin is not None else [],
    ):
        started = time.perf_counter() - wall
    return time.perf_counter() - wall, time.process_time() - cpu, children_cpu() - child, started


async def run(configs: list[str], options: dict, repeat: int) -> dict[str, list[tuple]]:
    results: dict[str, list[tuple]] = {c: [] for c in configs}
    for config in configs:  # warm up: imports, first connections
        await start_and_close(config, options)
    for _ in range(repeat):
        for config in configs:
            results[config].append(await start_and_close(config, options))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", help="configuration (repeatable)")
    parser.add_argument("--option", action="append", default=[], help="backend.key=value")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    configs = args.config or DEFAULT_CONFIGS
    options = parse_options(args.option)
    default_jsonl_path(options)
    options.setdefault("redis", {}).setdefault("stream", "dask-eventbus-bench-start-close")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    results = asyncio.run(run(configs, options, args.repeat))
    medians = {c: [median([r[i] for r in results[c]]) for i in range(4)] for c in configs}
    base = medians[configs[0]][0]
    rows = [
        [
            config,
            wall * 1000,
            (wall - base) * 1000,
            started * 1000,
            cpu * 1000,
            child * 1000,
            max(r[2] for r in results[config]) * 1000,
        ]
        for config, (wall, cpu, child, started) in medians.items()
    ]
    print(f"scheduler start+close, no workers; {args.repeat} alternating runs each (medians)\n")
    print(
        markdown_table(
            [
                "configuration",
                "wall ms",
                f"wall ms more than {configs[0]}",
                "of which start ms",
                "this process's CPU ms",
                "publisher process CPU ms",
                "its max ms",
            ],
            rows,
        )
    )
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
