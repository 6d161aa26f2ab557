"""``memory``: events kept in this process, for tests and notebooks.

Backends with the same ``name`` in one process share a store, so a
subscriber in the notebook reads what the plugin on an in-process scheduler
(``LocalCluster(processes=False)``, ``gen_cluster``) published.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Annotated

import msgspec

from ..events import Event
from . import Backend, BackendOptions, Delivery, Message, SubscribeOptions, Subscription


class MemoryOptions(BackendOptions):
    name: str = "default"
    max_events: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000


class Store:
    """Encoded events in publish order; the oldest go beyond ``max_events``."""

    def __init__(self, max_events: int) -> None:
        self.bodies: deque[bytes] = deque(maxlen=max_events)
        self.total = 0
        self._changed = threading.Condition()

    def extend(self, bodies: Sequence[bytes]) -> None:
        with self._changed:
            self.bodies.extend(bodies)
            self.total += len(bodies)
            self._changed.notify_all()

    def read(self, position: int, timeout: float) -> tuple[list[bytes], int]:
        """Bodies from absolute ``position`` on (waiting up to ``timeout``)."""
        with self._changed:
            self._changed.wait_for(lambda: self.total > position, timeout)
            first = self.total - len(self.bodies)
            start = max(position, first)
            return list(islice(self.bodies, start - first, None)), self.total

    def events(self) -> list[Event]:
        """Every event still held, decoded."""
        with self._changed:
            bodies = list(self.bodies)
        return [Event.from_json(body) for body in bodies]

    def clear(self) -> None:
        with self._changed:
            self.bodies.clear()


_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()


def get_store(name: str = "default", max_events: int = 1_000_000) -> Store:
    """The store backends named ``name`` publish to in this process."""
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = Store(max_events)
        return store


def drop_store(name: str) -> None:
    """Forget the store ``name`` and what it holds."""
    with _stores_lock:
        _stores.pop(name, None)


class MemoryBackend(Backend):
    """Keeps encoded events in a named in-process store."""

    name = "memory"
    Options = MemoryOptions
    modes = ("thread",)  # the store lives in the scheduler's process
    options: MemoryOptions

    @property
    def store(self) -> Store:
        return get_store(self.options.name, self.options.max_events)

    def publish(self, messages: Sequence[Message]) -> None:
        self.store.extend([m.body for m in messages])

    def open_subscription(self, options: SubscribeOptions) -> Subscription:
        store = self.store
        return _MemorySubscription(store, 0 if options.from_beginning else store.total)

    def describe(self) -> str:
        return f"memory store {self.options.name!r}"


class _MemorySubscription(Subscription):
    def __init__(self, store: Store, position: int) -> None:
        super().__init__()
        self._store = store
        self._position = position

    def fetch(self, timeout: float) -> list[Delivery]:
        bodies, self._position = self._store.read(self._position, timeout)
        return [Delivery(body) for body in bodies]
