"""Reading events back through Kombu: one queue consumed, reconnecting
when the broker goes away. Apart from :mod:`.kombu` so that a publisher
process need not load the subscription runtime."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from kombu import Connection, Consumer, Queue

from .kombu import KombuBackend, _drop, logger
from .subscription import Delivery, ReconnectingSubscription


def _as_bytes(body: Any) -> bytes:
    # py-amqp hands utf-8 bodies over as str.
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


class KombuSubscription(ReconnectingSubscription):
    """Consumes one queue; reconnects when the broker goes away."""

    def __init__(
        self, backend: KombuBackend, name: str | None, keys: Sequence[str], prefetch: int
    ) -> None:
        super().__init__("Kombu", backend.explain, logger)
        self._backend = backend
        self._name = name
        self._keys = keys
        self._limit = max(1, prefetch)
        self._received: list[Any] = []
        self._live: tuple[Connection, Queue, Consumer] | None = None
        self._queue = ""
        transport = Connection(backend.options.url)
        self.connection_errors = (
            OSError,
            *transport.connection_errors,
            *transport.channel_errors,
        )

    @property
    def queue(self) -> str:
        """The name of the queue being consumed (generated for a queue of its own)."""
        return self._queue

    @property
    def keeps_events_while_away(self) -> bool:
        return self._name is not None

    def _connect(self) -> None:
        self._live = self._backend._consume(
            self._name, self._keys, self._limit, self._received.append
        )
        self._queue = self._live[1].name

    def _read(self, timeout: float) -> list[Delivery]:
        assert self._live is not None
        conn = self._live[0]
        received = self._received
        try:
            if not received:
                conn.drain_events(timeout=timeout)
            while len(received) < self._limit:
                conn.drain_events(timeout=0)
        except TimeoutError:  # socket.timeout: nothing (more) to read
            pass
        found = [Delivery(_as_bytes(m.body), m) for m in received]
        received.clear()
        return found

    def _acknowledge(self, token: Any) -> None:
        assert self._live is not None
        conn = self._live[0]
        with contextlib.suppress(*conn.connection_errors, *conn.channel_errors):
            token.ack()

    def _disconnect(self) -> None:
        live, self._live = self._live, None
        self._received.clear()
        if live is not None:
            _drop(live[0])

    def _close(self) -> None:
        live, self._live = self._live, None
        if live is None:
            return
        conn, queue, consumer = live
        with contextlib.suppress(Exception):
            consumer.cancel()
        if self._name is None:
            with contextlib.suppress(Exception):
                queue.delete()
        with contextlib.suppress(Exception):
            conn.release()
