"""Reading a RabbitMQ exchange back: a consumer on a blocking pika
connection, through a queue bound with routing-key patterns, reconnecting
after failures. Apart from :mod:`.rabbitmq` so that a publisher process
need not load the subscription runtime."""

from __future__ import annotations

import contextlib
from typing import Any

import pika
import pika.exceptions as pe

from .rabbitmq import RabbitMQBackend, RabbitMQError, _declare, _quiet, logger
from .subscription import Delivery, ReconnectingSubscription


class RabbitMQSubscription(ReconnectingSubscription):
    """A consumer on a blocking pika connection, reconnecting after failures."""

    connection_errors = (pe.AMQPError, RabbitMQError, OSError)

    def __init__(
        self, backend: RabbitMQBackend, bindings: list[str], queue: str | None, prefetch: int
    ) -> None:
        super().__init__("RabbitMQ", backend.explain, logger)
        self._backend = backend
        self._bindings = bindings
        self._named = queue
        self._prefetch = prefetch
        self._connection: Any = None
        self._channel: Any = None
        self._queue = ""
        self._received: list[Delivery] = []
        self._acks: list[int] = []
        self._acked_through = 0
        self._broken: BaseException | None = None

    @property
    def queue(self) -> str:
        """The name of the queue being consumed (generated for exclusive queues)."""
        return self._queue

    @property
    def keeps_events_while_away(self) -> bool:
        return bool(self._named)

    @_quiet
    def _connect(self) -> None:
        backend, options = self._backend, self._backend.options
        params = backend.parameters()
        params.client_properties = {
            **params.client_properties,
            "connection_name": f"{options.connection_name} subscriber",
        }
        self._acks, self._acked_through, self._broken = [], 0, None
        connection = self._connection = pika.BlockingConnection(params)
        channel = self._channel = connection.channel()
        topology = backend.topology()
        queue = topology.subscriber_queue(self._bindings, self._named)
        self._queue = _declare(channel, topology.exchange, queue)
        channel.basic_qos(prefetch_count=self._prefetch)
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.basic_consume(self._queue, self._on_message)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._received.append(Delivery(body, method.delivery_tag))

    def _on_cancelled(self, method: Any) -> None:
        self._broken = RabbitMQError(f"the broker cancelled the consumer on queue {self._queue!r}")

    @_quiet
    def _read(self, timeout: float) -> list[Delivery]:
        if self._broken is not None:
            raise self._broken
        self._flush_acks()
        if not self._received:
            self._connection.process_data_events(time_limit=timeout)
        if self._broken is not None:
            raise self._broken
        received, self._received = self._received, []
        return received

    def _acknowledge(self, token: Any) -> None:
        # Sent in one go before the next wait.
        self._acks.append(token)

    def _flush_acks(self) -> None:
        tags, self._acks = self._acks, []
        if not tags or self._channel is None:
            return
        contiguous = tags[0] == self._acked_through + 1 and tags[-1] - tags[0] == len(tags) - 1
        if contiguous and tags == sorted(tags):
            self._channel.basic_ack(tags[-1], multiple=True)
        else:
            for tag in tags:
                self._channel.basic_ack(tag)
        self._acked_through = max(self._acked_through, tags[-1])

    @_quiet
    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._received = []
        if connection is not None and connection.is_open:
            with contextlib.suppress(Exception):
                connection.close()

    @_quiet
    def _close(self) -> None:
        try:
            if self._connection is not None and self._connection.is_open:
                self._flush_acks()
        except Exception:
            logger.debug("dask-eventbus: acknowledging on close failed", exc_info=True)
        finally:
            self._disconnect()
