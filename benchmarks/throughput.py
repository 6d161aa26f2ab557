"""Backend throughput against the raw broker client, side by side in one run.

Publishes the same pre-encoded CloudEvents bodies (a) through the backend's
``publish`` in batches of ``--batch-size``, exactly as the pipeline calls it,
and (b) with the raw client in its fastest idiomatic form with the same
delivery guarantee, from a ``raw_<backend>.py`` module beside this file
(``RAW = {"<backend>": publish_raw}``, where
``publish_raw(bodies, options, batch_size)`` returns once the broker has
acknowledged every body). A module may add variants named
``<backend>-<variant>`` as ``(prepare, publish_raw)`` pairs:
``prepare(messages, options)`` turns the messages into what that
``publish_raw`` takes, before the clock starts (e.g. records with the same
key and headers as the backend's). Each variant is a row of its own. Runs
alternate, each run starting with a different side; medians are reported.

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
from dask_eventbus.messages import build_messages
from dask_eventbus.normalize import Normalizer
from dask_eventbus.records import TransitionRecord

RawPublish = Callable[[Any, dict[str, Any], int], None]
Prepare = Callable[[list[Message], dict[str, Any]], Any]


def bodies_of(batch: list[Message], options: dict[str, Any]) -> list[bytes]:
    return [m.body for m in batch]


def raw_publishers() -> dict[str, tuple[Prepare, RawPublish]]:
    found: dict[str, tuple[Prepare, RawPublish]] = {}
    for path in sorted(pathlib.Path(__file__).parent.glob("raw_*.py")):
        for name, entry in importlib.import_module(path.stem).RAW.items():
            found[name] = entry if isinstance(entry, tuple) else (bodies_of, entry)
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
        TransitionRecord(
            i,
            now,
            f"inc-{i:032x}",
            "processing",
            "memory",
            f"s-{i}",
            extra=extra,
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
        # Untimed: a connection's set-up (e.g. Kafka's idempotent producer id)
        # is not what this measures; the pipeline keeps its backend open.
        backend.publish(batch[:size])
        start = time.perf_counter()
        for i in range(0, len(batch), size):
            backend.publish(batch[i : i + size])
        return time.perf_counter() - start
    finally:
        backend.close()


def through_raw(raw: RawPublish, options: dict[str, Any], prepared: Any, size: int) -> float:
    start = time.perf_counter()
    raw(prepared, options, size)
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
    rows = []
    for name in args.backend:
        variants = [raw for raw in raws if raw == name or raw.startswith(f"{name}-")]
        if not variants:
            raise SystemExit(f"no raw_{name}.py baseline; have: {', '.join(raws) or 'none'}")
        prepared = {raw: raws[raw][0](batch, options.get(name, {})) for raw in variants}
        ours: list[float] = []
        raw_times: dict[str, list[float]] = {raw: [] for raw in variants}
        # The backend first, as it creates what it publishes to; the raw
        # clients keep their connections open: set them up untimed.
        through_backend(name, options.get(name, {}), batch[: args.batch_size], args.batch_size)
        for raw in variants:
            warm_up = prepared[raw][: args.batch_size]
            through_raw(raws[raw][1], options.get(name, {}), warm_up, args.batch_size)
        sides = [None, *variants]
        for run in range(args.repeat):
            # Each run starts with a different side: a broker that slows as
            # it fills up (Tansu keeps everything in memory) favours none.
            for side in sides[run % len(sides) :] + sides[: run % len(sides)]:
                if side is None:
                    ours.append(
                        through_backend(name, options.get(name, {}), batch, args.batch_size)
                    )
                    continue
                publish, inputs = raws[side][1], prepared[side]
                elapsed = through_raw(publish, options.get(name, {}), inputs, args.batch_size)
                raw_times[side].append(elapsed)
        ours_rate = args.events / median(ours)
        for raw in variants:
            raw_rate = args.events / median(raw_times[raw])
            rows.append([name, raw, ours_rate, raw_rate, ours_rate / raw_rate])
    print(
        f"{args.events} events of {len(batch[0].body)} bytes, batches of {args.batch_size}, "
        f"{args.repeat} alternating runs (medians)\n"
    )
    header = ["backend", "raw client", "backend events/s", "raw client events/s", "ratio"]
    print(markdown_table(header, rows))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
