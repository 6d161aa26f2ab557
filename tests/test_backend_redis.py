"""The ``redis`` backend against real Redis servers.

Most tests use the Redis at ``REDIS_URL`` (default 127.0.0.1:6379), each on
a stream of its own. Outages, authentication and stalls use a
``redis-server`` each test starts itself on a free loopback port.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dask
import pytest
import redis
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test
from harness_redis import STREAMS, RedisServer
from helpers import (
    FAST_RETRY,
    assert_replayed,
    make_certificates,
    not_for_publishing,
    poll_until_logged,
    publisher_process_imports,
)

from dask_eventbus import ConfigError, Event, EventBusPlugin, create_backend, subscribe
from dask_eventbus.backends.redis import RedisBackend
from dask_eventbus.events import TASK_TRANSITION, key_to_str
from dask_eventbus.testing import (
    is_closing,
    read_events,
    run_workload,
    synthetic_messages,
    unique_name,
)

pytestmark = pytest.mark.timeout(180)


# ---------------------------------------------------------------- fixtures


stream = STREAMS.fixture("stream")


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    yield client
    client.close()


def entries(client: redis.Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return list(client.xrange(stream))


def decoded(client: redis.Redis, stream: str) -> list[Event]:
    return [Event.from_json(fields[b"event"]) for _, fields in entries(client, stream)]


def assert_complete(events: list[Event]) -> None:
    """Every sequence number from 1 to the scheduler's last arrived (repeats allowed)."""
    counts = Counter(e.sequence_number for e in events)
    last = max(counts)
    missing = sorted(set(range(1, last + 1)) - set(counts))
    assert not missing, f"{len(missing)} events lost, sequences {missing[:20]}..."
    closing = [e for e in events if is_closing(e)]
    assert closing and closing[-1].sequence_number == last


def slowinc(x: int, delay: float = 0.02) -> int:
    time.sleep(delay)
    return x + 1


# ---------------------------------------------------------------- layout, e2e


@gen_test(timeout=120)
async def test_events_read_with_plain_xrange_match_the_transition_log(
    redis_url: str, stream: str
) -> None:
    plugin = EventBusPlugin("redis", url=redis_url, stream=stream)
    transition_log = await run_workload(plugin)
    client = redis.Redis.from_url(redis_url)
    try:
        raw = entries(client, stream)
    finally:
        client.close()

    events = []
    for _, fields in raw:
        event = Event.from_json(fields[b"event"])
        events.append(event)
        # The entry's own fields repeat what people filter on in redis-cli.
        expected = {b"type", b"id", b"sequence", b"event"}
        expected |= {b"subject"} if event.subject is not None else set()
        assert set(fields) == expected
        assert fields[b"type"].decode() == event.type
        assert fields[b"id"].decode() == event.id
        assert int(fields[b"sequence"]) == event.sequence_number
        if event.subject is not None:
            assert fields[b"subject"].decode() == event.subject

    sequences = [e.sequence_number for e in events]
    assert sequences == list(range(1, len(events) + 1))
    assert is_closing(events[-1])
    transitions = [
        (e.data["key"], e.data["start"], e.data["finish"], e.data.get("stimulus_id"))
        for e in events
        if e.type == TASK_TRANSITION
    ]
    assert transitions == [
        (key_to_str(t.key), t.start, t.finish, t.stimulus_id) for t in transition_log
    ]
    assert plugin.stats()["published"] == len(events)


def test_bodies_are_stored_untouched_and_subject_is_omitted_when_absent(
    redis_url: str, stream: str, rclient: redis.Redis
) -> None:
    messages = synthetic_messages(3)
    messages[1] = messages[1]._replace(subject=None)
    messages[2] = messages[2]._replace(subject="('ünïcode ☃', 2)")
    backend = create_backend("redis", {"url": redis_url, "stream": stream})
    backend.open()
    try:
        backend.publish(messages)
    finally:
        backend.close()
    raw = entries(rclient, stream)
    assert [fields[b"event"] for _, fields in raw] == [m.body for m in messages]
    assert b"subject" not in raw[1][1] and raw[0][1][b"subject"] == b"task-1"
    assert raw[2][1][b"subject"].decode() == "('ünïcode ☃', 2)"
    assert [int(fields[b"sequence"]) for _, fields in raw] == [1, 2, 3]


