"""The kombu backend in the conformance suite, over three Kombu transports.

* ``kombu-amqp``: ``amqp://`` against the shared RabbitMQ (``rabbitmq_url``),
  a named durable queue per test;
* ``kombu-redis``: ``redis://`` against the shared Redis (``redis_url``), a
  named queue per test;
* ``kombu-memory``: ``memory://`` in this process, with the exclusive
  auto-deleted queue a subscriber gets when no queue is named.

Every test gets its own exchange and queue names (``AMQP``, ``REDIS``,
``MEMORY``); cleanup deletes them, and on Redis also the binding keys Kombu
keeps (``_kombu.binding.<exchange>``) and any unacknowledged copies Kombu
parked in its ``unacked`` hash.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from helpers import ENDPOINTS, Place, Places, with_url_password

from dask_eventbus.testing import SECRET, Target, proxied_url, unique_name

BAD_OPTIONS = [
    ({"exchange-type": "headers"}, "exchange-type"),
    ({"publish-timeout": 0}, "publish-timeout"),
    ({"url": "nosuch://host"}, "url"),
    ({"routing-key": "{worker}"}, "routing-key"),
    ({"delivery-mode": "sometimes"}, "delivery-mode"),
    ({"url": "amqp://h//", "tls": {"key-password": "pw"}}, "cannot be used with py-amqp"),
    ({"url": "filesystem://", "tls": {"ca-file": "/ca.pem"}}, "amqp and redis transports only"),
    ({"tls": {"verify": "no"}}, "tls.verify"),
]


def delete_amqp(url: str, exchange: str, queues: list[str]) -> None:
    """Delete ``queues`` and ``exchange`` on RabbitMQ (missing ones are fine)."""
    from kombu import Connection

    with Connection(url, connect_timeout=10) as conn:
        for queue in queues:
            # A missing entity closes the channel: one channel per deletion.
            with contextlib.suppress(Exception), conn.channel() as channel:
                channel.queue_delete(queue)
        with contextlib.suppress(Exception), conn.channel() as channel:
            channel.exchange_delete(exchange)


def delete_redis(url: str, exchange: str, queues: list[str]) -> None:
    """Delete the keys the Kombu Redis transport made for ``exchange``.

    The exchange itself is not stored in Redis; its bindings are, in
    ``_kombu.binding.<exchange>`` (members ``key\\x06\\x16pattern\\x06\\x16queue``),
    and each queue is a list (plus one list per priority step).
    """
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        sep = b"\x06\x16"
        tables = [f"_kombu.binding.{exchange}", f"_kombu.binding_permanent.{exchange}"]
        names = set(queues)
        for table in tables:
            for member in client.smembers(table):
                names.add(member.split(sep)[-1].decode())
        keys = [*tables]
        for name in names:
            keys.append(name)
            keys.extend(client.scan_iter(match=f"{name}\x06\x16*"))
        client.delete(*keys)
        client.zrem("_kombu.binding_deadlines", exchange)
        # Messages consumed but never acknowledged wait in "unacked" until
        # Kombu restores them; ours name our exchange.
        marker = exchange.encode()
        for tag, payload in client.hscan_iter("unacked"):
            if marker in payload:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()


def delete_memory(exchange: str) -> None:
    """Forget ``exchange`` and its queues in this process's memory transport."""
    from kombu import Connection

    with Connection("memory://") as conn, conn.channel() as channel:
        if exchange not in channel.state.exchanges:
            return
        for _, _, queue in channel.get_table(exchange):
            channel.queue_delete(queue)
        channel.exchange_delete(exchange)


def on_broker(url_fixture: str, delete: Callable[[str, str, list[str]], None]) -> Places:
    """An exchange and a named queue of their own on the broker at the url
    ``url_fixture`` gives, deleted with ``delete``."""
    return Places(
        make=lambda request: {
            "url": request.getfixturevalue(url_fixture),
            "exchange": unique_name("dask-eventbus-test-ex"),
            "queue": unique_name("dask-eventbus-test-q"),
        },
        remove=lambda place: delete(
            place["url"], place["exchange"], [place["queue"], *place.extra]
        ),
    )


AMQP = on_broker("rabbitmq_url", delete_amqp)
REDIS = on_broker("redis_url", delete_redis)
# Without a queue: subscribers get exclusive auto-deleted ones.
MEMORY = Places(
    make=lambda request: {"url": "memory://", "exchange": unique_name("dask-eventbus-test-ex")},
    remove=lambda place: delete_memory(place["exchange"]),
)


def proxied_options(place: Place) -> dict[str, Any]:
    """The fault suite's way in: the same exchange and queue, short timeouts."""
    return {
        "exchange": place["exchange"],
        "queue": place["queue"],
        "connect-timeout": "2s",
        "publish-timeout": "3s",
    }


def broker_harness(places: Places, endpoint: str) -> Callable[[pytest.FixtureRequest], Target]:
    def harness(request: pytest.FixtureRequest) -> Target:
        place = places.new(request)
        return Target(
            "kombu",
            dict(place),
            bad_options=BAD_OPTIONS,
            cleanup=places.cleanup(place),
            proxied=proxied_url(place["url"], ENDPOINTS[endpoint].port, proxied_options(place)),
            with_secret=lambda options: with_url_password(options, SECRET),
        )

    return harness


def kombu_memory_harness(request: pytest.FixtureRequest) -> Target:
    place = MEMORY.new(request)
    return Target(
        "kombu",
        dict(place),
        bad_options=BAD_OPTIONS,
        cleanup=MEMORY.cleanup(place),
        replays=False,
    )


LOCAL = {"kombu-memory"}  # memory:// has no connection to break
NO_REPLAY = {"kombu-memory"}  # memory:// keeps nothing for late subscribers
NO_SECRET = {"kombu-memory"}  # memory:// has no credentials
HARNESSES: dict[str, Callable[[pytest.FixtureRequest], Any]] = {
    "kombu-amqp": broker_harness(AMQP, "rabbitmq"),
    "kombu-redis": broker_harness(REDIS, "redis"),
    "kombu-memory": kombu_memory_harness,
}
