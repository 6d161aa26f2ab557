"""The backend contract: the message a backend publishes, its options, the base class.

A backend knows one broker and nothing about Dask. The pipeline hands it
batches of encoded :class:`Message` objects through :meth:`Backend.send`
(which applies the content mode); :meth:`Backend.publish` returns only once
the broker has accepted the whole batch and raises otherwise, so the pipeline
can retry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

import msgspec

from ..config import (
    ConfigError,
    PositiveDuration,
    convert,
    mask_secrets,
    redact_url,
    redact_value,
    secret_values,
)
from ..events import CONTENT_TYPE

if TYPE_CHECKING:
    from .diagnosis import Problem, Wording
    from .subscription import Subscription


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
    source: str = ""
    """The scheduler the event comes from (the CloudEvents ``source``)."""


BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
BATCH_ROUTING_KEY = "dask.eventbus.batch"


class Refused(Exception):
    """The broker refused some events for good: sending them again cannot help.

    Raised by :meth:`Backend.publish` once every other message of the batch
    was accepted. The publisher does not retry the batch: it counts the
    refused events in ``stats()["refused"]``, logs ``reason`` (rate limited)
    and announces them with a ``dask.eventbus.dropped`` event whose
    ``policy`` is ``refused``. Any other exception is a failure the batch is
    retried after; one with a ``retry_after`` attribute (seconds) makes the
    publisher wait at least that long before it tries again.
    """

    def __init__(self, messages: Sequence[Message], reason: str) -> None:
        super().__init__(reason)
        self.messages = list(messages)
        """The refused messages, as :meth:`Backend.publish` received them."""
        self.reason = reason
        """Why, for people: the broker's answer, without secrets."""


ContentMode = Literal["structured", "batched"]
"""``structured``: one message per event (CloudEvents structured mode);
``batched``: one message per published batch, a JSON array of events
(CloudEvents batched mode), far fewer messages for the broker to handle."""


class BackendOptions(msgspec.Struct, kw_only=True, rename="kebab", forbid_unknown_fields=True):
    """Base for a backend's options; subclasses declare fields with defaults.

    Every backend has ``content-mode``: :meth:`Backend.send` applies it, so a
    backend's ``publish`` sees either one message per event or one batch.
    """

    content_mode: ContentMode = "structured"

    def __repr__(self) -> str:  # secrets masked, as everywhere people look
        fields = redact_value("", msgspec.to_builtins(self, enc_hook=float))
        return f"{type(self).__name__}({fields})"

    def mask(self, text: str) -> str:
        """``text`` with every secret of these options shown as ``***``."""
        return mask_secrets(text, secret_values("", msgspec.to_builtins(self, enc_hook=float)))


class NetworkOptions(BackendOptions):
    """Options every broker backend names the same way.

    ``connect-timeout`` bounds connecting (and setting up what events go to),
    ``publish-timeout`` the broker's acceptance of a batch and every other
    reply; ``create-missing``, where a backend declares it, makes the backend
    create the topic, stream or exchange events go to when it is missing.
    """

    aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    """Older option names still accepted, each with the options it sets."""

    connect_timeout: PositiveDuration = PositiveDuration(10.0)
    publish_timeout: PositiveDuration = PositiveDuration(10.0)


class SubscribeOptions(msgspec.Struct, kw_only=True, rename="kebab", forbid_unknown_fields=True):
    """Base for the options of a backend's :meth:`Backend.subscribe`.

    ``from-beginning``: read every event the broker still holds, not only
    those published after subscribing. Subclasses declare the backend's own
    options as fields with defaults, and may check how they combine in
    ``__post_init__`` (raising ValueError).
    """

    from_beginning: bool = False


class SubscribeOptionError(ConfigError, TypeError):
    """A subscribe option is unknown or invalid (a TypeError too, as for an
    unexpected keyword)."""


