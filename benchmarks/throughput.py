"""Backend throughput against the raw broker client, side by side in one run.

Publishes the same pre-encoded CloudEvents bodies (a) through the backend's
``publish`` in batches of ``--batch-size``, exactly as the pipeline calls it,
and (b) with the raw client in its fastest idiomatic form with the same
delivery guarantee, from a ``raw_<backend>.py`` module beside this file
(``RAW = {"<backend>": publish_raw}``, where
``publish_raw(bodies, options, batch_size)`` returns once the broker has
acknowledged every body). Runs alternate; medians are reported.

    python benchmarks/throughput.py --backend redis --option redis.url=redis://127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import time
from collections.abc import Callable
from typing import Any

from common import command_line, markdown_table, median, parse_options

from dask_eventbus import create_backend
from dask_eventbus.backends import Message
from dask_eventbus.events import Normalizer, transition_record
from dask_eventbus.pipeline import build_messages

RawPublish = Callable[[list[bytes], dict[str, Any], int], None]


def raw_publishers() -> dict[str, RawPublish]:
    found: dict[str, RawPublish] = {}
    for path in sorted(pathlib.Path(__file__).parent.glob("raw_*.py")):
        found.update(importlib.import_module(path.stem).RAW)
    return found


def messages(count: int) -> list[Message]:
    normalizer = Normalizer("/benchmarks/throughput", "bench")
    now = time.time()
    extra = {
        "worker": "tcp://127.0.0.1:40000",
        "nbytes": 28,
        "typename": "int",
        "startstops": [{"action": "compute", "start": now, "stop": now + 0.001}],
    }
    records = [
        transition_record(
            i, f"inc-{i:032x}", "processing", "memory", f"s-{i}", extra=extra, timestamp=now
        )
        for i in range(1, count + 1)
    ]
    return build_messages(normalizer, records)


def through_backend(
    backend_name: str, options: dict[str, Any], batch: list[Message], size: int
) -> float:
    backend = create_backend(backend_name, options)
    backend.open()
    try:
        start = time.perf_counter()
        for i in range(0, len(batch), size):
            backend.publish(batch[i : i + size])
        return time.perf_counter() - start
    finally:
        backend.close()


def through_raw(raw: RawPublish, options: dict[str, Any], bodies: list[bytes], size: int) -> float:
    start = time.perf_counter()
    raw(bodies, options, size)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", required=True)
    parser.add_argument("--option", action="append", default=[], help="backend.key=value")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    options = parse_options(args.option)
    raws = raw_publishers()
    batch = messages(args.events)
    bodies = [m.body for m in batch]
    rows = []
    for name in args.backend:
        if name not in raws:
            raise SystemExit(f"no raw_{name}.py baseline; have: {', '.join(raws) or 'none'}")
        ours, raw = [], []
        for _ in range(args.repeat):
            ours.append(through_backend(name, options.get(name, {}), batch, args.batch_size))
            raw.append(through_raw(raws[name], options.get(name, {}), bodies, args.batch_size))
        ours_rate, raw_rate = args.events / median(ours), args.events / median(raw)
        rows.append([name, ours_rate, raw_rate, ours_rate / raw_rate])
    print(
        f"{args.events} events of {len(bodies[0])} bytes, batches of {args.batch_size}, "
        f"{args.repeat} alternating runs (medians)\n"
    )
    print(markdown_table(["backend", "backend events/s", "raw client events/s", "ratio"], rows))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
