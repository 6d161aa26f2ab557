"""The ``nats`` backend against real NATS servers with JetStream.

Most tests use the server at ``NATS_URL`` (default 127.0.0.1:4222), each on
a stream and subject prefix of its own. Restarts, authentication and stalls
use a ``nats-server`` each test starts itself on a free loopback port with
a store directory of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dask
import nats
import pytest
from cloudevents.core.formats.json import JSONFormat
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test
from harness_nats import STREAMS
from helpers import (
    ENDPOINTS,
    FAST_RETRY,
    assert_replayed,
    make_certificates,
    not_for_publishing,
    publisher_process_imports,
    reachable,
    require_program,
    via,
)

from dask_eventbus import ConfigError, Event, EventBusPlugin, create_backend, subscribe
from dask_eventbus.backends.nats import NatsBackend, _Connection
from dask_eventbus.bindings.nats import message_id
from dask_eventbus.events import TASK_TRANSITION, key_to_str
from dask_eventbus.testing import (
    BrokerProcess,
    FaultProxy,
    free_port,
    is_closing,
    read_events,
    run_workload,
    synthetic_messages,
)

pytestmark = pytest.mark.timeout(180)


# ---------------------------------------------------------------- fixtures


options = STREAMS.fixture()


class NatsServer(BrokerProcess):
    """A nats-server with JetStream on a free port, its store in ``directory``."""

    def __init__(self, directory: str, *args: str, jetstream: bool = True) -> None:
        port = free_port()
        command = [require_program("nats-server"), "-sd", directory, "-a", "127.0.0.1"]
        if jetstream:
            command.append("-js")
        super().__init__("nats-server", [*command, "-p", str(port), *args], port, self._listening)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _listening(self) -> bool:
        return reachable("127.0.0.1", self.port, timeout=0.5)


@pytest.fixture
def nats_server(tmp_path: Any) -> Iterator[Callable[..., NatsServer]]:
    started: list[NatsServer] = []

    def start(*args: str, jetstream: bool = True) -> NatsServer:
        server = NatsServer(str(tmp_path / f"store-{len(started)}"), *args, jetstream=jetstream)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def stored(url: str, stream: str, subjects: str = ">") -> list[nats.aio.msg.Msg]:
    """Every message ``stream`` holds, read by a plain nats-py consumer of its own."""
    client = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
    try:
        js = client.jetstream()
        total = (await js.stream_info(stream)).state.messages
        pull = await js.pull_subscribe(subjects, stream=stream)
        messages: list[nats.aio.msg.Msg] = []
        while len(messages) < total:
            batch = await pull.fetch(500, timeout=5)
            for message in batch:
                await message.ack()
            messages += batch
        return messages
    finally:
        await client.close()


def assert_complete(events: list[Event]) -> None:
    """Every sequence number from 1 to the scheduler's last, each exactly once."""
    counts = Counter(e.sequence_number for e in events)
    last = max(counts)
    assert sorted(counts) == list(range(1, last + 1)), "events lost"
    assert set(counts.values()) == {1}, "events duplicated"
    assert is_closing(events[-1])


def slowinc(x: int, delay: float = 0.02) -> int:
    time.sleep(delay)
    return x + 1


def nats_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dask-eventbus-nats")]


# ---------------------------------------------------------------- a real cluster


