"""Raw redis-py baseline for the throughput benchmark.

The fastest idiomatic way to append pre-encoded bodies to a stream with the
same guarantee as the backend: one non-transactional pipeline of ``XADD``
(trimmed with ``MAXLEN ~`` like the backend) per batch, every reply checked.
Each entry holds only the body; the backend's extra fields (type, subject,
id, sequence) are part of what the ratio measures.
"""

from __future__ import annotations

from typing import Any

import redis


def publish_raw(bodies: list[bytes], options: dict[str, Any], batch_size: int) -> None:
    client = redis.Redis.from_url(options.get("url", "redis://localhost:6379/0"))
    stream = options.get("stream", "dask-events")
    maxlen = options.get("maxlen", 1_000_000) or None
    try:
        for i in range(0, len(bodies), batch_size):
            pipe = client.pipeline(transaction=False)
            for body in bodies[i : i + batch_size]:
                pipe.xadd(stream, {"event": body}, maxlen=maxlen, approximate=True)
            replies = pipe.execute(raise_on_error=True)
            assert len(replies) == len(bodies[i : i + batch_size])
    finally:
        client.close()


RAW = {"redis": publish_raw}
