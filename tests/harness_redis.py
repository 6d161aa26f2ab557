"""The ``redis`` backend in the conformance suite, against a real Redis.

Redis is the shared one (``redis_url``: ``REDIS_URL`` or 127.0.0.1:6379).
Every test gets a stream of its own, deleted afterwards (``STREAMS``). Tests
that stop or restart Redis start a ``redis-server`` of their own
(``redis_server``).
"""

from __future__ import annotations

import pathlib
import socket
from collections.abc import Callable, Iterator

import pytest
import redis
from helpers import ENDPOINTS, Place, Places, reachable, require_program

from dask_eventbus.testing import (
    SECRET,
    BrokerProcess,
    Target,
    free_port,
    proxied_url,
    unique_name,
)


def delete_streams(url: str, *streams: str) -> None:
    """Delete ``streams`` (and their consumer groups); missing ones are fine."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.delete(*streams)
    finally:
        client.close()


def remove_streams(place: Place) -> None:
    delete_streams(place["url"], place["stream"], *place.extra)


STREAMS = Places(
    make=lambda request: {
        "url": request.getfixturevalue("redis_url"),
        "stream": unique_name("dask-eventbus-test-stream"),
    },
    remove=remove_streams,
)


def redis_harness(request: pytest.FixtureRequest) -> Target:
    place = STREAMS.new(request)
    return Target(
        "redis",
        dict(place),
        bad_options=[
            ({"maxlen": -1}, "maxlen"),
            ({"url": "http://user:secret@localhost:6379"}, "url must start with redis://"),
            ({"publish-timeout": 0}, "publish-timeout"),
            ({"stream": ""}, "stream"),
            ({"tls": {"ca-file": "/tmp/ca.pem"}}, "tls need a rediss:// url"),
            (
                {"url": "rediss://h", "tls": {"server-hostname": "h"}},
                "cannot be used with redis-py",
            ),
        ],
        cleanup=STREAMS.cleanup(place),
        proxied=proxied_url(
            place["url"],
            ENDPOINTS["redis"].port,
            {"stream": place["stream"], "connect-timeout": "1s", "publish-timeout": "2s"},
        ),
        with_secret=lambda options: {**options, "password": SECRET},
    )


class RedisServer(BrokerProcess):
    """A ``redis-server`` of the test's own on a free loopback port."""

    def __init__(self, directory: str, *args: str, tls: dict[str, str] | None = None) -> None:
        port = free_port()
        if tls is None:
            self.url = f"redis://127.0.0.1:{port}/0"
            listen = ["--port", str(port)]
        else:
            self.url = f"rediss://127.0.0.1:{port}/0"
            listen = ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"]
            listen += ["--tls-cert-file", tls["cert"], "--tls-key-file", tls["key"]]
            listen += ["--tls-ca-cert-file", tls["ca"]]
        command = [
            require_program("redis-server"), *listen,
            "--bind", "127.0.0.1", "--dir", directory,
            "--save", "", "--appendonly", "no", "--protected-mode", "no",
            "--loglevel", "warning", *args,
        ]  # fmt: skip
        # Listening is enough with TLS: the TLS tests connect properly.
        ready = self._listening if tls is not None else self._answers_ping
        super().__init__("redis-server", command, port, ready)

    def _listening(self) -> bool:
        return reachable("127.0.0.1", self.port, timeout=1)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def start(*args: str, tls: dict[str, str] | None = None) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = RedisServer(str(directory), *args, tls=tls)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.kill()


HARNESSES = {"redis": redis_harness}
