"""The conformance suite every backend passes, built-in and third-party alike.

Subclass :class:`BackendConformance` and name the backend under test; pytest
collects the subclass's tests (name it ``Test...``). Tests that read events
back skip, saying why, for a publish-only backend (one without
``subscribe``), unless its Target says where its events can be read
(:attr:`Target.read_back`). A backend that loses, duplicates, reorders within a subject
or corrupts events fails.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import pickle
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import dask
import msgspec
import pytest
from cloudevents.core.formats.json import JSONFormat
from distributed.utils_test import gen_test
from jsonschema import Draft202012Validator, FormatChecker

from .. import subscribe
from ..backends import Backend, Message, SubscribeOptionError, Subscription, create_backend
from ..config import ConfigError
from ..events import EVENT_TYPES, TASK_TRANSITION, Event, key_to_str, load_shipped_schema
from ..plugin import EventBusPlugin
from .faultproxy import FaultProxy
from .reading import publish_batches, read_events, read_raw, synthetic_messages
from .workload import is_closing, run_workload

_Test = TypeVar("_Test", bound=Callable[..., Any])


def _needs(*capabilities: str) -> Callable[[_Test], _Test]:
    """Notes what of the target a test needs beyond publishing: ``replay``
    (from_beginning), ``connection`` (a broker to cut), ``secret`` (options
    with a secret, :attr:`Target.with_secret`), ``subscription`` (the backend
    reads its own events back). The test checks it itself and skips without
    it; a project's own conftest may read it to leave such tests out."""

    def mark(test: _Test) -> _Test:
        test.eventbus_needs = frozenset(capabilities)  # type: ignore[attr-defined]
        return test

    return mark


def needed_capabilities(test: Callable[..., Any]) -> frozenset[str]:
    """What :func:`_needs` noted on ``test``."""
    return getattr(test, "eventbus_needs", frozenset())


SECRET = "conformance-s3cret-4f9a"
"""The secret :attr:`Target.with_secret` puts in the options: it must never show."""

# What the shared workload emits: every type but these.
NOT_IN_WORKLOAD = {"dask.scheduler.restarted", "dask.eventbus.dropped", "dask.eventbus.probe"}