@pytest.mark.parametrize("mode", ["thread", "process"])
@gen_test(timeout=150)
async def test_a_real_cluster_is_read_back_complete_and_in_order_by_a_plain_consumer(
    options: dict[str, Any], mode: str
) -> None:
    with dask.config.set({"eventbus.pipeline.mode": mode}):
        plugin = EventBusPlugin("nats", **options)
    assert plugin.mode == mode
    transition_log = await run_workload(plugin)
    messages = await stored(options["url"], options["stream"])

    fmt = JSONFormat()
    events = []
    for message in messages:
        cloudevent = fmt.read(None, message.data)
        assert cloudevent.get_specversion() == "1.0"
        event = Event.from_json(message.data)
        events.append(event)
        routing = event.type
        if event.type == TASK_TRANSITION:
            routing += f".{event.data['start']}.{event.data['finish']}"
        assert message.subject == f"{options['subject-prefix']}.{routing}"
        assert message.headers is not None
        assert message.headers["Content-Type"] == "application/cloudevents+json"
        assert message.headers["Nats-Msg-Id"] == f"{event.source}#{event.id}"
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    assert_complete(events)
    transitions = [
        (e.data["key"], e.data["start"], e.data["finish"], e.data.get("stimulus_id"))
        for e in events
        if e.type == TASK_TRANSITION
    ]
    assert transitions == [
        (key_to_str(t.key), t.start, t.finish, t.stimulus_id) for t in transition_log
    ]
    assert plugin.stats()["published"] == len(events)
    assert not nats_threads(), "the backend's loop thread outlived the plugin"


@pytest.mark.slow
@gen_test(timeout=150)
async def test_a_server_restart_mid_computation_loses_and_duplicates_nothing(
    nats_server: Callable[..., NatsServer],
) -> None:
    server = nats_server()
    with dask.config.set(FAST_RETRY):
        plugin = EventBusPlugin("nats", url=server.url, **{"connect-timeout": "1s"})
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=2), Worker(s.address, nthreads=2):
            async with Client(s.address, asynchronous=True) as c:
                futures = c.map(slowinc, range(600), key=[f"slowinc-{i}" for i in range(600)])
                deadline = time.monotonic() + 60
                while sum(f.done() for f in futures) < 50 or not plugin.stats()["published"]:
                    assert time.monotonic() < deadline, "the computation did not start"
                    await asyncio.sleep(0.02)
                server.kill()
                done_at_kill = sum(f.done() for f in futures)
                await asyncio.sleep(1.5)
                done_during_outage = sum(f.done() for f in futures) - done_at_kill
                await asyncio.to_thread(server.start)
                results = await c.gather(futures)
        transition_count = len(s.transition_log)
    events = [Event.from_json(m.data) for m in await stored(server.url, "dask-events")]

    assert results == list(range(1, 601))
    assert done_during_outage > 0, "the computation stalled while NATS was down"
    # Batches retried after the restart were dropped as duplicates by JetStream.
    assert_complete(events)
    assert sum(e.type == TASK_TRANSITION for e in events) == transition_count
    stats = plugin.stats()
    assert stats["publish_errors"] > 0
    assert stats["dropped"] == 0 and stats["undelivered"] == 0


def test_a_retried_batch_is_not_stored_twice_within_the_duplicate_window(
    options: dict[str, Any],
) -> None:
    messages = synthetic_messages(50)
    backend = create_backend("nats", options)
    backend.open()
    assert isinstance(backend._sender, _Connection)  # the publisher's own connection
    try:
        backend.send(messages)
        # As the pipeline does when a batch's acknowledgements were lost.
        backend.close()
        backend.open()
        backend.send(messages)
        backend.send(messages[20:30])
    finally:
        backend.close()
    stored_messages = asyncio.run(stored(options["url"], options["stream"]))
    assert [m.headers["Nats-Msg-Id"] for m in stored_messages if m.headers] == [
        message_id(m) for m in messages
    ]


async def stream_config(url: str, stream: str) -> Any:
    client = await nats.connect(url)
    try:
        return (await client.jetstream().stream_info(stream)).config
    finally:
        await client.close()


