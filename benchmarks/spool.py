"""The spool's write rate, and its drain to a broker against the backend's own throughput.

(a) Write: ``Spool.append`` of pre-built batches of ``--batch-size`` messages
(the publisher's work per batch once a spool is configured), with the sync
thread fsyncing every second as configured by default; events per second.

(b) Drain: the same events are put in a spool untimed, then a
:class:`~dask_eventbus.spooling.SpoolingPublisher` delivers them from disk to
the backend (read, decode, ``publish``, checkpoint, delete segments); against
(c) the backend's ``publish`` of the same batches from memory, as
``throughput.py`` measures it. Runs alternate; medians are reported.

    python benchmarks/spool.py --backend redis --option redis.url=redis://127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from common import command_line, markdown_table, median, parse_options
from throughput import messages, through_backend

from dask_eventbus import create_backend
from dask_eventbus.backends import Message
from dask_eventbus.config import load_settings
from dask_eventbus.normalize import Normalizer
from dask_eventbus.spool import Spool
from dask_eventbus.spooling import SpoolingPublisher


def write(batches: list[list[Message]], directory: str) -> float:
    spool = Spool(directory, max_bytes=8 << 30, segment_bytes=64 << 20, sync_interval=1.0)
    try:
        start = time.perf_counter()
        for batch in batches:
            assert spool.append(batch)
        spool.sync()
        return time.perf_counter() - start
    finally:
        spool.close()


def drain(name: str, options: dict, batches: list[list[Message]], directory: str) -> float:
    write(batches, directory)
    settings = load_settings({"spool": {"path": directory, "max-bytes": "8GiB"}})
    publisher = SpoolingPublisher(
        create_backend(name, options), Normalizer("/benchmarks/spool", "bench"), settings
    )
    try:
        start = time.perf_counter()
        publisher.start()
        while publisher.spool.events:
            time.sleep(0.001)
        return time.perf_counter() - start
    finally:
        publisher.begin_close(time.monotonic() + 10)
        publisher.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="redis")
    parser.add_argument("--option", action="append", default=[], help="backend.key=value")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    options = parse_options(args.option).get(args.backend, {})
    batch = messages(args.events)
    size = args.batch_size
    batches = [batch[i : i + size] for i in range(0, len(batch), size)]
    writes, drains, directs = [], [], []
    through_backend(args.backend, options, batch[:size], size)  # creates what it publishes to
    for _ in range(args.repeat):
        for side in ("write", "drain", "direct"):
            directory = tempfile.mkdtemp(prefix="dask-eventbus-spool-bench-")
            try:
                if side == "write":
                    writes.append(write(batches, directory))
                elif side == "drain":
                    drains.append(drain(args.backend, options, batches, directory))
                else:
                    directs.append(through_backend(args.backend, options, batch, size))
            finally:
                shutil.rmtree(directory)
    n = args.events
    write_rate, drain_rate, direct_rate = (
        n / median(writes),
        n / median(drains),
        n / median(directs),
    )
    print(
        f"{n} events of {len(batch[0].body)} bytes, batches of {size}, "
        f"{args.repeat} alternating runs (medians)\n"
    )
    header = ["spool write events/s", f"drain to {args.backend} events/s",
              f"{args.backend} backend events/s", "drain / backend"]  # fmt: skip
    print(markdown_table(header, [[write_rate, drain_rate, direct_rate, drain_rate / direct_rate]]))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
