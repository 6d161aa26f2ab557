"""The seed document's RabbitMQ plugin for the overhead benchmark (``-c seed-pika``).

Dask's scheduler-plugin page shows this plugin: a ``pika.BlockingConnection``
opened in ``__init__``, a durable queue declared on it, and a ``transition``
hook that JSON-encodes ``{key, start, finish}`` and publishes it, persistent,
to that queue through the default exchange: one synchronous socket write per
transition inside the scheduler's event loop, no publisher confirms, no
reconnection. It is reproduced as written, with two benchmark necessities:
the broker URL comes from ``--option rabbitmq.url=...``, and the queue gets a
name of its own per run (``dask_task_status-<id>``) and is deleted when the
scheduler closes, after the measured part, so runs do not pile up messages.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pika
from distributed.diagnostics.plugin import SchedulerPlugin


class SeedRabbitMQPlugin(SchedulerPlugin):
    name = "seed-pika"

    def __init__(self, url: str) -> None:
        self.queue = f"dask_task_status-{uuid.uuid4().hex[:8]}"
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.queue_declare(queue=self.queue, durable=True)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        message = dict(key=str(key), start=start, finish=finish)
        self.channel.basic_publish(
            exchange="",
            routing_key=self.queue,
            body=json.dumps(message),
            properties=pika.BasicProperties(delivery_mode=2),  # make message persistent
        )

    async def close(self) -> None:
        self.channel.queue_delete(self.queue)
        self.connection.close()


def seed_pika(options: dict[str, Any]) -> SchedulerPlugin:
    return SeedRabbitMQPlugin(options.get("url", "amqp://guest:guest@localhost:5672/%2F"))


BASELINES = {"seed-pika": ("rabbitmq", seed_pika)}
