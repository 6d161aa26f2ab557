"""Record the event stream the ``top`` tests replay: two real clusters at once.

    python tests/record_top.py            # writes tests/data/top-two-clusters.jsonl.gz

Cluster "etl" (two worker processes behind nannies): 120 ``load`` tasks and
60 ``clean`` tasks reach memory; ``parse-0`` and ``parse-1`` fail,
``merge-0`` depends on ``parse-0`` and ``publish-0`` on ``merge-0``, so both
fail with it; one worker pauses and resumes; the other is killed (SIGKILL)
while running ``slow-0`` and the nanny brings up a new one; then the
cluster closes. Cluster "ml" (three threads in-process) runs ``fit`` tasks
and is recorded while a second computation of ``score`` tasks is half done,
so its stream ends with work in progress and no closing event.

The events of both are merged in time order into one JSON Lines file, as a
shared bus would hold them. Recorded once and committed: the tests' snapshots
are of this file.
"""

from __future__ import annotations

import gzip
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import dask.config
from distributed import Client, LocalCluster, wait
from distributed.core import Status

from dask_eventbus import EventBusPlugin
from dask_eventbus.backends.memory import drop_store, get_store
from dask_eventbus.events import Event

OUT = Path(__file__).parent / "data" / "top-two-clusters.jsonl.gz"


def load(i: int) -> int:
    time.sleep(0.01)
    return i


def clean(x: int) -> int:
    time.sleep(0.02)
    return x * 2


def parse(i: int) -> int:
    raise ValueError(f"bad record {i}: expected 3 fields, got 2")


def merge(x: int) -> int:
    return x


def publish(x: int) -> int:
    return x


def slow(seconds: float) -> int:
    time.sleep(seconds)
    return 1


def fit(i: int) -> int:
    time.sleep(0.05)
    return i


def score(i: int) -> int:
    time.sleep(0.8)
    return i


def set_status(name: str, dask_worker=None) -> None:  # type: ignore[no-untyped-def]
    # What the memory monitor does when a worker passes its pause threshold.
    dask_worker.status = Status[name]


def plugin(store: str, source: str) -> EventBusPlugin:
    settings = {"eventbus.source": source, "eventbus.events.worker-metrics-interval": "500ms"}
    with dask.config.set(settings):
        return EventBusPlugin("memory", name=store)


def run_etl(store: str) -> None:
    # No memory monitor to undo the pause: the workers read this config.
    with (
        dask.config.set({"distributed.worker.memory.pause": False}),
        LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"plugins": [plugin(store, "dask://etl-host/etl")]},
        ) as cluster,
        Client(cluster) as client,
    ):
        loads = client.map(load, range(120), key=[f"load-{i}" for i in range(120)])
        cleans = client.map(clean, loads[:60], key=[f"clean-{i}" for i in range(60)])
        wait(cleans)
        parses = client.map(parse, range(2), key=["parse-0", "parse-1"])
        merged = client.submit(merge, parses[0], key="merge-0")
        published = client.submit(publish, merged, key="publish-0")
        wait([published, parses[1]])
        first, second = sorted(client.scheduler_info()["workers"])
        client.run(set_status, "paused", workers=[first])
        time.sleep(1.5)
        client.run(set_status, "running", workers=[first])
        victim = client.submit(slow, 30, key="slow-0", workers=[second], allow_other_workers=True)
        while not client.processing().get(second):
            time.sleep(0.05)
        time.sleep(1.2)
        pid = next(n for n in cluster.workers.values() if n.worker_address == second).process.pid
        os.kill(pid, signal.SIGKILL)
        while second in client.scheduler_info()["workers"]:
            time.sleep(0.05)
        victim.cancel()
        del loads, cleans, parses, merged, published, victim
        time.sleep(1.0)


def run_ml(store: str, stop: threading.Event, snapshot: list[Event]) -> None:
    with (
        LocalCluster(
            n_workers=3,
            threads_per_worker=1,
            processes=False,
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"plugins": [plugin(store, "dask://ml-host/ml")]},
        ) as cluster,
        Client(cluster) as client,
    ):
        fits = client.map(fit, range(90), key=[f"fit-{i}" for i in range(90)])
        wait(fits)
        scores = client.map(score, range(60), key=[f"score-{i}" for i in range(60)])
        stop.wait()
        time.sleep(0.5)  # let the publisher take the last events
        snapshot.extend(get_store(store).events())
        del fits, scores


def main() -> None:
    etl, ml = f"top-etl-{uuid.uuid4().hex[:8]}", f"top-ml-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    ml_events: list[Event] = []
    thread = threading.Thread(target=run_ml, args=(ml, stop, ml_events))
    thread.start()
    try:
        run_etl(etl)
        etl_events = get_store(etl).events()
    finally:
        stop.set()
        thread.join()
    events = sorted(etl_events + ml_events, key=lambda e: (e.time, e.source, e.sequence))
    OUT.parent.mkdir(exist_ok=True)
    with open(OUT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for event in events:
            f.write(event.to_json() + b"\n")
    drop_store(etl)
    drop_store(ml)
    print(f"wrote {len(events)} events to {OUT}")


if __name__ == "__main__":
    main()