def test_maxlen_trims_approximately_and_zero_keeps_everything(
    redis_url: str, stream: str, rclient: redis.Redis
) -> None:
    messages = synthetic_messages(1000)
    untrimmed = stream + "-untrimmed"
    try:
        for name, maxlen in ((stream, 100), (untrimmed, 0)):
            backend = create_backend("redis", {"url": redis_url, "stream": name, "maxlen": maxlen})
            backend.open()
            for i in range(0, len(messages), 100):
                backend.publish(messages[i : i + 100])
            backend.close()
        # MAXLEN ~ trims whole radix-tree nodes: at least maxlen stay.
        assert 100 <= rclient.xlen(stream) < 1000
        assert rclient.xlen(untrimmed) == 1000
    finally:
        rclient.delete(untrimmed)


def test_the_publisher_process_does_not_import_redis_py(
    redis_url: str, stream: str, rclient: redis.Redis
) -> None:
    backend = create_backend("redis", {"url": redis_url, "stream": stream})
    imported = publisher_process_imports(backend)
    assert "dask_eventbus.backends.redis" in imported
    # Imported, redis-py would take most of the process's start; without TLS, ssl is not needed.
    assert not_for_publishing(imported, "redis", "ssl") == []
    assert {
        "dask_eventbus.backends.subscription",
        "dask_eventbus.backends.redis_reader",
    }.isdisjoint(imported)
    assert [e.type for e in decoded(rclient, stream)] == ["dask.log"]