@dataclass
class Target:
    """One backend under test: how to make it, and what to expect of it."""

    backend: str | Callable[[], Backend]
    """A registered backend name, or a callable returning a fresh instance."""
    options: dict[str, Any] = field(default_factory=dict)
    """The options for a backend given by name."""
    bad_options: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    """Options that must be refused, each with a fragment of the error message."""
    cleanup: Callable[[], None] = lambda: None
    """Removes what the tests created on the broker (a stream, a queue)."""
    proxied: Callable[[], AbstractContextManager[tuple[FaultProxy, dict[str, Any]]]] | None = None
    """A fault proxy in front of the broker and the options that reach the
    same broker objects through it, with short timeouts (outage tests)."""
    replays: bool = True
    """Whether ``subscribe(from_beginning=True)`` returns events published earlier."""
    with_secret: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Options with :data:`SECRET` as a credential (a password, a token, a
    signing key), made from the options given: describe, repr and explain
    must never show it."""
    read_back: Callable[..., Subscription] | None = None
    """For a publish-only backend: a subscription to where its events arrive
    (say, the test's own HTTP receiver storing them in a memory store), taking
    ``from_beginning`` and ``types``; the read-back tests then run through it."""

    def create(self, **overrides: Any) -> Backend:
        """A new backend instance, with ``overrides`` on top of its options."""
        if isinstance(self.backend, str):
            return create_backend(self.backend, {**self.options, **overrides})
        made = self.backend()
        if overrides:
            # Options as users write them (kebab-case), so that errors name them so.
            options = msgspec.to_builtins(made.options)
            options.update(overrides)
            made = type(made)(**options)
        return create_backend(made)

    @property
    def readable(self) -> bool:
        return self.read_back is not None or type(self.create()).readable

    def subscribe(self, **params: Any) -> Subscription:
        """A subscription to the target's events (``from_beginning``, ``types``)."""
        if self.read_back is not None:
            return self.read_back(**params)
        return subscribe(self.create(), **params)


class BackendConformance:
    """The conformance suite; subclass it to run it against a backend.

    Set :attr:`backend` (and :attr:`options`), or override the :meth:`target`
    fixture to give each test a place of its own on the broker and remove it
    afterwards.
    """

    backend: ClassVar[str | Callable[[], Backend] | None] = None
    options: ClassVar[dict[str, Any]] = {}
    bad_options: ClassVar[list[tuple[dict[str, Any], str]]] = []
    replays: ClassVar[bool] = True
    read_timeout: ClassVar[float] = 30.0
    """How long to wait for events that should arrive."""

    @pytest.fixture
    def target(self) -> Iterator[Target]:
        """The backend under test, made from the class attributes."""
        # Read unbound: a factory function set as a class attribute is no method.
        backend = inspect.getattr_static(type(self), "backend")
        if isinstance(backend, staticmethod):
            backend = backend.__func__
        if backend is None:
            raise TypeError(f"{type(self).__name__} must set backend = <name or factory>")
        made = Target(backend, dict(self.options), list(self.bad_options), replays=self.replays)
        try:
            yield made
        finally:
            made.cleanup()

    # ------------------------------------------------------------ publishing

    def test_publish_is_accepted_and_close_is_repeatable(self, target: Target) -> None:
        messages = synthetic_messages(30)
        backend = target.create()
        backend.open()
        try:
            backend.send([])
            backend.send(messages[:10])
            backend.send(messages[10:])
        finally:
            backend.close()
        backend.close()
        backend.open()  # a closed backend opens again, as after a failed publish
        try:
            backend.send(synthetic_messages(3, run_id="reopened"))
        finally:
            backend.close()

    def test_bad_options_are_refused_clearly(self, target: Target) -> None:
        with pytest.raises(ConfigError, match="no-such-option"):
            target.create(**{"no-such-option": 1})
        with pytest.raises(ConfigError, match="content-mode"):
            target.create(**{"content-mode": "sometimes"})
        for options, fragment in target.bad_options:
            with pytest.raises(ConfigError) as info:
                target.create(**options)
            assert fragment in str(info.value)
            assert f"eventbus.backends.{target.create().name}" in str(info.value)

    @_needs("subscription")
    def test_bad_subscribe_options_are_refused_clearly(self, target: Target) -> None:
        _require_read_back(target)
        if target.read_back is not None:
            pytest.skip("the target's events are read back elsewhere, not by the backend")
        backend = target.create()
        unknown: dict[str, Any] = {"no-such-option": 1}
        with pytest.raises(SubscribeOptionError, match="no-such-option") as info:
            backend.subscribe(**unknown)
        assert f"{backend.name} subscribe option" in str(info.value)
        assert isinstance(info.value, TypeError)  # as for an unexpected keyword
        invalid: dict[str, Any] = {"from_beginning": "sometimes"}
        with pytest.raises(SubscribeOptionError, match="from-beginning"):
            backend.subscribe(**invalid)

    def test_backend_survives_a_pickle_round_trip(self, target: Target) -> None:
        # Client.register_plugin and the publisher process ship backends pickled.
        backend = target.create()
        again = pickle.loads(pickle.dumps(backend))
        assert type(again) is type(backend)
        assert again.options == backend.options

    @gen_test(timeout=120)
    async def test_a_real_workload_is_published_in_full(self, target: Target) -> None:
        plugin = EventBusPlugin(target.create())
        await run_workload(plugin)
        stats = plugin.stats()
        assert stats["undelivered"] == 0 and stats["dropped"] == 0, stats
        assert stats["oversized"] == 1, stats
        assert stats["published"] > 50 and stats["queued"] == 0, stats

    # ------------------------------------------------------------ reading back

    def test_round_trip_keeps_every_event_and_per_subject_order(self, target: Target) -> None:
        _require_read_back(target)
        messages = synthetic_messages(300, subjects=7)
        with target.subscribe() as events:
            self._publish(target, [messages[:1], messages[1:120], messages[120:]])
            received = read_events(events, count=len(messages), timeout=self.read_timeout)
            extra = events.poll(timeout=0.5)
        assert extra is None, f"an event arrived that was published once only: {extra}"
        sent = {m.id: Event.from_json(m.body) for m in messages}
        assert sorted(e.id for e in received) == sorted(sent), "events lost or duplicated"
        corrupted = [e.id for e in received if e != sent[e.id]]
        assert not corrupted, f"events changed on the way: {corrupted[:5]}"
        by_subject = defaultdict(list)
        for event in received:
            by_subject[event.subject].append(event.sequence_number)
        for subject, sequences in by_subject.items():
            assert sequences == sorted(sequences), f"order broken for {subject}"

    def test_raw_bodies_are_the_published_cloudevents(self, target: Target) -> None:
        _require_read_back(target)
        messages = synthetic_messages(5)
        with target.subscribe() as events:
            self._publish(target, [messages])
            bodies = read_raw(events, 5, timeout=self.read_timeout)
        assert bodies == [m.body for m in messages]

    @_needs("replay")
    def test_subscribe_from_beginning_replays(self, target: Target) -> None:
        _require_read_back(target)
        _require_replay(target)
        messages = synthetic_messages(50)
        self._publish(target, [messages])
        with target.subscribe(from_beginning=True) as events:
            received = read_events(events, count=50, timeout=self.read_timeout)
        assert [e.id for e in received] == [m.id for m in messages]

    def test_subscribe_filters_by_type(self, target: Target) -> None:
        _require_read_back(target)
        messages = synthetic_messages(20)
        with target.subscribe(types=["dask.scheduler.*"]) as events:
            self._publish(target, [messages])
            assert events.poll(timeout=1.0) is None

    def test_batched_content_mode_round_trip(self, target: Target) -> None:
        _require_read_back(target)
        messages = synthetic_messages(250, subjects=5)
        with target.subscribe() as events:
            self._publish(target, [messages[:100], messages[100:]], content_mode="batched")
            bodies = read_raw(events, 2, timeout=self.read_timeout)
        assert [len(json.loads(body)) for body in bodies] == [100, 150]
        with target.subscribe() as events:
            self._publish(target, [messages[:100], messages[100:]], content_mode="batched")
            received = read_events(events, count=250, timeout=self.read_timeout)
        assert received == [Event.from_json(m.body) for m in messages]

    @gen_test(timeout=120)
    async def test_real_events_are_valid_cloudevents_and_match_the_schema(
        self, target: Target
    ) -> None:
        _require_read_back(target)
        validator = Draft202012Validator(load_shipped_schema(), format_checker=FormatChecker())
        # Worker metrics come every 5 s by default: more often, so the workload has some.
        with dask.config.set({"eventbus.events.worker-metrics-interval": "20ms"}):
            plugin = EventBusPlugin(target.create())
        with target.subscribe() as events:
            await run_workload(plugin)
            bodies = read_raw(events, until=is_closing, timeout=self.read_timeout)
        received = [Event.from_json(body) for body in bodies]
        missing = set(EVENT_TYPES) - NOT_IN_WORKLOAD - {e.type for e in received}
        assert not missing, f"no event of these types arrived: {sorted(missing)}"
        fmt = JSONFormat()
        for body in bodies:
            assert fmt.read(None, body).get_specversion() == "1.0"
            document = json.loads(body)
            errors = sorted(validator.iter_errors(document), key=str)
            assert not errors, f"{document['type']}: {errors[0].message}"

    @gen_test(timeout=120)
    async def test_close_flushes_everything(self, target: Target) -> None:
        """Every event arrives, in order, and the transitions among them are
        the scheduler's transition log."""
        _require_read_back(target)
        # Nothing is published before close: the batch never fills and the
        # flush interval never passes while the scheduler runs.
        slow = {"eventbus.queue.flush-interval": "1h", "eventbus.queue.batch-size": 100000}
        with target.subscribe() as events:
            with dask.config.set(slow):
                plugin = EventBusPlugin(target.create())
            transition_log = await run_workload(plugin)
            stats = plugin.stats()
            received = read_events(events, until=is_closing, timeout=self.read_timeout)
        sequences = [e.sequence_number for e in received]
        assert sequences == list(range(1, len(received) + 1))
        assert stats["published"] == len(received)
        assert stats["undelivered"] == 0 and stats["dropped"] == 0
        transitions = [
            (e.data["key"], e.data["start"], e.data["finish"], e.data.get("stimulus_id"))
            for e in received
            if e.type == TASK_TRANSITION
        ]
        expected = [(key_to_str(t.key), t.start, t.finish, t.stimulus_id) for t in transition_log]
        assert transitions == expected, "not the scheduler's transition log"

    @gen_test(timeout=120)
    async def test_a_workload_through_the_spool_arrives_complete_and_in_order(
        self, target: Target
    ) -> None:
        _require_read_back(target)
        with tempfile.TemporaryDirectory() as spool, target.subscribe() as events:
            with dask.config.set({"eventbus.spool.path": spool}):
                plugin = EventBusPlugin(target.create())
            await run_workload(plugin)
            stats = plugin.stats()
            received = read_events(events, until=is_closing, timeout=self.read_timeout)
        sequences = [e.sequence_number for e in received]
        assert sequences == list(range(1, len(received) + 1))
        assert stats["published"] == len(received)
        assert stats["undelivered"] == 0 and stats["dropped"] == 0, stats
        assert stats["spool"]["events"] == 0, stats

    # ------------------------------------------------------------ outages

    @_needs("connection", "replay")
    def test_a_cut_connection_fails_the_publish_and_reopening_recovers(
        self, target: Target
    ) -> None:
        if target.proxied is None:
            pytest.skip("no fault proxy given (Target.proxied): the backend has no connection")
        _require_read_back(target)
        _require_replay(target)
        first, second = (
            synthetic_messages(40, run_id="before-cut"),
            synthetic_messages(40, run_id="after-cut"),
        )
        with target.proxied() as (proxy, options):
            through_proxy = Target(target.backend, options, read_back=target.read_back)
            backend = through_proxy.create()
            backend.open()
            try:
                backend.send(first)
                proxy.cut()
                _publish_retrying(backend, second)
            finally:
                backend.close()
            with through_proxy.subscribe(from_beginning=True) as events:
                wanted = {m.id for m in first + second}
                assert _read_ids(events, wanted, self.read_timeout) >= wanted

    @_needs("connection")
    def test_explain_names_the_address_it_cannot_reach(self, target: Target) -> None:
        proxied = _require_proxy(target)
        with proxied() as (proxy, options):
            proxy.set_mode("refuse")
            backend = Target(target.backend, options).create()
            try:
                with pytest.raises(Exception) as info:
                    backend.open()
                    backend.send(synthetic_messages(1))
            finally:
                backend.close()
            explained = backend.explain(info.value)
            host, port = proxy.address
        assert f"{host}:{port}" in explained, explained

    @_needs("connection", "subscription")
    def test_a_subscriber_follows_the_broker_through_an_outage(self, target: Target) -> None:
        proxied = _require_proxy(target)
        _require_read_back(target)
        if target.read_back is not None:
            pytest.skip("the target's events are read back elsewhere, not by the backend")
        with proxied() as (proxy, options):
            through_proxy = Target(target.backend, options)
            with through_proxy.subscribe() as events:
                self._follow_an_outage(through_proxy, proxy, events)

    def _follow_an_outage(self, target: Target, proxy: FaultProxy, events: Subscription) -> None:
        before = synthetic_messages(10, run_id="before-outage")
        self._publish(target, [before])
        wanted = {m.id for m in before}
        assert _read_ids(events, wanted, self.read_timeout) >= wanted
        proxy.set_mode("refuse")
        proxy.cut()
        # Waiting for the broker, not failing; nothing was published.
        assert events.poll(timeout=1.0) is None
        proxy.set_mode("pass")
        deadline = time.monotonic() + self.read_timeout
        for attempt in itertools.count():
            # Published until some arrive: the subscriber reconnects in its
            # own time, and where the broker keeps nothing for a subscriber
            # away, what came before that is not delivered.
            after = synthetic_messages(5, run_id=f"after-outage-{attempt}")
            self._publish(target, [after])
            with contextlib.suppress(AssertionError):
                read_events(events, until=_one_of({m.id for m in after}), timeout=2.0)
                break
            assert time.monotonic() < deadline, "no events arrived after the outage"

    # ------------------------------------------------------------ secrets

    @_needs("secret")
    def test_secrets_never_show_in_describe_repr_or_explain(self, target: Target) -> None:
        if target.with_secret is None:
            pytest.skip("no options with a secret given (Target.with_secret)")
        backend = Target(target.backend, target.with_secret(target.options)).create()
        shown = {
            "describe": backend.describe(),
            "destination": backend.destination(),
            "repr": repr(backend),
            "repr of the options": repr(backend.options),
            # What a client library says is shown through explain, masked.
            "explain": backend.explain(RuntimeError(f"refused password {SECRET!r}")),
        }
        if target.proxied is not None:
            with target.proxied() as (proxy, options):
                proxy.set_mode("refuse")
                unreachable = Target(target.backend, target.with_secret(options)).create()
                try:
                    unreachable.open()
                    unreachable.send(synthetic_messages(1))
                except Exception as exc:
                    shown["explain of a failure"] = unreachable.explain(exc)
                finally:
                    unreachable.close()
        leaks = [where for where, text in shown.items() if SECRET in text]
        assert not leaks, f"the secret shows in {leaks}: {shown}"

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _publish(target: Target, batches: list[list[Message]], **overrides: Any) -> None:
        publish_batches(target.create(**overrides), batches)


def _require_read_back(target: Target) -> None:
    if not target.readable:
        pytest.skip("publish-only backend: it cannot be read back (no subscribe)")


def _require_proxy(
    target: Target,
) -> Callable[[], AbstractContextManager[tuple[FaultProxy, dict[str, Any]]]]:
    if target.proxied is None:
        pytest.skip("no fault proxy given (Target.proxied): the backend has no connection")
    return target.proxied


def _require_replay(target: Target) -> None:
    if not target.replays:
        pytest.skip("this target keeps nothing for subscribers that come later")


def _publish_retrying(backend: Backend, messages: list[Message], attempts: int = 20) -> None:
    """What the pipeline does: a failed publish closes, reopens and sends again."""
    for _ in range(attempts):
        try:
            backend.send(messages)
            return
        except Exception:
            backend.close()
            with contextlib.suppress(Exception):
                backend.open()
    raise AssertionError(f"publishing never worked again after {attempts} attempts")


def _one_of(ids: set[str]) -> Callable[[Event], bool]:
    return lambda event: event.id in ids


def _read_ids(events: Subscription, wanted: set[str], timeout: float) -> set[str]:
    seen: set[str] = set()

    def all_seen(event: Event) -> bool:
        seen.add(event.id)
        return wanted <= seen

    read_events(events, until=all_seen, timeout=timeout)
    return seen
