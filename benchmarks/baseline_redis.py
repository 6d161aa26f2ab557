"""The naive Redis plugin for the overhead benchmark (``-c naive-redis``).

What one writes after reading Dask's scheduler-plugin docs: the seed
document's RabbitMQ example moved to Redis. Each transition hook encodes a
small JSON message and does one synchronous ``XADD`` round trip inside the
scheduler's event loop.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from distributed.diagnostics.plugin import SchedulerPlugin


class NaiveRedisPlugin(SchedulerPlugin):
    name = "naive-redis"

    def __init__(self, url: str, stream: str, maxlen: int | None) -> None:
        self.client = redis.Redis.from_url(url)
        self.stream = stream
        self.maxlen = maxlen

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        message = {"key": str(key), "start": start, "finish": finish}
        self.client.xadd(
            self.stream,
            {"event": json.dumps(message)},
            maxlen=self.maxlen,
            approximate=True,
        )

    async def close(self) -> None:
        self.client.close()


def naive_redis(options: dict[str, Any]) -> SchedulerPlugin:
    return NaiveRedisPlugin(
        options.get("url", "redis://localhost:6379/0"),
        options.get("stream", "dask-events"),
        options.get("maxlen", 1_000_000) or None,
    )


BASELINES = {"naive-redis": ("redis", naive_redis)}
