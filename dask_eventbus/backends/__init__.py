"""The backend interface, the message it publishes, and the backend registry.

A backend knows one broker and nothing about Dask. The pipeline hands it
batches of encoded :class:`Message` objects; :meth:`Backend.publish` returns
only once the broker has accepted the whole batch and raises otherwise, so the
pipeline can retry. Consumers get a :class:`Subscription`, an iterator of
:class:`~dask_eventbus.events.Event` objects that acknowledges each event once
the next one is asked for.

Backends are found by name: first those registered with
:func:`register_backend`, then entry points in the group
``dask_eventbus.backends`` (the built-in backends are declared the same way).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Literal, NamedTuple

import msgspec

from ..config import ConfigError, convert, redact_url, redact_value
from ..events import CONTENT_TYPE, Event

logger = logging.getLogger("distributed.eventbus")

ENTRY_POINT_GROUP = "dask_eventbus.backends"

# The pip extra that installs each built-in backend's client library.
BUILTIN_EXTRAS = {
    "kafka": "kafka",
    "rabbitmq": "rabbitmq",
    "kombu": "kombu",
    "redis": "redis",
}


class Message(NamedTuple):
    """One encoded event plus the attributes brokers route and index on."""

    body: bytes
    """The CloudEvent, structured-mode JSON."""
    id: str
    type: str
    subject: str | None
    sequence: int
    time: float
    """Seconds since the epoch, when the scheduler saw what happened."""
    routing_key: str
    """The type, refined for transitions: ``dask.task.transition.<start>.<finish>``."""
    content_type: str = CONTENT_TYPE
    """``application/cloudevents+json``, or the batch type for a batched message."""


class BackendOptions(msgspec.Struct, kw_only=True, rename="kebab", forbid_unknown_fields=True):
    """Base for a backend's options; subclasses declare fields with defaults."""

    def __repr__(self) -> str:  # secrets masked, as everywhere people look
        fields = redact_value("", msgspec.to_builtins(self, enc_hook=float))
        return f"{type(self).__name__}({fields})"


