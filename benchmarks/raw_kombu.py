"""Raw Kombu baseline for the throughput benchmark.

A plain Kombu ``Producer`` publishing the same pre-encoded bodies to the same
exchange over the same transport (``--option kombu.url=...``) with the same
delivery guarantee as the backend: on py-amqp, ``confirm_publish`` (every
publish waits for the broker's confirm); on transports that can pipeline a
batch (Redis with Kombu >= 5.7) one ``Producer.batch()`` per batch. Bodies go
out as raw bytes with an explicit content type, so Kombu serializes nothing.
Only a fixed routing key and the content type travel with each body; the
backend's per-message properties (message id, type, timestamp, app id) and
routing keys are part of what the ratio measures.

With ``--option kombu.queue=NAME`` both sides publish into that bound queue
(on Redis the only way messages are stored at all); the raw run deletes it
afterwards so that benchmark messages do not pile up.
"""

from __future__ import annotations

from typing import Any

from kombu import Connection, Exchange, Producer, Queue

CONTENT_TYPE = "application/cloudevents+json"
ROUTING_KEY = "dask.task.transition.processing.memory"


def publish_raw(bodies: list[bytes], options: dict[str, Any], batch_size: int) -> None:
    url = options.get("url", "amqp://guest:guest@localhost:5672//")
    transport_options = dict(options.get("transport-options") or {})
    with Connection(url, transport_options=transport_options) as conn:
        if conn.get_transport_cls().driver_type == "amqp":
            conn.transport_options.setdefault("confirm_publish", True)
        conn.connect()
        channel = conn.channel()
        exchange = Exchange(
            options.get("exchange", "dask-events"),
            type=options.get("exchange-type", "topic"),
            durable=options.get("durable", True),
        )(channel)
        exchange.declare()
        queue = None
        if options.get("queue"):
            queue = Queue(options["queue"], exchange, routing_key="#")(channel)
            queue.declare()
        producer = Producer(channel, exchange=exchange, auto_declare=False)
        batching = hasattr(producer, "batch") and producer.supports_batch_publish
        for i in range(0, len(bodies), batch_size):
            chunk = bodies[i : i + batch_size]
            if batching:
                with producer.batch(max_size=max(1000, 2 * len(chunk))):
                    for body in chunk:
                        producer.publish(
                            body,
                            routing_key=ROUTING_KEY,
                            content_type=CONTENT_TYPE,
                            content_encoding="utf-8",
                            delivery_mode=2,
                        )
            else:
                for body in chunk:
                    producer.publish(
                        body,
                        routing_key=ROUTING_KEY,
                        content_type=CONTENT_TYPE,
                        content_encoding="utf-8",
                        delivery_mode=2,
                    )
        if queue is not None:
            queue.delete()


RAW = {"kombu": publish_raw}