def with_aliases(
    options: Mapping[str, Any], type_: type[BackendOptions], where: str
) -> dict[str, Any]:
    """``options`` with every alias of ``type_`` replaced by the names it stands for.

    An alias sets its options unless one of them is given too with another
    value than the alias's and its default: then neither is taken and the
    error names both. ``None`` is an alias not given.
    """
    aliases: Mapping[str, tuple[str, ...]] = getattr(type_, "aliases", {})
    out = {(k.replace("_", "-") if isinstance(k, str) else k): v for k, v in options.items()}
    for alias, names in aliases.items():
        value = out.pop(alias, None)
        if value is None:
            continue
        try:
            typed = convert({name: value for name in names}, type_, where)
        except ConfigError as exc:  # named as the user wrote it
            message = str(exc)
            for name in names:
                message = message.replace(f"{where}.{name} ", f"{where}.{alias} ", 1)
            raise ConfigError(message) from None
        default = type_()
        for name in names:
            attribute = name.replace("-", "_")
            if name in out and out[name] is not None:
                given = getattr(convert({name: out[name]}, type_, where), attribute)
                if given not in (getattr(default, attribute), getattr(typed, attribute)):
                    raise ConfigError(
                        f"Event bus config {where}.{alias} = {redact_value(alias, value)!r} "
                        f"and {where}.{name} = {redact_value(name, out[name])!r} disagree: "
                        f"{alias} is the older name of {', '.join(names)}. Set only {name}"
                    )
                if given != getattr(default, attribute):
                    continue
            out[name] = value
    return out


