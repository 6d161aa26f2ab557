"""Raw nats-py baseline for the throughput benchmark.

The fastest idiomatic way to publish to JetStream with the same guarantee as
the backend: ``publish_async`` of every message of a batch, then wait for
all of JetStream's acknowledgements, each checked. The messages are the
backend's own records (subject, ``Nats-Msg-Id`` and ``Content-Type``
headers), made before the clock starts; the stream is made by the backend's
untimed warm-up.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats

from dask_eventbus.backends import Message
from dask_eventbus.bindings.nats import NatsRecord, to_record


def records(messages: list[Message], options: dict[str, Any]) -> list[NatsRecord]:
    return [to_record(m, options.get("subject-prefix", "dask-events")) for m in messages]


def publish_raw(prepared: list[NatsRecord], options: dict[str, Any], batch_size: int) -> None:
    asyncio.run(_publish(prepared, options, batch_size))


async def _publish(prepared: list[NatsRecord], options: dict[str, Any], batch_size: int) -> None:
    client = await nats.connect(options.get("url", "nats://localhost:4222"))
    try:
        js = client.jetstream()
        for i in range(0, len(prepared), batch_size):
            acks = [
                await js.publish_async(subject, payload, headers=headers)
                for subject, payload, headers in prepared[i : i + batch_size]
            ]
            for ack in await asyncio.gather(*acks):
                assert ack.seq
    finally:
        await client.close()


RAW = {"nats": (records, publish_raw)}