def test_the_url_selects_the_database(redis_url: str, stream: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/3"
    publish_all(url, stream, synthetic_messages(3))
    other = redis.Redis.from_url(url)
    try:
        assert other.xlen(stream) == 3
    finally:
        other.delete(stream)
        other.close()


def test_redis_py_query_parameters_still_work(redis_url: str, stream: str) -> None:
    # The publisher's own connection reads the url's host, port, credentials
    # and db; redis-py publishes for a url with any other of its parameters.
    options = {"url": redis_url + "?health_check_interval=30", "stream": stream}
    assert_replayed("redis", options, synthetic_messages(5))


# ---------------------------------------------------------------- subscribing


def publish_all(url: str, stream: str, messages: list, size: int = 50) -> None:
    backend = create_backend("redis", {"url": url, "stream": stream})
    backend.open()
    try:
        for i in range(0, len(messages), size):
            backend.publish(messages[i : i + size])
    finally:
        backend.close()


def test_subscribe_from_now_skips_older_entries(redis_url: str, stream: str) -> None:
    messages = synthetic_messages(20)
    publish_all(redis_url, stream, messages[:10])
    with subscribe("redis", url=redis_url, stream=stream) as events:
        publish_all(redis_url, stream, messages[10:])
        received = read_events(events, count=10)
        assert events.poll(timeout=0.5) is None
    assert [e.id for e in received] == [m.id for m in messages[10:]]


def test_subscribe_after_a_given_entry_id(
    redis_url: str, stream: str, rclient: redis.Redis
) -> None:
    messages = synthetic_messages(10)
    publish_all(redis_url, stream, messages)
    ids = [entry_id.decode() for entry_id, _ in entries(rclient, stream)]
    with subscribe("redis", url=redis_url, stream=stream, after_id=ids[4]) as events:
        received = read_events(events, count=5)
        assert events.last_entry_id == ids[-1]  # type: ignore[attr-defined]
    assert [e.id for e in received] == [m.id for m in messages[5:]]


def test_consumer_group_resumes_where_the_consumer_stopped(
    redis_url: str, stream: str, rclient: redis.Redis
) -> None:
    messages = synthetic_messages(100)
    publish_all(redis_url, stream, messages)
    group = {"group": "dashboards", "consumer": "dashboard-1"}
    options = {"url": redis_url, "stream": stream, **group}
    # A small count: the first consumer is handed more entries than it
    # yields, and those must come back to it after the restart.
    with subscribe("redis", from_beginning=True, count=30, **options) as events:
        first = read_events(events, count=45)
    with subscribe("redis", count=30, **options) as events:
        rest = read_events(events, count=55)
        assert events.poll(timeout=0.5) is None
    ids = [e.id for e in first + rest]
    assert ids == [m.id for m in messages]
    assert rclient.xpending(stream, "dashboards")["pending"] == 0


def test_consumer_group_redelivers_an_event_whose_processing_failed(
    redis_url: str, stream: str
) -> None:
    messages = synthetic_messages(20)
    publish_all(redis_url, stream, messages)
    options = {"url": redis_url, "stream": stream, "group": "g", "consumer": "c"}
    with pytest.raises(RuntimeError), subscribe("redis", from_beginning=True, **options) as events:
        read_events(events, count=8)
        raise RuntimeError("processing the 8th event failed")
    with subscribe("redis", **options) as events:
        rest = read_events(events, count=13)
    assert [e.id for e in rest] == [m.id for m in messages[7:]]


def test_consumers_in_one_group_share_the_events(redis_url: str, stream: str) -> None:
    messages = synthetic_messages(100)
    with (
        subscribe("redis", url=redis_url, stream=stream, group="g", consumer="a", count=10) as a,
        subscribe("redis", url=redis_url, stream=stream, group="g", consumer="b", count=10) as b,
    ):
        publish_all(redis_url, stream, messages)
        got: dict[str, list[str]] = {"a": [], "b": []}
        deadline = time.monotonic() + 30
        while len(got["a"]) + len(got["b"]) < 100 and time.monotonic() < deadline:
            for name, events in (("a", a), ("b", b)):
                event = events.poll(timeout=0.2)
                if event is not None:
                    got[name].append(event.id)
    assert got["a"] and got["b"]
    assert sorted(got["a"] + got["b"]) == sorted(m.id for m in messages)


def test_group_is_created_again_when_the_stream_is_deleted(
    redis_url: str, stream: str, rclient: redis.Redis
) -> None:
    messages = synthetic_messages(20)
    with subscribe("redis", url=redis_url, stream=stream, group="g", consumer="c") as events:
        publish_all(redis_url, stream, messages[:10])
        assert len(read_events(events, count=10)) == 10
        rclient.delete(stream)
        assert events.poll(timeout=0.5) is None
        publish_all(redis_url, stream, messages[10:])
        later = read_events(events, count=10)
    assert [e.id for e in later] == [m.id for m in messages[10:]]


def test_subscriber_reconnects_after_its_connection_is_killed(
    redis_url: str, stream: str, rclient: redis.Redis
) -> None:
    name = unique_name("reader").replace("-", "_")
    messages = synthetic_messages(20)
    with subscribe("redis", url=redis_url, stream=stream, client_name=name) as events:
        publish_all(redis_url, stream, messages[:10])
        first = read_events(events, count=10)
        killed = kill_clients(rclient, name + "-subscriber")
        assert killed == 1
        publish_all(redis_url, stream, messages[10:])
        rest = read_events(events, count=10)
    assert [e.id for e in first + rest] == [m.id for m in messages]


def test_subscriber_waits_out_a_redis_restart_like_every_subscriber(
    redis_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server()
    options = {"url": server.url, "stream": "events", "connect-timeout": "500ms"}
    messages = synthetic_messages(10)
    with subscribe("redis", **options) as events:
        publish_all(server.url, "events", messages[:5])
        first = read_events(events, count=5)
        server.kill()
        poll_until_logged(events, caplog, "cannot reconnect the Redis consumer yet")
        server.start()  # without persistence: the stream starts empty
        publish_all(server.url, "events", messages[5:])
        rest = read_events(events, count=5)
    assert [e.id for e in first + rest] == [m.id for m in messages]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("lost the Redis consumer connection" in w for w in warnings) == 1, warnings
    assert sum("cannot reconnect the Redis consumer yet" in w for w in warnings) == 1, warnings
    assert sum("the Redis consumer is connected again" in w for w in warnings) == 1, warnings


def test_subscribe_refuses_unknown_or_contradictory_parameters(redis_url: str) -> None:
    backend = create_backend("redis", {"url": redis_url})
    with pytest.raises(TypeError, match="colour"):
        backend.subscribe(colour="red")
    with pytest.raises(TypeError, match="from-beginning or after-id"):
        backend.subscribe(from_beginning=True, after_id="0-1")
    with pytest.raises(TypeError, match="consumer needs group"):
        backend.subscribe(consumer="c")


# ---------------------------------------------------------------- failures


def test_a_refused_xadd_raises_and_explains(
    redis_url: str, stream: str, rclient: redis.Redis
) -> None:
    rclient.set(stream, "not a stream")
    backend = create_backend("redis", {"url": redis_url, "stream": stream})
    backend.open()
    try:
        with pytest.raises(redis.ResponseError) as info:
            backend.publish(synthetic_messages(3))
        assert "3 of 3 XADD" in str(info.value)
        assert "is not a stream" in backend.explain(info.value)
        rclient.delete(stream)
        backend.publish(synthetic_messages(3))  # what a pipeline retry does
    finally:
        backend.close()
    assert rclient.xlen(stream) == 3


def test_authentication_is_explained_and_secrets_stay_hidden(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server("--requirepass", "s3cret-pass")
    wrong_url = server.url.replace("redis://", "redis://:wrong-pass@")
    backend = create_backend("redis", {"url": wrong_url})
    with pytest.raises(redis.AuthenticationError) as info:
        backend.open()
    explanation = backend.explain(info.value)
    assert "refused authentication for user 'default'" in explanation
    for text in (explanation, backend.describe(), repr(backend), repr(backend.options)):
        assert "wrong-pass" not in text

    anonymous = create_backend("redis", {"url": server.url})
    with pytest.raises(redis.AuthenticationError) as info:
        anonymous.open()
    assert "requires authentication" in anonymous.explain(info.value)

    in_query = create_backend("redis", {"url": server.url + "?password=s3cret-pass"})
    in_query.open()
    in_query.close()
    assert "s3cret-pass" not in in_query.describe() + repr(in_query) + repr(in_query.options)

    good = create_backend("redis", {"url": server.url, "password": "s3cret-pass"})
    assert "s3cret-pass" not in repr(good.options) + repr(good)
    revived = pickle.loads(pickle.dumps(good))
    revived.open()
    try:
        revived.publish(synthetic_messages(2))
    finally:
        revived.close()

    with pytest.raises(ConfigError) as config_info:
        EventBusPlugin("redis", url=wrong_url, password="s3cret-pass")
    assert "s3cret-pass" not in str(config_info.value)
    assert "wrong-pass" not in str(config_info.value)


def test_missing_acl_permissions_are_explained(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server()
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser(
        "events", enabled=True, passwords=["+pw"], keys=["dask-events"], commands=["+xadd", "+ping"]
    )
    admin.close()
    url = server.url.replace("redis://", "redis://events:pw@")
    named = create_backend("redis", {"url": url})
    with pytest.raises(redis.exceptions.NoPermissionError) as info:
        named.open()
    assert "client-name to null" in named.explain(info.value)

    backend = create_backend("redis", {"url": url, "client-name": None})
    backend.open()
    try:
        backend.publish(synthetic_messages(2))
    finally:
        backend.close()
    elsewhere = create_backend("redis", {"url": url, "client-name": None, "stream": "other"})
    elsewhere.open()
    try:
        with pytest.raises(redis.exceptions.NoPermissionError) as info:
            elsewhere.publish(synthetic_messages(2))
        explanation = elsewhere.explain(info.value)
        assert "user 'events'" in explanation and "+xadd" in explanation
    finally:
        elsewhere.close()


def test_unix_socket(redis_server: Callable[..., RedisServer], tmp_path: Any) -> None:
    path = str(tmp_path / "redis.sock")
    redis_server("--unixsocket", path, "--unixsocketperm", "700")
    options = {"url": f"unix://{path}?db=0", "stream": "events"}
    messages = synthetic_messages(5)
    publish_all(options["url"], "events", messages)
    with subscribe("redis", from_beginning=True, **options) as events:
        assert [e.id for e in read_events(events, count=5)] == [m.id for m in messages]
    backend = create_backend("redis", options)
    assert path in backend.describe()
    assert f"Redis at unix:{path}" in backend.explain(redis.exceptions.OutOfMemoryError("OOM"))


def test_tls_with_a_ca_and_a_clear_error_without(
    redis_server: Callable[..., RedisServer], tmp_path: Any
) -> None:
    certificates = make_certificates(tmp_path)
    server = redis_server(tls=certificates)
    options = {"url": server.url, "stream": "events", "tls": {"ca-file": certificates["ca"]}}
    assert_replayed("redis", options, synthetic_messages(5))

    # The options the tls block replaced still work, with a warning.
    with pytest.warns(FutureWarning, match="ssl-ca-certs is deprecated: use the tls block"):
        old = {"url": server.url, "stream": "events", "ssl-ca-certs": certificates["ca"]}
        backend = create_backend("redis", old)
    backend.open()
    try:
        backend.publish(synthetic_messages(2, run_id="old"))
    finally:
        backend.close()

    unverified = create_backend("redis", {"url": server.url, "connect-timeout": 5})
    with pytest.raises(redis.ConnectionError) as info:
        unverified.open()
    assert unverified.explain(info.value).startswith(f"TLS with Redis at 127.0.0.1:{server.port}")


def test_a_stalled_server_makes_publish_raise_instead_of_hanging(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server()
    backend = create_backend(
        "redis", {"url": server.url, "socket-timeout": "300ms", "connect-timeout": "300ms"}
    )
    backend.open()
    server.pause()
    try:
        with pytest.raises(redis.TimeoutError) as info:
            backend.publish(synthetic_messages(10))
        assert "did not answer in time" in backend.explain(info.value)
        backend.close()
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            backend.open()
    finally:
        server.resume()
        backend.close()


# ---------------------------------------------------------------- outages


def kill_clients(client: redis.Redis, name: str) -> int:
    killed = 0
    for info in client.client_list():
        if info.get("name") == name:
            killed += client.client_kill_filter(_id=info["id"])
    return killed


def submit_slow_tasks(client: Client, tasks: int) -> list[Any]:
    return client.map(slowinc, range(tasks), key=[f"slowinc-{i}" for i in range(tasks)])


@gen_test(timeout=150)
async def test_client_kill_of_the_publisher_connection_loses_nothing(
    redis_url: str, stream: str
) -> None:
    name = unique_name("publisher").replace("-", "_")
    with dask.config.set(FAST_RETRY):
        plugin = EventBusPlugin("redis", url=redis_url, stream=stream, client_name=name, maxlen=0)
    kills: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        client = redis.Redis.from_url(redis_url, socket_timeout=10)
        try:
            while not stop.wait(0.15):
                kills.append(kill_clients(client, name))
        finally:
            client.close()

    thread = threading.Thread(target=killer)
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=2), Worker(s.address, nthreads=2):
            async with Client(s.address, asynchronous=True) as c:
                thread.start()
                try:
                    futures = submit_slow_tasks(c, 300)
                    results = await c.gather(futures)
                finally:
                    stop.set()
                    await asyncio.to_thread(thread.join)
        transition_count = len(s.transition_log)
    assert results == list(range(1, 301))
    assert sum(kills) >= 2, f"the publisher's connection was killed only {sum(kills)} times"

    client = redis.Redis.from_url(redis_url)
    try:
        events = decoded(client, stream)
    finally:
        client.close()
    assert_complete(events)
    unique = {e.sequence_number: e for e in events}
    assert sum(e.type == TASK_TRANSITION for e in unique.values()) == transition_count
    stats = plugin.stats()
    assert stats["dropped"] == 0 and stats["undelivered"] == 0


@pytest.mark.slow
@gen_test(timeout=150)
async def test_redis_restart_mid_computation_loses_nothing(
    redis_server: Callable[..., RedisServer],
) -> None:
    # An append-only file fsynced on every write keeps the stream across the
    # restart, so the stream itself proves that nothing was lost: the events
    # of before the outage are still there, and those emitted while Redis was
    # down must have been delivered after it came back.
    server = redis_server("--appendonly", "yes", "--appendfsync", "always")
    stream = "dask-events"
    with dask.config.set(FAST_RETRY):
        plugin = EventBusPlugin("redis", url=server.url, stream=stream, maxlen=0)
    check = redis.Redis.from_url(server.url, socket_timeout=10)
    follower = create_backend("redis", {"url": server.url, "stream": stream}).subscribe()
    followed: list[Event] = []

    def follow() -> None:
        # A subscriber that keeps reading through the outage.
        followed.extend(read_events(follower, until=is_closing, timeout=120))

    reader = threading.Thread(target=follow)
    reader.start()
    try:
        async with Scheduler(
            host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]
        ) as s:
            async with Worker(s.address, nthreads=2), Worker(s.address, nthreads=2):
                async with Client(s.address, asynchronous=True) as c:
                    futures = submit_slow_tasks(c, 600)
                    deadline = time.monotonic() + 60
                    while sum(f.done() for f in futures) < 50 or not check.xlen(stream):
                        assert time.monotonic() < deadline, "the computation did not start"
                        await asyncio.sleep(0.02)
                    server.kill()
                    down_at, done_at_kill = time.time(), sum(f.done() for f in futures)
                    await asyncio.sleep(1.5)
                    done_during_outage = sum(f.done() for f in futures) - done_at_kill
                    await asyncio.to_thread(server.start)
                    up_at = time.time()
                    results = await c.gather(futures)
            transition_count = len(s.transition_log)
        await asyncio.to_thread(reader.join, 130)
        assert not reader.is_alive()
        events = decoded(check, stream)
    finally:
        follower.close()
        check.close()
        if reader.is_alive():
            reader.join(130)

    assert results == list(range(1, 601))
    assert done_during_outage > 0, "the computation stalled while Redis was down"
    assert_complete(events)
    unique = {e.sequence_number: e for e in events}
    during = [e for e in unique.values() if down_at <= e.time.timestamp() <= up_at]
    assert during, "no events were emitted during the outage"
    assert sum(e.type == TASK_TRANSITION for e in unique.values()) == transition_count
    stats = plugin.stats()
    assert stats["publish_errors"] > 0
    assert stats["dropped"] == 0 and stats["undelivered"] == 0
    # The follower saw the same events (it may see repeats, never gaps).
    assert {e.sequence_number for e in followed} == set(unique)


def test_backend_class_is_the_registered_one() -> None:
    assert type(create_backend("redis")) is RedisBackend