def url_scheme(url: str, schemes: Sequence[str], tls: Sequence[str] = ()) -> str:
    """The scheme of ``url``, lower case; ValueError unless it is one of
    ``schemes`` (those in ``tls`` are named as the TLS ones)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in schemes:
        allowed = [f"{s}://" + (" (TLS)" if s in tls else "") for s in schemes]
        listed = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        raise ValueError(f"url must start with {listed}, got {redact_url(url)!r}")
    return scheme


class Backend:
    """Base class of all backends.

    Required: set :attr:`name`, declare the options as a
    :class:`BackendOptions` subclass in :attr:`Options`, and implement
    :meth:`publish` (plus :meth:`open` and :meth:`close` when the backend
    holds a connection). Optional capabilities: :meth:`open_subscription` to
    read events back (a backend without it is publish-only, see
    :attr:`readable`), with its options in :attr:`SubscribeOptions`, and
    :meth:`classify` to sort its client library's errors into the problems
    :meth:`explain` words.
    Producer methods are called from one publisher thread only.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    SubscribeOptions: ClassVar[type[SubscribeOptions]] = SubscribeOptions
    modes: tuple[str, ...] = ("process", "thread")
    """Pipeline modes this backend (instance) runs in; the first is used for ``auto``."""
    readable: ClassVar[bool] = False
    """Whether events can be read back: the class implements :meth:`open_subscription`
    (or, as backends written before 0.4 do, :meth:`subscribe`)."""
    timeout_options: ClassVar[tuple[str, ...]] = ()
    """The options that bound a wait for the broker, named when it did not answer;
    by default ``connect-timeout`` and ``publish-timeout`` where the options have them."""
    provisioning_option: ClassVar[str | None] = None
    """The option that makes the backend create what events go to when missing;
    by default ``create-missing`` where the options have it."""
    unused_when_publishing: ClassVar[tuple[str, ...]] = ()
    """Modules the client library imports when it can, though publishing never
    uses them: a publisher process keeps them out while it imports the
    backend's module (importing them fails meanwhile), so that its start does
    not pay for them."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.readable = (
            cls.open_subscription is not Backend.open_subscription
            or cls.subscribe is not Backend.subscribe
        )
        fields = {f.encode_name for f in msgspec.structs.fields(cls.Options)}
        if "timeout_options" not in cls.__dict__:
            cls.timeout_options = tuple(
                n for n in ("connect-timeout", "publish-timeout") if n in fields
            )
        if "provisioning_option" not in cls.__dict__ and "create-missing" in fields:
            cls.provisioning_option = "create-missing"

    def __init__(self, **options: Any) -> None:
        where = f"eventbus.backends.{self.name}"
        self.options = convert(with_aliases(options, self.Options, where), self.Options, where)

    def check(self) -> None:
        """Checks of the options too costly for parsing them (optional).

        Run once where the backend is made by name or handed to the plugin,
        not again where a pickled copy is restored (the publisher process);
        raise :class:`~dask_eventbus.ConfigError` naming the key and the
        problem.
        """

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

    def abort(self) -> None:
        """Make a publish in progress on another thread give up soon (optional).

        Called from the thread closing the plugin when ``close-timeout`` ran
        out while a publish still waited for the broker, so that nothing
        delivers after close returned; must be safe to call from another
        thread. By default nothing happens: the publish then ends within the
        backend's own timeouts.
        """

    def send(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` in the configured content mode; what the
        pipeline calls. Backends implement :meth:`publish`, not this."""
        if messages:
            self.publish(in_content_mode(messages, self.options.content_mode))

    def subscribe(self, *, from_beginning: bool = False, **options: Any) -> Subscription:
        """Read events back: new ones, or all the broker still holds.

        ``options`` are the backend's :attr:`SubscribeOptions`, as keywords
        (``after_id=``) or as users write them (``**{"after-id": ...}``);
        one that is unknown or invalid raises :class:`SubscribeOptionError`
        naming it. Backends implement :meth:`open_subscription`, not this.
        """
        if not self.readable:
            raise ConfigError(
                f"The {self.name!r} event bus backend is publish-only: its events cannot be "
                "read back with subscribe, dask-eventbus tail or report. Read them where the "
                "backend delivers them, or publish to a backend that can be read back as well"
            )
        what = f"{self.name} subscribe option"
        try:
            typed = convert(
                {**options, "from-beginning": from_beginning}, self.SubscribeOptions, "", what
            )
        except ConfigError as exc:
            raise SubscribeOptionError(str(exc)) from None
        return self.open_subscription(typed)

    def open_subscription(self, options: Any) -> Subscription:
        """A subscription reading events back, as ``options`` (an instance
        of :attr:`SubscribeOptions`) say (optional: without it the backend
        is publish-only)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where events go, for people: no secrets."""
        return self.name

    def classify(self, exc: BaseException) -> Problem | None:
        """The kind of problem ``exc`` is, for :meth:`explain` to word (optional).

        Backends sort their client library's errors into the shared kinds
        (authentication, permission, TLS, cannot connect, timeout, missing,
        too large, lost, refused); return None for what they do not know, and
        the operating-system error under it, if any, is worded instead.
        """
        return None

    def broker(self) -> str:
        """The broker as explanations name it (``Redis at host:6379``)."""
        return self.destination()

    def explain(self, exc: BaseException) -> str:
        """What went wrong, for people: names the cause and how to fix it.

        Used in logs, statistics and ``dask-eventbus check``. The backend
        classifies (:meth:`classify`); this words the problem the same way for
        every backend, names the options, and masks the secrets of the
        options in the whole answer.
        """
        # Here: a publisher process that meets no error need not load it.
        from .diagnosis import network_problem, word

        try:
            problem = self.classify(exc)
            if problem is None or problem.kind == "connect":
                # The operating-system error under it says more precisely why;
                # the backend's advice still holds for a connection it names.
                found = network_problem(exc)
                if found is not None and problem is not None and found.kind == problem.kind:
                    found = found._replace(fix=problem.fix)
                problem = found or problem
            if problem is None:
                text = f"{type(exc).__name__}: {exc}"
            else:
                text = word(problem, self._wording())
        except Exception:
            text = f"{type(exc).__name__}: {exc}"
        return self.mask(text)

    def _wording(self) -> Wording:
        from .diagnosis import Wording

        bounds = ", ".join(
            f"{name} {getattr(self.options, name.replace('-', '_')):g}s"
            for name in self.timeout_options
        )
        return Wording(self.broker(), self.name, bounds, self.provisioning_option)

    def mask(self, text: str) -> str:
        """``text`` with every secret of this backend's options shown as ``***``."""
        return self.options.mask(text)

    def destination(self) -> str:
        """:meth:`describe` as logs, statistics and errors show it: secrets and
        URL passwords masked. Call this, not ``describe``, to show it."""
        return self.mask(redact_url(self.describe()))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.destination()}>"

    def __getstate__(self) -> dict[str, Any]:
        # Only what configures the backend travels (e.g. to the scheduler with
        # Client.register_plugin); connections are made where it is opened.
        return {"options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**msgspec.structs.asdict(state["options"]))  # type: ignore[misc]


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
            first.source,
        )
    ]
