"""Reading a Redis stream back, with redis-py: ``XREAD`` after a last-seen
entry id, or ``XREADGROUP`` in a consumer group.

Apart from :mod:`.redis`, whose publishing needs none of it.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..bindings.redis import body_of
from .subscription import Delivery, ReconnectingSubscription, Subscription

if TYPE_CHECKING:
    from .redis import RedisBackend, RedisSubscribeOptions

logger = logging.getLogger("distributed.eventbus")

# Longest single XREAD BLOCK; longer waits are several reads, so the read
# timeout of the subscriber's connection stays bounded.
MAX_BLOCK = 5.0
# Acknowledgements wait at most this long (or for the next read, or for
# ``count`` of them) to go out together in one XACK.
ACK_INTERVAL = 1.0


Entry = tuple[bytes, dict[bytes, bytes] | None]
"""A stream entry as redis-py returns it: id and fields (None when trimmed)."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def open_reader(
    backend: RedisBackend, client: redis.Redis, options: RedisSubscribeOptions
) -> Subscription:
    """A started subscription reading with ``client``, as ``options`` ask
    (see ``RedisBackend.open_subscription``); closes ``client`` if it cannot
    start."""
    group, after_id, count = options.group, options.after_id, options.count
    stream = backend.options.stream
    try:
        if group is None:
            if options.from_beginning:
                start = "0-0"
            elif after_id is not None:
                start = after_id
            else:
                last: Any = client.xrevrange(stream, "+", "-", count=1)
                start = _text(last[0][0]) if last else "0-0"
            reader: _RedisSubscription = _StreamReader(backend, client, start, count)
        else:
            start = "0" if options.from_beginning else after_id or "$"
            _create_group(client, stream, group, start)
            consumer = options.consumer or socket.gethostname()
            reader = _GroupReader(backend, client, group, consumer, count)
        reader.start()
        return reader
    except BaseException:
        client.close()
        raise


def _create_group(client: redis.Redis, stream: str, group: str, start: str) -> None:
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise


def _entries(reply: Any) -> list[Entry]:
    """The entries of an XREAD/XREADGROUP reply on one stream (RESP2 or RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        found: list[Any] = []
        for value in reply.values():
            found.extend(value[0] if value and isinstance(value[0], list) else value)
        return found
    return list(reply[0][1])


class _RedisSubscription(ReconnectingSubscription):
    connection_errors = (RedisConnectionError, RedisTimeoutError)
    acks_outlive_connections = True  # XACK names entries, not deliveries

    def __init__(self, backend: RedisBackend, client: redis.Redis, count: int) -> None:
        super().__init__("Redis", backend.explain, logger)
        self._client = client
        self._stream = backend.options.stream
        self._count = count
        self._last_entry_id: str | None = None

    @property
    def last_entry_id(self) -> str | None:
        """The stream entry id of the event last returned, if any."""
        if self._unacked is not None:
            return _text(self._unacked.token)
        return self._last_entry_id

    def _connect(self) -> None:
        # redis-py reconnects by itself on the next command; a ping tells
        # when Redis is back.
        self._client.ping()

    def _read(self, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            deliveries = self._deliveries(self._read_entries(min(max(remaining, 0.001), MAX_BLOCK)))
            if deliveries or time.monotonic() >= deadline:
                return deliveries

    def _read_entries(self, block: float) -> list[Entry]:
        raise NotImplementedError

    def _deliveries(self, entries: list[Entry]) -> list[Delivery]:
        deliveries = []
        for entry_id, fields in entries:
            body = body_of(fields)
            if body is None:
                # Trimmed away while pending in a group: nothing to deliver.
                self._acknowledge(entry_id)
                continue
            deliveries.append(Delivery(body, entry_id))
        return deliveries

    def _disconnect(self) -> None:
        self._client.connection_pool.disconnect()

    def _close(self) -> None:
        try:
            self._client.close()
        except Exception:
            logger.debug("dask-eventbus: closing the Redis subscriber failed", exc_info=True)


class _StreamReader(_RedisSubscription):
    """XREAD after a last-seen entry id."""

    def __init__(self, backend: RedisBackend, client: redis.Redis, start: str, count: int) -> None:
        super().__init__(backend, client, count)
        self._after = start

    def _read_entries(self, block: float) -> list[Entry]:
        reply = self._client.xread(
            {self._stream: self._after}, count=self._count, block=max(1, int(block * 1000))
        )
        entries = _entries(reply)
        if entries:
            self._after = _text(entries[-1][0])
        return entries

    def _acknowledge(self, token: Any) -> None:
        if token is not None:
            self._last_entry_id = _text(token)


class _GroupReader(_RedisSubscription):
    """XREADGROUP: this consumer's unacknowledged entries first, then new ones."""

    def __init__(
        self,
        backend: RedisBackend,
        client: redis.Redis,
        group: str,
        consumer: str,
        count: int,
    ) -> None:
        super().__init__(backend, client, count)
        self.group = group
        self.consumer = consumer
        self._pending_after: str | None = "0"
        self._acks: list[bytes] = []
        self._acks_since = 0.0

    def _read_entries(self, block: float) -> list[Entry]:
        self._flush_acks()
        try:
            if self._pending_after is not None:
                entries = _entries(
                    self._client.xreadgroup(
                        self.group,
                        self.consumer,
                        {self._stream: self._pending_after},
                        count=self._count,
                    )
                )
                if entries:
                    self._pending_after = _text(entries[-1][0])
                    return entries
                self._pending_after = None
            return _entries(
                self._client.xreadgroup(
                    self.group,
                    self.consumer,
                    {self._stream: ">"},
                    count=self._count,
                    block=max(1, int(block * 1000)),
                )
            )
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            # The stream or the group went away (deleted, or a Redis restart
            # without persistence): whatever the stream holds now is new.
            logger.warning(
                "dask-eventbus: consumer group %r on %s is gone; creating it again",
                self.group,
                self._stream,
            )
            _create_group(self._client, self._stream, self.group, "0")
            self._pending_after = None
            self._acks.clear()
            return []

    def _acknowledge(self, token: Any) -> None:
        self._last_entry_id = _text(token)
        if not self._acks:
            self._acks_since = time.monotonic()
        self._acks.append(token)
        if len(self._acks) >= self._count or time.monotonic() - self._acks_since >= ACK_INTERVAL:
            self._flush_acks()

    def _flush_acks(self) -> None:
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        try:
            self._client.xack(self._stream, self.group, *acks)
        except (RedisConnectionError, RedisTimeoutError, ResponseError):
            # Unacknowledged entries are delivered again: at least once.
            logger.warning(
                "dask-eventbus: could not acknowledge %d entries on %s; they will be "
                "delivered again",
                len(acks),
                self._stream,
            )

    def _close(self) -> None:
        try:
            self._flush_acks()
        except Exception:
            logger.debug("dask-eventbus: final XACK failed", exc_info=True)
        super()._close()
