"""How ``dask-eventbus top`` keeps up: ingest throughput while it draws, and memory.

Uses the realistic stream of ``report_scale.py`` (the plugin's own normalizer
and encoder: graphs of load/process/combine tasks, failures, a worker
leaving, log events), with small graphs so that thousands of computations
finish and are folded into totals.

1. Throughput: a JSON Lines file of ``--events`` events is replayed at once
   (``--speed 0``) by the real app, headless at 120x40 and redrawing every
   half second, and timed from start to the end of the input. Side by side,
   the baseline: the shared EventReader alone decoding the same file. The
   ratio says what top's model and drawing cost on top of reading.
2. Memory: ``--memory-events`` events (default 10 million) are generated on
   the fly and folded into top's model without a file; the resident memory
   is sampled every million events. Bounded means flat after warm-up.

    python benchmarks/top_scale.py
    python benchmarks/top_scale.py --events 300000 --memory-events 2000000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from report_scale import Run, generate

from dask_eventbus.consume.inputs import FileInput
from dask_eventbus.consume.reader import EventReader
from dask_eventbus.messages import build_messages
from dask_eventbus.normalize import Normalizer
from dask_eventbus.top.app import TopApp
from dask_eventbus.top.ingest import Ingest
from dask_eventbus.top.model import TopModel

TARGET_RATE = 50_000


def reader_alone(path: Path) -> tuple[int, float]:
    reader = EventReader(consumer="benchmark")
    source = FileInput(path)
    started = time.perf_counter()
    events = 0
    while (bodies := source.read(2048)) is not None:
        for body in bodies:
            events += len(reader.events(body))
    source.close()
    return events, time.perf_counter() - started


def top_headless(path: Path) -> tuple[int, float, int]:
    """Events, seconds to the end of the input, and redraws meanwhile."""

    async def run() -> tuple[int, float, int]:
        model = TopModel()
        ingest = Ingest(model, FileInput(path))
        app = TopApp(model, ingest)
        async with app.run_test(size=(120, 40)) as pilot:
            started = time.perf_counter()
            while not ingest.ended:
                await asyncio.sleep(0.01)
            seconds = time.perf_counter() - started
            redraws = app.refreshes
            await pilot.pause()
        return model.applied, seconds, redraws

    return asyncio.run(run())


class Generated:
    """An input of generated message bodies (no file), as FileInput reads them."""

    def __init__(self, events: int, graph_size: int) -> None:
        self._batches = self._bodies(events, graph_size)
        self._pending: list[bytes] = []

    @staticmethod
    def _bodies(events: int, graph_size: int) -> Iterator[list[bytes]]:
        run = Run(16, 4, seed=17)
        normalizer = Normalizer("dask://bench/Scheduler-bench", "benchrun")
        for records in run.records(events, graph_size):
            yield [m.body for m in build_messages(normalizer, records)]

    def read(self, limit: int, timeout: float | None = None) -> list[bytes] | None:
        while len(self._pending) < limit:
            batch = next(self._batches, None)
            if batch is None:
                break
            self._pending.extend(batch)
        if not self._pending:
            return None
        taken, self._pending = self._pending[:limit], self._pending[limit:]
        return taken

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


def memory(events: int, graph_size: int) -> list[tuple[int, int, int, int]]:
    """(events, RSS bytes, tasks held, computations kept) every million events."""
    model = TopModel()
    source = Generated(events, graph_size)
    process = psutil.Process()
    samples = []
    step = 1_000_000
    mark = step
    while (bodies := source.read(4096)) is not None:
        for body in bodies:
            model.feed(body)
        if model.applied >= mark:
            gc.collect()
            state = next(iter(model.sources.values()))
            samples.append(
                (
                    model.applied,
                    process.memory_info().rss,
                    len(state.tasks),
                    len(state.computations),
                )
            )
            print(
                f"  {model.applied:>11,} events: RSS {samples[-1][1] / 2**20:,.0f} MiB, "
                f"{samples[-1][2]:,} tasks held, {samples[-1][3]} computations kept "
                f"({state.folded.computations:,} folded)",
                flush=True,
            )
            mark += step
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--memory-events", type=int, default=10_000_000)
    parser.add_argument("--graph-size", type=int, default=2_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="top-scale-") as folder:
        path = Path(folder) / "events.jsonl"
        count = generate(path, args.events, 16, 4, args.graph_size)
        print(f"Generated {count:,} events ({path.stat().st_size / 1e6:,.0f} MB)")
        base_events, base_seconds = reader_alone(path)
        top_events, top_seconds, redraws = top_headless(path)
        base_events2, base_seconds2 = reader_alone(path)
    assert base_events == top_events == base_events2
    baseline = min(base_seconds, base_seconds2)
    rate = top_events / top_seconds

    print(f"\nMemory over {args.memory_events:,} generated events:", flush=True)
    samples = memory(args.memory_events, args.graph_size)

    print(
        f"\n$ python benchmarks/top_scale.py --events {args.events} "
        f"--memory-events {args.memory_events} --graph-size {args.graph_size}"
    )
    print("| measure | value | target |\n| --- | --- | --- |")
    print(f"| reader alone (baseline) | {base_events / baseline:,.0f} events/s | |")
    print(
        f"| top, headless app drawing | {rate:,.0f} events/s "
        f"({redraws} redraws in {top_seconds:.1f} s; {baseline / top_seconds:.2f}x the reader) "
        f"| ≥ {TARGET_RATE:,} events/s |"
    )
    if samples:
        first, last = samples[0], samples[-1]
        peak = max(s[1] for s in samples)
        print(
            f"| RSS at {first[0]:,} / {last[0]:,} events | {first[1] / 2**20:,.0f} / "
            f"{last[1] / 2**20:,.0f} MiB (peak {peak / 2**20:,.0f}) | flat |"
        )
    within = rate >= TARGET_RATE and (not samples or samples[-1][1] < samples[0][1] * 1.25)
    print("within the targets" if within else "OVER A TARGET")


if __name__ == "__main__":
    main()
