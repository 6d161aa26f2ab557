"""Proof that the preload reached distributed's schedulers: what they published.

    python count_events.py REDIS_URL STREAM SCHEDULER_IDS_FILE

Reads the stream the tests' schedulers published to and fails unless every
scheduler created in the test process (the ids conftest_eventbus.py wrote)
published ``dask.scheduler.started`` and, on close, ``dask.scheduler.closing``.
Schedulers that distributed's ``cluster()`` runs in processes of their own,
and terminates, publish their start but not their close; they are counted
apart. Deletes the stream afterwards.
"""

from __future__ import annotations

import json
import sys

import redis

from dask_eventbus import subscribe


def main() -> int:
    url, stream, ids_file = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(ids_file) as f:
        created = set(json.load(f))
    started: set[str] = set()
    closing: set[str] = set()
    client = redis.Redis.from_url(url)
    try:
        total = client.xlen(stream)
        with subscribe(
            "redis", url=url, stream=stream, from_beginning=True, types=["dask.scheduler.*"]
        ) as subscription:
            while (event := subscription.poll(timeout=2.0)) is not None:
                scheduler_id = event.source.rsplit("/", 1)[-1]
                if event.type == "dask.scheduler.started":
                    started.add(scheduler_id)
                elif event.type == "dask.scheduler.closing":
                    closing.add(scheduler_id)
    finally:
        client.delete(stream)
        client.close()
    elsewhere = started - created
    print(
        f"event bus: {total} events in {stream}; of {len(created)} schedulers created in "
        f"the test process, {len(created & started)} published dask.scheduler.started and "
        f"{len(created & closing)} dask.scheduler.closing; {len(elsewhere)} more started in "
        "processes of their own"
    )
    silent = sorted(created - started) + sorted(created - closing)
    if not created or silent:
        print(f"FAILED: schedulers without their started or closing event: {silent[:10]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
