"""How ``dask-eventbus report`` copes with a large run: time, peak memory, size.

Generates a realistic JSON Lines stream (default 1,000,000 events, about
200,000 tasks) through the plugin's own normalizer and encoder: a scheduler
start, workers joining (one leaving mid-run), a client submitting graphs of
load/process/combine tasks that run on worker threads with compute and
transfer times, results released and forgotten, a few failures with their
dependents, log events, and the close. Then runs the command a user would,
``dask-eventbus report FILE -o report.html``, as a child process, and prints
its wall time, its peak resident memory and the HTML file's size against the
targets (30 s, 1 GiB, 20 MB).

    python benchmarks/report_scale.py
    python benchmarks/report_scale.py --events 200000 --keep /tmp/bench
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dask_eventbus.messages import build_messages
from dask_eventbus.normalize import Normalizer
from dask_eventbus.records import (
    ClientAddedRecord,
    ClientRemovedRecord,
    GraphRecord,
    LogRecord,
    Record,
    SchedulerClosingRecord,
    SchedulerStartedRecord,
    TransitionRecord,
    WorkerAddedRecord,
    WorkerRemovedRecord,
)

TARGET_SECONDS = 30.0
TARGET_BYTES = 1 << 30
TARGET_HTML = 20_000_000
EVENTS_PER_TASK = 5  # released->waiting->processing->memory->released->forgotten
VERSIONS = {"dask": "2026.8.0", "distributed": "2026.8.0", "dask_eventbus": "0.1.0"}


class Run:
    """A simulated cluster: worker threads with clocks, and the records it emits."""

    def __init__(self, workers: int, threads: int, seed: int) -> None:
        self.random = random.Random(seed)
        self.clock = 1_796_000_000.0
        self.sequence = 0
        self.threads: dict[str, list[float]] = {
            f"tcp://10.0.0.{i + 1}:40000": [self.clock] * threads for i in range(workers)
        }
        self.nthreads = threads

    def record(self, record_type: type[Record], when: float, *fields: Any) -> Record:
        self.sequence += 1
        return record_type(self.sequence, when, *fields)

    def transition(self, when: float, key: str, start: str, finish: str, **kw: Any) -> Record:
        self.sequence += 1
        prefix = key.split("-", 1)[0]
        return TransitionRecord(
            self.sequence,
            when,
            key,
            start,
            finish,
            f"{finish}-{when:.6f}",
            group=prefix,
            prefix=prefix,
            **kw,
        )

    def worker_info(self, address: str) -> dict[str, Any]:
        return {
            "address": address,
            "name": address.rsplit(".", 1)[-1].split(":")[0],
            "host": address.split("//")[1].split(":")[0],
            "nthreads": self.nthreads,
            "memory_limit": 16 << 30,
            "resources": {},
        }

    def graph(self, number: int, size: int) -> Iterator[tuple[float, tuple[Any, ...]]]:
        """The timed events of one graph: ``size`` tasks, a few of which fail."""
        rng = self.random
        submitted = self.clock
        loads = [f"load-{number}-{i}" for i in range(size * 2 // 5)]
        procs = [f"process-{number}-{i}" for i in range(size * 2 // 5)]
        combines = [f"combine-{number}-{i}" for i in range(size - len(loads) - len(procs))]
        keys = loads + procs + combines
        yield submitted, ("graph", keys, combines)
        done: dict[str, float] = {}
        failed: str | None = None
        for key in keys:
            prefix = key.split("-", 1)[0]
            yield submitted, ("t", key, "released", "waiting", {})
            worker = rng.choice(list(self.threads))
            clocks = self.threads[worker]
            slot = min(range(len(clocks)), key=clocks.__getitem__)
            ready = max(clocks[slot], submitted)
            dependency = None
            if prefix == "process":
                dependency = loads[int(key.rsplit("-", 1)[1]) % len(loads)]
            elif prefix == "combine":
                dependency = procs[int(key.rsplit("-", 1)[1]) % len(procs)]
            if dependency is not None:
                ready = max(ready, done.get(dependency, ready))
            yield ready - 0.002, ("t", key, "waiting", "processing", {"worker": worker})
            startstops = []
            begin = ready
            if dependency is not None and rng.random() < 0.3:
                transfer = rng.uniform(0.001, 0.02)
                startstops.append({"action": "transfer", "start": begin, "stop": begin + transfer})
                begin += transfer
            compute = rng.lognormvariate(-3.5, 0.8)
            startstops.append({"action": "compute", "start": begin, "stop": begin + compute})
            end = begin + compute
            clocks[slot] = end
            done[key] = end
            if failed is None and prefix == "process" and rng.random() < 0.002:
                failed = key
            if key == failed or (dependency == failed and failed is not None):
                cause = failed
                exc = f"ValueError('corrupt block in {failed}')"
                trace = (
                    f'  File "pipeline.py", line 42, in process\n    raise ValueError("{failed}")'
                )
                extra = {"exception_text": exc, "traceback_text": trace, "cause": cause}
                if key == failed:
                    extra["startstops"] = startstops
                    yield end, ("t", key, "processing", "erred", {"worker": worker, "extra": extra})
                else:
                    yield end, ("t", key, "processing", "erred", {"extra": extra})
                yield end + 5, ("t", key, "erred", "released", {})
                yield end + 5, ("t", key, "released", "forgotten", {})
                continue
            extra = {"nbytes": rng.randint(100, 8_000_000), "typename": "numpy.ndarray"}
            extra["startstops"] = startstops
            yield end, ("t", key, "processing", "memory", {"worker": worker, "extra": extra})
            released = end + rng.uniform(0.05, 2.0)
            yield released, ("t", key, "memory", "released", {})
            yield released, ("t", key, "released", "forgotten", {})

    def records(self, events: int, graph_size: int) -> Iterator[list[Record]]:
        """Batches of records, in time order, until about ``events`` of them."""
        client = "Client-0a1b2c3d-benchmark"
        start: list[Record] = [
            self.record(
                SchedulerStartedRecord,
                self.clock,
                "Scheduler-bench",
                "tcp://10.0.0.0:8786",
                VERSIONS,
                0,
            ),
            *(
                self.record(WorkerAddedRecord, self.clock, self.worker_info(w), None)
                for w in self.threads
            ),
            self.record(ClientAddedRecord, self.clock, client),
        ]
        yield start
        number = 0
        leaving = next(reversed(self.threads))
        while self.sequence < events - 10:
            batch = sorted(self.graph(number, graph_size), key=lambda item: item[0])
            records: list[Record] = []
            for when, item in batch:
                if self.sequence >= events - 10:
                    break
                if item[0] == "graph":
                    keys, wanted = item[1], item[2]
                    records.append(
                        self.record(
                            GraphRecord,
                            when,
                            client,
                            keys,
                            wanted[:100],
                            len(wanted),
                            f"update-graph-{when}",
                        )
                    )
                    records.append(
                        self.record(LogRecord, when, "scheduler", {"action": "update-graph"})
                    )
                else:
                    _, key, start_state, finish, kw = item
                    records.append(self.transition(when, key, start_state, finish, **kw))
            yield records
            number += 1
            self.clock = max(max(c) for c in self.threads.values()) + 0.5
            if number == 3 and leaving in self.threads:
                info = self.worker_info(leaving)
                del self.threads[leaving]
                reason = f"retire-workers-{self.clock}"
                yield [self.record(WorkerRemovedRecord, self.clock, info, reason)]
        end = self.clock + 1
        yield [
            self.record(ClientRemovedRecord, end, client),
            *(
                self.record(WorkerRemovedRecord, end, self.worker_info(w), "close")
                for w in self.threads
            ),
            self.record(
                SchedulerClosingRecord, end, "Scheduler-bench", "tcp://10.0.0.0:8786", VERSIONS, 0
            ),
        ]


def generate(path: Path, events: int, workers: int, threads: int, graph_size: int) -> int:
    """Write the stream to ``path``; returns how many events it holds."""
    run = Run(workers, threads, seed=17)
    normalizer = Normalizer("dask://bench/Scheduler-bench", "benchrun")
    written = 0
    with open(path, "wb") as f:
        for records in run.records(events, graph_size):
            messages = build_messages(normalizer, records)
            f.write(b"".join(m.body + b"\n" for m in messages))
            written += len(messages)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--graph-size", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the files in this folder.")
    args = parser.parse_args()

    folder = Path(args.keep or tempfile.mkdtemp(prefix="report-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        events_file, html = folder / "events.jsonl", folder / "report.html"
        started = time.perf_counter()
        count = generate(events_file, args.events, args.workers, args.threads, args.graph_size)
        print(
            f"Generated {count:,} events ({events_file.stat().st_size / 1e6:,.0f} MB) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        command = [
            str(Path(sys.executable).parent / "dask-eventbus"),
            "report",
            str(events_file),
            "-o",
            str(html),
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        size = html.stat().st_size
        print(f"\n$ python benchmarks/report_scale.py --events {args.events}")
        print("| measure | value | target |\n| --- | --- | --- |")
        print(f"| time | {seconds:.1f} s | ≤ {TARGET_SECONDS:.0f} s |")
        print(f"| peak memory | {peak / 2**20:,.0f} MiB | ≤ {TARGET_BYTES / 2**30:.0f} GiB |")
        print(f"| HTML size | {size / 1e6:.1f} MB | ≤ {TARGET_HTML / 1e6:.0f} MB |")
        within = seconds <= TARGET_SECONDS and peak <= TARGET_BYTES and size <= TARGET_HTML
        print("within the targets" if within else "OVER A TARGET")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