class Backend:
    """Base class of all backends.

    Subclasses set :attr:`name`, declare their options as a
    :class:`BackendOptions` subclass in :attr:`Options`, and implement
    :meth:`open`, :meth:`publish`, :meth:`close` and :meth:`subscribe`.
    Producer methods are called from one publisher thread only.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    modes: tuple[str, ...] = ("process", "thread")
    """Pipeline modes this backend (instance) runs in; the first is used for ``auto``."""

    def __init__(self, **options: Any) -> None:
        self.options = convert(options, self.Options, f"eventbus.backends.{self.name}")

    def open(self) -> None:
        """Connect to the broker; called again after a failed publish."""

    def publish(self, messages: Sequence[Message]) -> None:
        """Deliver ``messages`` in order; return once the broker accepted all.

        Raise on any failure: the pipeline keeps the batch, calls
        :meth:`close`, backs off, calls :meth:`open` and publishes it again.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection; must not raise and must be safe to repeat."""

    def subscribe(self, *, from_beginning: bool = False, **params: Any) -> Subscription:
        """Read events back: new ones, or all the broker still holds."""
        raise NotImplementedError(f"the {self.name!r} backend cannot be read back")

    def describe(self) -> str:
        """Where events go, for people: no secrets."""
        return self.name

    def explain(self, exc: BaseException) -> str:
        """What went wrong, for people: names the cause and how to fix it.

        Used in logs, statistics and ``dask-eventbus check``. Backends
        override this to turn their client library's errors into a diagnosis
        (cannot connect to host:port, authentication refused, ...). Must not
        reveal secrets.
        """
        return redact_url(f"{type(exc).__name__}: {exc}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.describe())}>"

    def __getstate__(self) -> dict[str, Any]:
        # Only what configures the backend travels (e.g. to the scheduler with
        # Client.register_plugin); connections are made where it is opened.
        return {"options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**msgspec.structs.asdict(state["options"]))  # type: ignore[misc]


class Delivery(NamedTuple):
    """One raw message read from a broker and how to acknowledge it."""

    body: bytes
    token: Any = None


class Subscription(Iterator[Event]):
    """An iterator of events read back from a backend.

    Each event is acknowledged (where the broker has acknowledgements) when
    the next one is requested or the subscription is closed normally, so an
    event whose processing raised is delivered again to the next consumer.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        self._types: list[str] | None = None
        # Decoded events not yet yielded; the last one of each delivery
        # carries that delivery, acknowledged once the event was yielded.
        self._ready: deque[tuple[Event, Delivery | None]] = deque()
        self._unacked: Delivery | None = None
        self.closed = False

    # ---- what backends implement

    def fetch(self, timeout: float) -> Sequence[Delivery]:
        """Wait up to ``timeout`` seconds for messages; return what arrived."""
        raise NotImplementedError

    def ack(self, token: Any) -> None:
        """Acknowledge one delivery by its token."""

    def _close(self) -> None:
        """Release the backend's consumer resources."""

    # ---- what consumers use

    def set_types(self, patterns: Sequence[str] | None) -> None:
        """Yield only events whose type matches one of these glob patterns."""
        self._types = list(patterns) if patterns else None

    def poll(self, timeout: float | None = None) -> Event | None:
        """The next event, or ``None`` when none arrived within ``timeout``."""
        self._ack_previous()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ready:
                event, delivery = self._ready.popleft()
                self._unacked = delivery
                return event
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            for delivery in self.fetch(min(remaining, 1.0)):
                events = self._decode(delivery)
                if events:
                    self._ready.extend((event, None) for event in events[:-1])
                    self._ready.append((events[-1], delivery))
                else:
                    self.ack(delivery.token)

    def __next__(self) -> Event:
        if self.closed:
            raise StopIteration
        event = self.poll()
        assert event is not None
        return event

    def __iter__(self) -> Subscription:
        return self

    def close(self, *, ack: bool = True) -> None:
        """Stop reading; acknowledges the last event unless ``ack`` is false."""
        if self.closed:
            return
        try:
            if ack:
                self._ack_previous()
        finally:
            self.closed = True
            self._close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(ack=exc_type is None)

    def _ack_previous(self) -> None:
        if self._unacked is not None:
            delivery, self._unacked = self._unacked, None
            self.ack(delivery.token)

    def _decode(self, delivery: Delivery) -> list[Event]:
        """The events of one message: one, or several in batched content mode."""
        try:
            events = decode_body(delivery.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("Skipping a message that is not a dask-eventbus CloudEvent: %s", exc)
            return []
        if self._types is None:
            return events
        return [e for e in events if any(fnmatch.fnmatchcase(e.type, p) for p in self._types)]


BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
BATCH_ROUTING_KEY = "dask.eventbus.batch"

ContentMode = Literal["structured", "batched"]
"""``structured``: one message per event (CloudEvents structured mode);
``batched``: one message per published batch, a JSON array of events
(CloudEvents batched mode), far fewer messages for the broker to handle."""


class ConsumerReconnect:
    """A subscription's attempts to reconnect its consumer.

    While the broker stays unreachable it tries about once a second and warns
    at most once a minute; it says so once the consumer is connected again.
    """

    LOG_INTERVAL = 60.0

    def __init__(
        self, log: logging.Logger, broker: str, explain: Callable[[BaseException], str]
    ) -> None:
        self._log = log
        self._broker = broker
        self._explain = explain
        self._last_warning = 0.0

    def attempt(
        self,
        connect: Callable[[], None],
        deadline: float,
        errors: tuple[type[BaseException], ...] = (Exception,),
        cleanup: Callable[[], None] = lambda: None,
    ) -> bool:
        """Call ``connect``; on one of ``errors``, ``cleanup``, wait a second
        (not past ``deadline``) and return False."""
        try:
            connect()
        except errors as exc:
            cleanup()
            now = time.monotonic()
            if now - self._last_warning >= self.LOG_INTERVAL:
                self._last_warning = now
                self._log.warning(
                    "dask-eventbus: cannot reconnect the %s consumer yet (retrying "
                    "every second, logging every %.0fs): %s",
                    self._broker,
                    self.LOG_INTERVAL,
                    self._explain(exc),
                )
            time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
            return False
        if self._last_warning:
            self._log.warning("dask-eventbus: the %s consumer is connected again", self._broker)
            self._last_warning = 0.0
        return True


def batch_body(messages: Sequence[Message]) -> bytes:
    """Several events as one CloudEvents JSON batch (a JSON array of events)."""
    return b"[" + b",".join([m.body for m in messages]) + b"]"


def in_content_mode(messages: Sequence[Message], mode: ContentMode) -> Sequence[Message]:
    """The messages to send: as they are, or all of them as one batched message.

    A batched message takes the id, sequence and time of the batch's first
    event; its ``type`` and ``routing_key`` are ``dask.eventbus.batch``.
    """
    if mode == "structured" or not messages:
        return messages
    first = messages[0]
    return [
        Message(
            batch_body(messages),
            first.id,
            BATCH_ROUTING_KEY,
            None,
            first.sequence,
            first.time,
            BATCH_ROUTING_KEY,
            BATCH_CONTENT_TYPE,
        )
    ]


def decode_body(body: bytes) -> list[Event]:
    """Events in a message body: a structured-mode event or a JSON batch of them."""
    if body[:1] == b"[" or body.lstrip()[:1] == b"[":
        return _batch_decoder.decode(body)
    return [Event.from_json(body)]


_batch_decoder = msgspec.json.Decoder(list[Event])


# ---------------------------------------------------------------- registry

_registered: dict[str, type[Backend]] = {}


def register_backend(name: str, cls: type[Backend]) -> None:
    """Make ``cls`` available as backend ``name`` in this process."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{cls!r} is not a subclass of dask_eventbus.Backend")
    _registered[name] = cls


def available_backends() -> list[str]:
    """Names of every backend registered or declared as an entry point."""
    from importlib.metadata import entry_points  # not needed where backends arrive pickled

    names = set(_registered)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name``."""
    from importlib.metadata import entry_points

    if name in _registered:
        return _registered[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                cls = ep.load()
            except ImportError as exc:
                extra = BUILTIN_EXTRAS.get(name)
                install = (
                    f"pip install 'dask-eventbus[{extra}]'"
                    if extra
                    else f"install the package that provides {ep.value}"
                )
                raise ConfigError(
                    f"The {name!r} event bus backend cannot be loaded: {exc}. "
                    f"To fix this: {install}"
                ) from None
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise ConfigError(
                    f"Entry point {name!r} = {ep.value} in group {ENTRY_POINT_GROUP!r} "
                    "is not a dask_eventbus.Backend subclass"
                )
            return cls
    raise ConfigError(
        f"Unknown event bus backend {name!r}. Available backends: {', '.join(available_backends())}"
    )


def create_backend(
    backend: str | Backend,
    options: Mapping[str, Any] | None = None,
    configured: Mapping[str, Mapping[str, Any]] | None = None,
) -> Backend:
    """A backend instance from a name (or an instance, returned as is).

    ``configured`` holds the ``eventbus.backends`` config; its options for the
    named backend are the defaults that ``options`` override.
    """
    if isinstance(backend, Backend):
        if options:
            raise TypeError(
                "Backend options cannot be given together with a Backend instance; "
                "pass them to the backend's constructor instead"
            )
        return backend
    if not isinstance(backend, str):
        raise ConfigError(
            f"Invalid event bus backend {backend!r}: expected a backend name "
            "or a dask_eventbus.Backend instance"
        )
    cls = get_backend(backend)
    merged: dict[str, Any] = {}
    for source in ((configured or {}).get(backend) or {}, options or {}):
        merged.update({key.replace("_", "-"): value for key, value in source.items()})
    return cls(**merged)
