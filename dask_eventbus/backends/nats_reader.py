"""Reading a JetStream stream back with nats-py: a pull consumer, ephemeral
or durable, on a connection and an event loop of its own.

Apart from :mod:`.nats`, whose publishing needs none of it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from ..bindings.nats import delivery_of, subject_filters
from .loop import LoopThread
from .nats_client import connect, connect_bound, ensure_stream
from .subscription import Delivery, ReconnectingSubscription, Subscription

if TYPE_CHECKING:
    from .nats import NatsBackend, NatsSubscribeOptions

logger = logging.getLogger("distributed.eventbus")

# Longest wait for a subscriber to connect again, in seconds.
RECONNECT_BOUND = 6.0


def open_reader(backend: NatsBackend, options: NatsSubscribeOptions) -> Subscription:
    """A started subscription, as ``options`` ask (see
    ``NatsBackend.open_subscription``)."""
    filters = options.subjects or subject_filters(backend.options.subject_prefix, options.types)
    reader = _JetStreamReader(
        backend, options.from_beginning, options.durable, filters, options.count
    )
    try:
        reader.start()
    except BaseException:
        reader.close(ack=False)
        raise
    return reader


class _JetStreamReader(ReconnectingSubscription):
    """A pull consumer on a connection of its own, on a loop of its own."""

    connection_errors = (nats.errors.Error, APIError, OSError)

    def __init__(
        self,
        backend: NatsBackend,
        from_beginning: bool,
        durable: str | None,
        filters: list[str] | None,
        count: int,
    ) -> None:
        super().__init__("NATS", backend.explain)
        self._backend = backend
        self._options = backend.options
        self._from_beginning = from_beginning
        self._durable = durable
        self._filters = filters
        self._count = count
        self._loop = LoopThread("dask-eventbus-nats-subscriber")
        self._client: NATSClient | None = None
        self._pull: JetStreamContext.PullSubscription | None = None
        self._consumer: str | None = None
        # The stream sequence of the last message received: an ephemeral
        # consumer made again after a reconnection starts after it.
        self._last_sequence: int | None = None
        # Reply subjects of deliveries not acknowledged, in the order received.
        self._outstanding: dict[str, None] = {}

    def _connect(self) -> None:
        if self._consumer is None:
            bound = connect_bound(self._backend) + self._options.publish_timeout
        else:
            # Reconnecting within a fetch: bounded near the caller's wait.
            bound = RECONNECT_BOUND
        self._loop.run(self._attach(), bound)

    async def _attach(self) -> None:
        client, _ = await connect(self._backend, "-subscriber")
        try:
            js = client.jetstream(timeout=self._options.publish_timeout)
            stream = self._options.stream
            # Subscribers may come first: the stream then keeps what follows.
            await ensure_stream(self._backend, js)
            if self._durable is not None:
                try:
                    await js.consumer_info(stream, self._durable)
                except NotFoundError:
                    await js.add_consumer(stream, self._config(client, durable=self._durable))
                name = self._durable
            else:
                if self._last_sequence is None and not self._from_beginning:
                    info = await js.stream_info(stream)
                    self._last_sequence = info.state.last_seq
                made = await js.add_consumer(stream, self._config(client))
                name = made.name
            self._pull = await js.pull_subscribe_bind(consumer=name, stream=stream)
        except BaseException:
            await client.close()
            raise
        self._client, self._consumer = client, name

    def _config(self, client: NATSClient, durable: str | None = None) -> api.ConsumerConfig:
        config = api.ConsumerConfig(durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT)
        if durable is None:
            config.inactive_threshold = 60.0
            if self._last_sequence is not None:
                config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = self._last_sequence + 1
        elif not self._from_beginning:
            config.deliver_policy = api.DeliverPolicy.NEW
        if self._filters and len(self._filters) == 1:
            config.filter_subject = self._filters[0]
        elif self._filters and _takes_filter_subjects(client):
            config.filter_subjects = self._filters
        return config

    def _read(self, timeout: float) -> list[Delivery]:
        pull, client = self._pull, self._client
        assert pull is not None and client is not None
        try:
            messages = self._loop.run(
                pull.fetch(self._count, timeout=max(timeout, 0.05)), timeout + 5
            )
        except (nats.errors.TimeoutError, TimeoutError):
            # Nothing arrived in time, or the connection is gone.
            if client.is_closed:
                raise nats.errors.ConnectionClosedError() from None
            return []
        deliveries = []
        for message in messages:
            self._last_sequence = message.metadata.sequence.stream
            self._outstanding[message.reply] = None
            deliveries.append(delivery_of(message.data, message.headers, message))
        return deliveries

    def _disconnect(self) -> None:
        client, self._client, self._pull = self._client, None, None
        self._outstanding.clear()  # the server delivers them again
        if client is not None:
            try:
                self._loop.run(asyncio.wait_for(client.close(), 2.0), 3.0)
            except BaseException:
                logger.debug("dask-eventbus: closing the NATS subscriber failed", exc_info=True)

    def _acknowledge(self, token: Any) -> None:
        message: Msg = token
        client = self._client
        if client is None or message.reply not in self._outstanding:
            return
        del self._outstanding[message.reply]
        self._loop.submit(_send(client, message.reply, b"+ACK"))

    def _close(self) -> None:
        client = self._client
        try:
            if client is not None:
                # Hand back what was fetched and not acknowledged at once,
                # rather than after the ack wait.
                for reply in self._outstanding:
                    self._loop.submit(_send(client, reply, b"-NAK"))
                if self._durable is None and self._consumer is not None:
                    self._loop.run(self._delete_consumer(client), 3.0)
        except BaseException:
            logger.debug("dask-eventbus: releasing the NATS consumer failed", exc_info=True)
        finally:
            self._disconnect()
            self._loop.stop()

    async def _delete_consumer(self, client: NATSClient) -> None:
        assert self._consumer is not None
        await client.jetstream().delete_consumer(self._options.stream, self._consumer)


async def _send(client: NATSClient, subject: str, payload: bytes) -> None:
    try:
        await client.publish(subject, payload)
    except nats.errors.Error:
        logger.debug("dask-eventbus: could not send %r to NATS", payload, exc_info=True)


def _takes_filter_subjects(client: NATSClient) -> bool:
    """Whether the server takes several filter subjects per consumer (2.10+)."""
    version = str(client._server_info.get("version", "0.0"))
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 10)
