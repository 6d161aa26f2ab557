"""The ``redis`` backend in the conformance suite, against a real Redis.

Redis is taken from ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
Every test gets a stream of its own, deleted afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import redis
from helpers import require_broker

from dask_eventbus.testing import Target, proxied_url, unique_name

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a reachable Redis; skips (or fails under CI) without one."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
        reachable = True
    except redis.RedisError:
        reachable = False
    finally:
        client.close()
    require_broker(reachable, f"Redis at {REDIS_URL}")
    return REDIS_URL


def delete_streams(url: str, *streams: str) -> Callable[[], None]:
    """A cleanup that deletes ``streams`` (and their consumer groups)."""

    def cleanup() -> None:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        try:
            client.delete(*streams)
        finally:
            client.close()

    return cleanup


def redis_harness(request: pytest.FixtureRequest) -> Target:
    url = request.getfixturevalue("redis_url")
    stream = unique_name("dask-eventbus-test-stream")
    return Target(
        "redis",
        {"url": url, "stream": stream},
        bad_options=[
            ({"maxlen": -1}, "maxlen"),
            ({"url": "http://user:secret@localhost:6379"}, "url must start with redis://"),
            ({"socket-timeout": 0}, "socket-timeout"),
            ({"stream": ""}, "stream"),
            ({"tls": {"ca-file": "/tmp/ca.pem"}}, "tls need a rediss:// url"),
            (
                {"url": "rediss://h", "tls": {"server-hostname": "h"}},
                "cannot be used with redis-py",
            ),
        ],
        cleanup=delete_streams(url, stream),
        proxied=proxied_url(
            url, 6379, {"stream": stream, "connect-timeout": "1s", "socket-timeout": "2s"}
        ),
    )


HARNESSES = {"redis": redis_harness}
