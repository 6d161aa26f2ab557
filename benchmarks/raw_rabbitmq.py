"""Raw pika baseline for the throughput benchmark.

pika's own asynchronous-publisher pattern: a ``SelectConnection`` with
publisher confirms, its I/O loop started once per run; each batch is written
with ``basic_publish`` from a callback, and the confirm callback (counting
``multiple`` acks, failing on a nack) starts the next batch once the broker
has confirmed the whole previous one. That is the same guarantee as the
backend (every batch confirmed before the next) with nothing else in the way.
The connection, channel and exchange are set up once and reused across runs,
as the backend is opened before its clock starts.

Only the body, a fixed routing key and one shared ``BasicProperties``
(content type, persistent delivery, app id) travel with each message; the
backend's per-message properties (message id, type, timestamp) and routing
keys are part of what the ratio measures.

Both sides publish to ``--option rabbitmq.exchange=NAME`` (default
``dask-events``). Without a bound queue the broker confirms at once and drops
the messages; to measure persistence, bind a queue that stays short, e.g.
``--option rabbitmq.queue=bench --option rabbitmq.queue-max-length=10000``
(both sides then publish into it), and delete it afterwards::

    rabbitmqctl delete_queue bench
"""

from __future__ import annotations

from typing import Any

import pika
from pika.adapters.select_connection import IOLoop, SelectConnection

from dask_eventbus import create_backend
from dask_eventbus.backends.rabbitmq import RabbitMQBackend, RabbitMQOptions

ROUTING_KEY = "dask.task.transition.processing.memory"
PROPERTIES = pika.BasicProperties(
    content_type="application/cloudevents+json", delivery_mode=2, app_id="dask-eventbus"
)


class _Publisher:
    """One confirmed channel, driven by callbacks on its own I/O loop."""

    def __init__(self, backend: RabbitMQBackend) -> None:
        self.options: RabbitMQOptions = backend.options
        self.queue = backend.topology().publisher_queue()
        self.loop = IOLoop()
        self.channel: Any = None
        self.error: BaseException | None = None
        self.published = self.acked = 0
        self.bodies: list[bytes] = []
        self.batch_size = 0
        self.position = 0
        self.connection = SelectConnection(
            backend.parameters(),
            on_open_callback=lambda connection: connection.channel(
                on_open_callback=self._on_channel
            ),
            on_open_error_callback=self._fail,
            on_close_callback=self._fail,
            custom_ioloop=self.loop,
        )
        self.loop.start()  # until the exchange (and queue) are declared
        if self.error is not None:
            raise self.error

    def _fail(self, _: Any, error: BaseException) -> None:
        self.error = error
        self.loop.stop()

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._fail)
        options = self.options
        steps = [
            lambda next_: channel.confirm_delivery(self._on_confirm, callback=next_),
            lambda next_: channel.exchange_declare(
                options.exchange,
                exchange_type=options.exchange_type,
                durable=options.durable,
                callback=next_,
            ),
        ]
        queue = self.queue
        if queue is not None:
            steps += [
                lambda next_: channel.queue_declare(
                    queue.name,
                    durable=queue.durable,
                    arguments=queue.arguments or None,
                    callback=next_,
                ),
                lambda next_: channel.queue_bind(
                    queue.name, options.exchange, routing_key="#", callback=next_
                ),
            ]

        def run(_: Any = None) -> None:
            if steps:
                steps.pop(0)(run)
            else:
                self.loop.stop()

        run()

    def run(self, bodies: list[bytes], batch_size: int) -> None:
        self.bodies, self.batch_size, self.position = bodies, batch_size, 0
        self.loop.add_callback_threadsafe(self._next_batch)
        self.loop.start()
        if self.error is not None:
            raise self.error

    def _next_batch(self) -> None:
        start = self.position
        if start >= len(self.bodies):
            self.loop.stop()
            return
        batch = self.bodies[start : start + self.batch_size]
        self.position += len(batch)
        publish, exchange = self.channel.basic_publish, self.options.exchange
        for body in batch:
            publish(exchange, ROUTING_KEY, body, PROPERTIES)
        self.published += len(batch)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self.error = RuntimeError(f"nack for delivery tag {method.delivery_tag}")
            self.loop.stop()
            return
        # The broker confirms in order per queue; with a single (or no) queue,
        # a single ack of tag n settles n.
        self.acked = max(self.acked, method.delivery_tag)
        if self.acked >= self.published:
            self._next_batch()


_publishers: dict[str, _Publisher] = {}


def publish_raw(bodies: list[bytes], options: dict[str, Any], batch_size: int) -> None:
    backend = create_backend("rabbitmq", options)
    assert isinstance(backend, RabbitMQBackend)
    cache_key = repr(sorted(options.items(), key=str))
    if cache_key not in _publishers:
        _publishers[cache_key] = _Publisher(backend)
    _publishers[cache_key].run(bodies, batch_size)


RAW = {"rabbitmq": publish_raw}
