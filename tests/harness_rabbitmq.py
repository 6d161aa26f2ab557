"""How the ``rabbitmq`` backend joins the conformance suite.

Each test gets its own exchange and its own durable queue (the backend's
``queue`` option): the queue is declared by whichever side connects first and
bound with ``#``, so it holds events published before a consumer subscribes
and the replay test runs. Both are deleted afterwards. The broker is
``RABBITMQ_URL`` or the local RabbitMQ with guest/guest.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

import pika
import pytest
from helpers import require_broker, with_url_password

from dask_eventbus.testing import SECRET, Target, proxied_url, unique_name

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def rabbitmq_url_from_env() -> str:
    return os.environ.get("RABBITMQ_URL") or DEFAULT_URL


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


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    url = rabbitmq_url_from_env()
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
        reachable = True
    except pika.exceptions.AMQPError:
        reachable = False
    require_broker(reachable, f"RabbitMQ at {pika.URLParameters(url).host}")
    return url


def rabbitmq_harness(request: pytest.FixtureRequest) -> Target:
    url = request.getfixturevalue("rabbitmq_url")
    exchange = unique_name("dask-eventbus-test-x")
    queue = unique_name("dask-eventbus-test-q")
    return Target(
        "rabbitmq",
        {
            "url": url,
            "exchange": exchange,
            "queue": queue,
            "connection-name": unique_name("dask-eventbus-test"),
        },
        bad_options=[
            ({"exchange-type": "round-robin"}, "exchange-type"),
            ({"url": "http://127.0.0.1:5672"}, "url"),
            ({"url": "amqp://127.0.0.1/?no_such_parameter=1"}, "url"),
            ({"queue-max-length": 0}, "queue-max-length"),
            ({"routing-key": "dask.{nope}"}, "routing-key"),
            ({"publish-timeout": "soon"}, "publish-timeout"),
            ({"tls": {"ca-file": "/ca.pem"}}, "tls"),
        ],
        cleanup=lambda: delete_rabbitmq_objects(url, exchanges=[exchange], queues=[queue]),
        proxied=proxied_url(
            url,
            5672,
            {
                "exchange": exchange,
                "queue": queue,
                "connect-timeout": "2s",
                "publish-timeout": "3s",
            },
        ),
        with_secret=lambda options: with_url_password(options, SECRET),
    )


HARNESSES = {"rabbitmq": rabbitmq_harness}
