"""End-to-end scheduler overhead: a graph of tiny tasks, per plugin configuration.

Runs a scheduler-bound workload (many tiny tasks, so the scheduler is the
bottleneck) on a LocalCluster whose scheduler (with the plugin) runs in this
process and whose two single-threaded workers are processes of their own,
alternating the configurations run by run. Prints the median wall time, the
scheduler process's CPU time and their ratios to the first configuration.
With ``--broker-process NAME`` (the name in ``/proc/<pid>/comm``, e.g.
``beam.smp`` for RabbitMQ, ``redis-server``, ``tansu``) it also prints the
CPU those processes spent during each run: on a machine the broker shares
with the cluster, that is CPU the scheduler and workers did not get.

    python benchmarks/overhead.py                       # none, noop, memory, jsonl
    python benchmarks/overhead.py -c none -c eventbus:redis --option redis.url=redis://127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import time
from collections.abc import Sequence

from common import (
    command_line,
    default_jsonl_path,
    make_plugin,
    markdown_table,
    median,
    parse_options,
)
from distributed import Client, LocalCluster

DEFAULT_CONFIGS = ["none", "noop", "eventbus:memory", "eventbus:jsonl"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def inc(x: int) -> int:
    return x + 1


def run_once(config: str, options: dict, tasks: int) -> tuple[float, float]:
    plugin = make_plugin(config, options)
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"plugins": [plugin] if plugin is not None else []},
        ) as cluster,
        Client(cluster) as client,
    ):
        client.gather(client.map(inc, range(50), key=[f"warm-{i}" for i in range(50)]))
        wall, cpu = time.perf_counter(), time.process_time()
        futures = client.map(inc, range(tasks))
        client.submit(sum, futures).result()
        return time.perf_counter() - wall, time.process_time() - cpu


def process_cpu(names: Sequence[str]) -> float:
    """CPU seconds so far of every process whose command name is in ``names``."""
    total = 0.0
    for proc in pathlib.Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() in names:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except OSError:  # the process ended meanwhile
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", help="configuration (repeatable)")
    parser.add_argument("--option", action="append", default=[], help="backend.key=value")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--broker-process", action="append", default=[], help="also report this process's CPU"
    )
    args = parser.parse_args()
    configs = args.config or DEFAULT_CONFIGS
    options = parse_options(args.option)
    default_jsonl_path(options)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    walls: dict[str, list[float]] = {c: [] for c in configs}
    cpus: dict[str, list[float]] = {c: [] for c in configs}
    brokers: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(args.repeat):
        for config in configs:
            broker_before = process_cpu(args.broker_process)
            wall, cpu = run_once(config, options, args.tasks)
            brokers[config].append(process_cpu(args.broker_process) - broker_before)
            walls[config].append(wall)
            cpus[config].append(cpu)
    base_wall, base_cpu = median(walls[configs[0]]), median(cpus[configs[0]])
    rows = [
        [
            config,
            median(walls[config]),
            median(walls[config]) / base_wall,
            median(cpus[config]),
            median(cpus[config]) / base_cpu,
            *([median(brokers[config])] if args.broker_process else []),
        ]
        for config in configs
    ]
    print(f"{args.tasks} tiny tasks, {args.repeat} alternating runs each (medians)\n")
    print(
        markdown_table(
            [
                "configuration",
                "wall s",
                f"wall ratio to {configs[0]}",
                "scheduler-process CPU s",
                f"CPU ratio to {configs[0]}",
                *([f"{', '.join(args.broker_process)} CPU s"] if args.broker_process else []),
            ],
            rows,
        )
    )
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