async def made_by_nats_py(url: str, stream: str, **limits: Any) -> Any:
    """The configuration of a stream nats-py's add_stream makes (then deleted)."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        config = nats.js.api.StreamConfig(
            name=stream,
            subjects=[f"{stream}.>"],
            storage=nats.js.api.StorageType.FILE,
            **{"duplicate_window": 120.0, **limits},
        )
        await js.add_stream(config)
        try:
            return (await js.stream_info(stream)).config
        finally:
            await js.delete_stream(stream)
    finally:
        await client.close()


def differences(ours: Any, theirs: Any) -> dict[str, Any]:
    """The fields in which two stream configurations differ, but for name and subjects."""
    return {
        name: (value, getattr(theirs, name))
        for name, value in vars(ours).items()
        if name not in ("name", "subjects") and value != getattr(theirs, name)
    }


def test_the_stream_is_created_with_the_configured_limits(options: dict[str, Any]) -> None:
    limits = {"max-age": "1h", "max-bytes": 10_000_000, "max-msgs": 500, "duplicate-window": "30s"}
    backend = create_backend("nats", {**options, **limits})
    backend.open()
    backend.close()

    url = options["url"]
    made = asyncio.run(stream_config(url, options["stream"]))
    assert made.subjects == [f"{options['subject-prefix']}.>"]
    assert made.storage == nats.js.api.StorageType.FILE
    assert (made.max_age, made.max_bytes, made.max_msgs) == (3600, 10_000_000, 500)
    assert made.duplicate_window == 30

    # The publisher's own connection makes the stream nats-py's add_stream makes.
    by_nats_py = f"{options['stream']}-py"
    limited = asyncio.run(
        made_by_nats_py(
            url, by_nats_py, max_age=3600.0, max_bytes=10_000_000, max_msgs=500,
            duplicate_window=30.0,
        )
    )  # fmt: skip
    assert differences(made, limited) == {}
    defaults = f"{options['stream']}-defaults"
    options.extra.append(defaults)  # type: ignore[attr-defined]
    backend = create_backend("nats", {**options, "stream": defaults, "subject-prefix": defaults})
    backend.open()
    backend.close()
    ours = asyncio.run(stream_config(url, defaults))
    assert (
        differences(ours, asyncio.run(made_by_nats_py(url, by_nats_py, max_msgs=1_000_000))) == {}
    )


def test_without_create_missing_a_missing_stream_is_explained(options: dict[str, Any]) -> None:
    backend = create_backend("nats", {**options, "create-missing": False})
    with pytest.raises(nats.js.errors.NotFoundError) as info:
        backend.open()
    assert "eventbus.backends.nats.create-missing: true" in backend.explain(info.value)
    assert not nats_threads()


# ---------------------------------------------------------------- the publisher's own connection


def test_the_publisher_process_does_not_import_nats_py(options: dict[str, Any]) -> None:
    backend = create_backend("nats", options)
    # The stream is missing at first: making it needs nats-py no more than
    # publishing does.
    for _ in range(2):
        imported = publisher_process_imports(backend)
        assert "dask_eventbus.backends.nats" in imported
        assert not_for_publishing(imported, "nats", "asyncio", "ssl") == []
        assert {
            "dask_eventbus.backends.loop",
            "dask_eventbus.backends.subscription",
            "dask_eventbus.backends.nats_client",
            "dask_eventbus.backends.nats_reader",
        }.isdisjoint(imported)
    held = asyncio.run(stored(options["url"], options["stream"]))
    # The same event twice (the same source and id): stored once.
    assert [Event.from_json(m.data).type for m in held] == ["dask.log"]


@pytest.mark.parametrize(
    ("server_args", "given"),
    [
        (("--user", "alice", "--pass", "right-pw-1"), {"user": "alice", "password": "right-pw-1"}),
        (("--user", "alice", "--pass", "right-pw-1"), {"url": "nats://alice:right-pw-1@{where}"}),
        (("--auth", "right-token-1"), {"token": "right-token-1"}),
    ],
    ids=["password", "password-in-url", "token"],
)
def test_accepted_credentials_publish_on_the_own_connection(
    nats_server: Callable[..., NatsServer], server_args: tuple[str, ...], given: dict[str, str]
) -> None:
    server = nats_server(*server_args)
    url = given.get("url", server.url).format(where=f"127.0.0.1:{server.port}")
    backend = create_backend("nats", {**given, "url": url})
    messages = synthetic_messages(5)
    backend.open()
    try:
        assert isinstance(backend._sender, _Connection)
        backend.send(messages)
    finally:
        backend.close()
    credentials: dict[str, Any] = {}
    if "token" in given:
        credentials["token"] = given["token"]
    else:
        credentials.update(user="alice", password="right-pw-1")

    async def held() -> list[str]:
        client = await nats.connect(server.url, allow_reconnect=False, **credentials)
        try:
            pull = await client.jetstream().pull_subscribe(">", stream="dask-events")
            return [m.headers["Nats-Msg-Id"] for m in await pull.fetch(10, timeout=2)]
        finally:
            await client.close()

    assert asyncio.run(held()) == [message_id(m) for m in messages]


def test_a_publish_the_server_does_not_permit_is_explained(
    nats_server: Callable[..., NatsServer], tmp_path: Any
) -> None:
    # alice may use JetStream's API and read replies, but not publish events.
    config = tmp_path / "permissions.conf"
    config.write_text(
        "authorization { users = [ {user: alice, password: pw-1, permissions: "
        '{publish: {allow: ["$JS.API.>"]}, subscribe: {allow: ["_INBOX.>"]}}} ] }\n'
    )
    server = nats_server("-c", str(config))
    backend = create_backend("nats", {"url": server.url, "user": "alice", "password": "pw-1"})
    backend.open()
    try:
        with pytest.raises(Exception) as info:
            backend.send(synthetic_messages(2))
    finally:
        backend.close()
    explained = backend.explain(info.value)
    assert explained.startswith(f"NATS at {server.url} denied permission: let the user publish")
    assert "Permissions Violation for Publish to" in explained and "pw-1" not in explained


def test_a_connection_the_server_dropped_while_idle_is_made_again_before_a_batch(
    nats_server: Callable[..., NatsServer], tmp_path: Any
) -> None:
    # A server that finds a connection stale after half a second without PONG.
    config = tmp_path / "stale.conf"
    config.write_text('ping_interval: "200ms"\nping_max: 1\n')
    server = nats_server("-c", str(config))
    backend = create_backend("nats", {"url": server.url})
    backend.open()
    try:
        backend.send(synthetic_messages(3, run_id="before"))
        connection = backend._sender
        assert isinstance(connection, _Connection)
        first = connection._socket
        time.sleep(1.5)  # idle: nobody answers the server's PINGs
        backend.send(synthetic_messages(3, run_id="after"))
        assert connection._socket is not first, "the dropped connection was not made again"
    finally:
        backend.close()
    assert len(asyncio.run(stored(server.url, "dask-events"))) == 6


def test_without_jetstream_opening_raises_as_nats_py_does(
    nats_server: Callable[..., NatsServer],
) -> None:
    server = nats_server(jetstream=False)
    backend = create_backend("nats", {"url": server.url, "publish-timeout": "2s"})
    with pytest.raises(nats.js.errors.ServiceUnavailableError) as info:
        backend.open()
    assert "refused" in backend.explain(info.value)
    assert backend._sender is None


def test_a_nats_url_to_a_server_requiring_tls_speaks_tls_as_nats_py_does(
    nats_server: Callable[..., NatsServer], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    certificates = make_certificates(tmp_path)
    server = nats_server(
        "--tls", "--tlscert", certificates["cert"], "--tlskey", certificates["key"]
    )
    # Python's default context, as nats-py takes it, here trusting the test's CA.
    default_context = ssl.create_default_context
    monkeypatch.setattr(
        ssl, "create_default_context", lambda: default_context(cafile=certificates["ca"])
    )
    options = {"url": f"nats://127.0.0.1:{server.port}"}
    backend = create_backend("nats", options)
    assert backend._own_connection
    assert_replayed("nats", options, synthetic_messages(3))


def test_tls_creds_and_nkeys_publish_through_nats_py(tmp_path: Any) -> None:
    # Publishing over TLS itself: test_tls_with_a_ca_and_a_clear_error_without.
    for given in (
        {"url": "tls://127.0.0.1:4222"},
        {"tls": {"verify": False}},
        {"creds-file": str(tmp_path / "user.creds")},
        {"nkey-seed-file": str(tmp_path / "user.nk")},
    ):
        assert not create_backend("nats", given)._own_connection, given
    assert create_backend("nats", {"token": "x"})._own_connection


# ---------------------------------------------------------------- reading back


def test_a_durable_consumer_resumes_where_it_stopped(options: dict[str, Any]) -> None:
    messages = synthetic_messages(20)
    backend = create_backend("nats", options)
    backend.open()
    try:
        backend.send(messages)
    finally:
        backend.close()
    with subscribe("nats", from_beginning=True, durable="resumer", **options) as events:
        first = read_events(events, count=10)
    with subscribe("nats", durable="resumer", **options) as events:
        rest = read_events(events, count=10)
        assert events.poll(timeout=1.0) is None
    assert [e.id for e in first + rest] == [m.id for m in messages]


def test_subject_filters_select_on_the_server(options: dict[str, Any]) -> None:
    messages = synthetic_messages(40)
    prefix = options["subject-prefix"]
    wanted = [m for m in messages if m.routing_key.endswith(".memory")]
    with subscribe(
        "nats", subjects=[f"{prefix}.dask.task.transition.*.memory"], **options
    ) as events:
        backend = create_backend("nats", options)
        backend.open()
        try:
            backend.send(messages)
        finally:
            backend.close()
        received = read_events(events, count=len(wanted))
        assert events.poll(timeout=1.0) is None
    assert [e.id for e in received] == [m.id for m in wanted]
    # Types become subject filters where the server takes several (2.10+),
    # and filter in the subscription anyway.
    with subscribe("nats", from_beginning=True, types=["dask.task.*"], **options) as events:
        assert [e.id for e in read_events(events, count=40)] == [m.id for m in messages]
    with subscribe("nats", from_beginning=True, types=["dask.worker.*"], **options) as events:
        assert events.poll(timeout=1.0) is None


def test_the_subscriber_follows_the_stream_through_a_server_restart(
    nats_server: Callable[..., NatsServer],
) -> None:
    server = nats_server()
    first, second = synthetic_messages(10, run_id="first"), synthetic_messages(10, run_id="then")
    with subscribe("nats", url=server.url, **{"connect-timeout": "1s"}) as events:
        backend = create_backend("nats", {"url": server.url})
        backend.open()
        backend.send(first)
        backend.close()
        assert [e.id for e in read_events(events, count=10)] == [m.id for m in first]
        server.kill()
        assert events.poll(timeout=1.0) is None
        server.start()
        backend.open()
        backend.send(second)
        backend.close()
        assert [e.id for e in read_events(events, count=10)] == [m.id for m in second]


def test_a_durable_consumer_survives_a_server_restart(
    nats_server: Callable[..., NatsServer],
) -> None:
    server = nats_server()
    first, second = synthetic_messages(10, run_id="first"), synthetic_messages(10, run_id="then")
    backend = create_backend("nats", {"url": server.url})
    backend.open()
    backend.send(first)
    backend.close()
    options = {"url": server.url, "connect-timeout": "1s"}
    with subscribe("nats", durable="survivor", from_beginning=True, **options) as events:
        assert [e.id for e in read_events(events, count=5)] == [m.id for m in first[:5]]
        server.kill()
        server.start()
        backend.open()
        backend.send(second)
        backend.close()
        # Unacknowledged events come again, none is skipped.
        rest = read_events(events, until=lambda e: e.id == second[-1].id)
    ids = [e.id for e in rest]
    assert set(ids) >= {m.id for m in first[5:] + second}
    assert ids[-10:] == [m.id for m in second]


def test_subscribe_refuses_unknown_parameters(options: dict[str, Any]) -> None:
    backend = create_backend("nats", options)
    with pytest.raises(TypeError, match="unknown field `group`"):
        backend.subscribe(group="g")
    with pytest.raises(ValueError, match="durable"):
        backend.subscribe(durable="a.b")


# ---------------------------------------------------------------- outages, lifecycle


def test_close_releases_connection_and_threads_and_is_repeatable(options: dict[str, Any]) -> None:
    before = threading.active_count()
    backend = create_backend("nats", options)
    for _ in range(3):
        backend.open()
        backend.send(synthetic_messages(5))
        backend.close()
        backend.close()
    assert threading.active_count() == before
    assert not nats_threads()
    again = pickle.loads(pickle.dumps(backend))
    again.open()
    connection = again._sender
    assert isinstance(connection, _Connection)
    sock = connection._socket
    assert sock is not None
    again.close()
    assert sock.fileno() == -1 and connection._socket is None


def test_abort_makes_a_stalled_publish_give_up(nats_url: str, options: dict[str, Any]) -> None:
    with FaultProxy(ENDPOINTS["nats"].address) as proxy:
        backend = create_backend(
            "nats", {**options, "url": via(nats_url, proxy.port), "publish-timeout": "60s"}
        )
        backend.open()
        proxy.set_mode("stall")
        failure: list[BaseException] = []

        def publish() -> None:
            try:
                backend.send(synthetic_messages(10))
            except BaseException as exc:
                failure.append(exc)

        publisher = threading.Thread(target=publish)
        started = time.monotonic()
        publisher.start()
        time.sleep(0.5)
        backend.abort()
        publisher.join(10)
        assert not publisher.is_alive() and failure
        assert time.monotonic() - started < 5
        assert "aborted" in backend.explain(failure[0])
        proxy.set_mode("pass")
        proxy.cut()
        backend.close()
    assert not nats_threads()


def test_a_stalled_server_makes_publish_raise_in_time(
    options: dict[str, Any], nats_url: str
) -> None:
    with FaultProxy(ENDPOINTS["nats"].address) as proxy:
        backend = create_backend(
            "nats", {**options, "url": via(nats_url, proxy.port), "publish-timeout": "1s"}
        )
        backend.open()
        proxy.set_mode("stall")
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            backend.send(synthetic_messages(10))
        assert time.monotonic() - started < 4
        assert "did not answer in time" in backend.explain(info.value)
        proxy.set_mode("pass")
        proxy.cut()
        backend.close()


def test_no_server_is_explained_with_the_address() -> None:
    port = free_port()
    backend = create_backend("nats", {"url": f"nats://127.0.0.1:{port}", "connect-timeout": "1s"})
    with pytest.raises(nats.errors.NoServersError) as info:
        backend.open()
    explained = backend.explain(info.value)
    assert f"127.0.0.1:{port}" in explained and "connection refused" in explained
    assert not nats_threads()


@pytest.mark.parametrize(
    ("server_args", "given", "secret"),
    [
        (("--user", "alice", "--pass", "right-pw-1"), {"user": "alice"}, "wrong-pw-42"),
        (("--auth", "right-token-1"), {}, "wrong-token-42"),
    ],
    ids=["password", "token"],
)
def test_refused_credentials_are_explained_and_secrets_stay_hidden(
    nats_server: Callable[..., NatsServer],
    server_args: tuple[str, ...],
    given: dict[str, str],
    secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = nats_server(*server_args)
    key = "password" if given else "token"
    backend = create_backend("nats", {"url": server.url, key: secret, **given})
    with pytest.raises(Exception) as info:
        backend.open()
    explained = backend.explain(info.value)
    assert "refused authentication" in explained
    for text in (explained, repr(backend), repr(backend.options), backend.describe(), caplog.text):
        assert secret not in text
    in_url = create_backend("nats", {"url": f"nats://alice:{secret}@127.0.0.1:{server.port}"})
    assert secret not in repr(in_url) and secret not in repr(in_url.options)
    assert not nats_threads()


def test_tls_asked_for_but_not_offered_is_refused_before_credentials_go_out(
    options: dict[str, Any],
) -> None:
    backend = create_backend("nats", {**options, "url": options["url"].replace("nats:", "tls:")})
    with pytest.raises(nats.errors.Error) as info:
        backend.open()
    assert "does not offer TLS" in backend.explain(info.value)
    assert not nats_threads()

    # A server without TLS that asks for credentials never sees them.
    received = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(
                    b'INFO {"server_id":"x","version":"2.9.10","auth_required":true,'
                    b'"headers":true,"max_payload":1048576}\r\n'
                )
                connection.settimeout(2.0)
                with contextlib.suppress(OSError):
                    while chunk := connection.recv(4096):
                        received.extend(chunk)

        server = threading.Thread(target=serve)
        server.start()
        plaintext = create_backend(
            "nats",
            {"url": f"tls://127.0.0.1:{port}", "user": "alice", "password": "never-sent-pw"},
        )
        with pytest.raises(nats.errors.Error):
            plaintext.open()
        server.join(10)
    assert b"never-sent-pw" not in received and b"CONNECT" not in received


def test_tls_with_a_ca_and_a_clear_error_without(
    nats_server: Callable[..., NatsServer], tmp_path: Any
) -> None:
    certificates = make_certificates(tmp_path)
    server = nats_server(
        "--tls", "--tlscert", certificates["cert"], "--tlskey", certificates["key"]
    )
    url = f"tls://127.0.0.1:{server.port}"
    with_ca = {"url": url, "tls": {"ca-file": certificates["ca"]}}
    assert_replayed("nats", with_ca, synthetic_messages(5))
    # A nats:// url with the tls block speaks TLS too.
    assert_replayed(
        "nats", {**with_ca, "url": f"nats://127.0.0.1:{server.port}"}, synthetic_messages(3)
    )
    untrusted = create_backend("nats", {"url": url})
    with pytest.raises(Exception) as info:
        untrusted.open()
    assert "TLS with NATS" in untrusted.explain(info.value)
    plain = create_backend("nats", {"url": f"nats://127.0.0.1:{server.port}"})
    with pytest.raises(Exception) as info:
        plain.open()
    assert "TLS" in plain.explain(info.value)
    assert not nats_threads()


def test_several_servers_are_tried_in_turn(options: dict[str, Any]) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    backend = create_backend("nats", {**options, "url": f"{dead},{options['url']}"})
    backend.open()
    try:
        backend.send(synthetic_messages(3))
    finally:
        backend.close()
    listed = create_backend("nats", {**options, "url": [dead, options["url"]]})
    assert listed.options.servers() == [dead, options["url"]]


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"eventbus\.backends\.nats.*subject-prefix"):
        create_backend("nats", {"subject-prefix": "a..b"})
    with pytest.raises(ConfigError, match="user and password"):
        create_backend("nats", {"password": "only-a-password"})


def test_backend_class_is_the_registered_one() -> None:
    assert type(create_backend("nats")) is NatsBackend


def test_batched_mode_publishes_one_message_per_batch(options: dict[str, Any]) -> None:
    messages = synthetic_messages(30)
    backend = create_backend("nats", {**options, "content-mode": "batched"})
    backend.open()
    try:
        backend.send(messages[:10])
        backend.send(messages[10:])
    finally:
        backend.close()
    held = asyncio.run(stored(options["url"], options["stream"]))
    assert [m.subject for m in held] == [f"{options['subject-prefix']}.dask.eventbus.batch"] * 2
    assert [len(json.loads(m.data)) for m in held] == [10, 20]
    assert held[0].headers == {
        "Content-Type": "application/cloudevents-batch+json",
        "Nats-Msg-Id": message_id(messages[0]),
    }
