"""How the ``rabbitmq`` backend joins the conformance suite.

Each test gets its own exchange and its own durable queue (the backend's
``queue`` option): the queue is declared by whichever side connects first and
bound with ``#``, so it holds events published before a consumer subscribes
and the replay test runs. Both are deleted afterwards (``EXCHANGES``). The
broker is the shared one (``rabbitmq_url``: ``RABBITMQ_URL`` or the local
RabbitMQ with guest/guest).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable

import pika
import pytest
from helpers import ENDPOINTS, Place, Places, require_program, with_url_password

from dask_eventbus.testing import SECRET, Target, proxied_url, unique_name


def delete_rabbitmq_objects(
    url: str, *, exchanges: Iterable[str] = (), queues: Iterable[str] = ()
) -> None:
    """Delete queues and exchanges (missing ones are fine)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def rabbitmqctl(*args: str) -> str:
    """What ``rabbitmqctl -q ARGS`` prints (the test skips, or fails on CI, without it)."""
    done = subprocess.run(
        [require_program("rabbitmqctl"), "-q", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def close_broker_connections(connection_name: str) -> int:
    """Have the broker close the connections that carry this name; how many it closed."""
    listed = rabbitmqctl("list_connections", "--no-table-headers", "pid", "client_properties")
    marker = f'{{"connection_name","{connection_name}"}}'
    closed = 0
    for pid in [line.split("\t")[0] for line in listed.splitlines() if marker in line]:
        with contextlib.suppress(subprocess.CalledProcessError):  # it was gone already
            rabbitmqctl("close_connection", pid, "dask-eventbus test closes it")
            closed += 1
    return closed


def new_exchange(request: pytest.FixtureRequest) -> dict[str, str]:
    """An exchange, a queue and a connection name (which rabbitmqctl finds)."""
    return {
        "url": request.getfixturevalue("rabbitmq_url"),
        "exchange": unique_name("dask-eventbus-test-x"),
        "queue": unique_name("dask-eventbus-test-q"),
        "connection-name": unique_name("dask-eventbus-test"),
    }


def remove_exchange(place: Place) -> None:
    """The exchange, its queue and the ``extra`` queues."""
    queues = [place["queue"], *place.extra]
    delete_rabbitmq_objects(place["url"], exchanges=[place["exchange"]], queues=queues)


EXCHANGES = Places(make=new_exchange, remove=remove_exchange)


def rabbitmq_harness(request: pytest.FixtureRequest) -> Target:
    place = EXCHANGES.new(request)
    return Target(
        "rabbitmq",
        dict(place),
        bad_options=[
            ({"exchange-type": "round-robin"}, "exchange-type"),
            ({"url": "http://127.0.0.1:5672"}, "url"),
            ({"url": "amqp://127.0.0.1/?no_such_parameter=1"}, "url"),
            ({"queue-max-length": 0}, "queue-max-length"),
            ({"routing-key": "dask.{nope}"}, "routing-key"),
            ({"publish-timeout": "soon"}, "publish-timeout"),
            ({"tls": {"ca-file": "/ca.pem"}}, "tls"),
        ],
        cleanup=EXCHANGES.cleanup(place),
        proxied=proxied_url(
            place["url"],
            ENDPOINTS["rabbitmq"].port,
            {
                "exchange": place["exchange"],
                "queue": place["queue"],
                "connect-timeout": "2s",
                "publish-timeout": "3s",
            },
        ),
        with_secret=lambda options: with_url_password(options, SECRET),
    )


HARNESSES = {"rabbitmq": rabbitmq_harness}
