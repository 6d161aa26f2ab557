"""Latency from a task transition to the broker's acknowledgement, per backend and mode.

Drives transitions through the plugin on a real scheduler at a steady rate
(moderate load: ``--rate`` events per second) for ``--seconds``, then reports
the distribution of "broker acknowledged minus scheduler saw it" as the
plugin's own delivery-latency histogram counts it (the figure exported as
``dask_eventbus_delivery_latency_seconds``): the share of events within
100 ms and the bucket that holds the 99th percentile.

    python benchmarks/latency.py                                  # jsonl, both modes
    python benchmarks/latency.py -c eventbus:redis --option redis.url=redis://127.0.0.1:6379
    python benchmarks/latency.py -c eventbus:webhook --rate 1000 --option webhook.url=http://127.0.0.1:8787/
        # after: python benchmarks/http_receiver.py 8787 &
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

import dask
from common import command_line, default_jsonl_path, make_plugin, markdown_table, parse_options
from distributed import Scheduler, Worker

from dask_eventbus import EventBusPlugin

DEFAULT_CONFIGS = ["eventbus:jsonl"]


def quantile_bound(bounds: tuple[float, ...], counts: list[int], q: float) -> float:
    """Upper bound of the bucket holding quantile ``q``."""
    target, seen = q * sum(counts), 0
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        seen += count
        if seen >= target:
            return bound
    return float("inf")


async def measure(
    config: str, mode: str, options: dict[str, dict[str, Any]], rate: int, seconds: float
) -> dict[str, float]:
    with dask.config.set({"eventbus.pipeline.mode": mode}):
        plugin = make_plugin(config, options)
    assert isinstance(plugin, EventBusPlugin)
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=1):
            ws = next(iter(s.workers.values()))
            while not plugin.stats()["published"]:
                await asyncio.sleep(0.01)
            pipeline = plugin._pipeline
            assert pipeline is not None
            before = pipeline.sink.stats.delivery_seconds.state()
            tick, per_tick = 0.01, max(1, int(rate * 0.01))
            sent, start = 0, time.monotonic()
            while time.monotonic() - start < seconds:
                for _ in range(per_tick):
                    key = f"lat-{sent}"
                    s.new_task(key, None, "released").processing_on = ws
                    plugin.transition(key, "released", "waiting", stimulus_id=f"s-{sent}")
                    sent += 1
                await asyncio.sleep(tick)
            while plugin.stats()["queued"]:
                await asyncio.sleep(0.01)
            after = pipeline.sink.stats.delivery_seconds
    counts = [a - b for a, b in zip(after.counts, before[0], strict=True)]
    within = sum(c for bound, c in zip(after.bounds, counts, strict=False) if bound <= 0.1)
    return {
        "events": sum(counts),
        "within_100ms": within / max(1, sum(counts)),
        "p50": quantile_bound(after.bounds, counts, 0.5),
        "p99": quantile_bound(after.bounds, counts, 0.99),
        "rate": sent / seconds,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", help="configuration (repeatable)")
    parser.add_argument("--mode", action="append", help="thread and/or process")
    parser.add_argument("--option", action="append", default=[], help="backend.key=value")
    parser.add_argument("--rate", type=int, default=2000, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    options = parse_options(args.option)
    default_jsonl_path(options)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    rows = []
    for config in args.config or DEFAULT_CONFIGS:
        for mode in args.mode or ["thread", "process"]:
            r = await measure(config, mode, options, args.rate, args.seconds)
            rows.append(
                [
                    config,
                    mode,
                    f"{r['rate']:,.0f}",
                    int(r["events"]),
                    f"{r['within_100ms']:.2%}",
                    f"≤ {r['p50'] * 1000:g} ms",
                    f"≤ {r['p99'] * 1000:g} ms",
                ]
            )
    print(f"{args.seconds:g} s at about {args.rate} transitions/s, default settings\n")
    header = ["configuration", "mode", "events/s", "events", "within 100 ms", "p50", "p99"]
    print(markdown_table(header, rows))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    asyncio.run(main())
