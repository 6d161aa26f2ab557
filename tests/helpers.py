"""Helpers the project's test modules share beyond ``dask_eventbus.testing``."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

from dask_eventbus import create_backend, subscribe
from dask_eventbus.backends import Backend, Message
from dask_eventbus.events import Event
from dask_eventbus.testing import read_events

IN_CI = bool(os.environ.get("CI"))

# Fast retries, so that an outage of a second or two is over quickly.
# The dask command of the environment running the tests, not whichever comes
# first on PATH (CI runs the suite again in an environment of the oldest
# releases without activating it).
DASK = str(Path(sys.executable).parent / "dask")
FAST_RETRY = {"eventbus.retry.initial-backoff": "50ms", "eventbus.retry.max-backoff": "300ms"}


# ---------------------------------------------------------------- brokers


@dataclass(frozen=True)
class Endpoint:
    """A shared service the tests reach: at ``env``'s url when it is set, else
    at ``default`` (none for Kafka: the session starts a broker of its own)."""

    what: str
    env: str
    default: str | None
    port: int
    """The port when the url names none."""

    @property
    def url(self) -> str | None:
        return os.environ.get(self.env) or self.default

    @property
    def address(self) -> tuple[str, int]:
        """Where the url's (first) server listens."""
        assert self.url is not None, f"{self.env} is not set"
        first = self.url.split(",")[0]
        parts = urlsplit(first if "//" in first else f"//{first}")  # Kafka's host:port
        return parts.hostname or "127.0.0.1", parts.port or self.port


# The one place that spells the services' urls (README.md, "Run the tests").
ENDPOINTS = {
    "redis": Endpoint("Redis", "REDIS_URL", "redis://127.0.0.1:6379/0", 6379),
    # %2F: the vhost "/" as both pika and Kombu read it (pika reads // as "").
    "rabbitmq": Endpoint("RabbitMQ", "RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F", 5672),
    "nats": Endpoint("NATS", "NATS_URL", "nats://127.0.0.1:4222", 4222),
    "kafka": Endpoint("Kafka", "KAFKA_BOOTSTRAP_SERVERS", None, 9092),
    "postgresql": Endpoint(
        "PostgreSQL", "EVENTBUS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432", 5432
    ),
}


def reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at ``host``:``port``."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def require_endpoint(name: str) -> str:
    """The url of the shared service ``name`` (in :data:`ENDPOINTS`); skips
    the test when nothing listens there (fails it under CI)."""
    endpoint = ENDPOINTS[name]
    url = endpoint.url
    if url is None or not reachable(*endpoint.address):
        _unavailable(
            f"{endpoint.what} at {url} is not reachable (set {endpoint.env} for another)",
            "CI must test against it",
        )
    return url


def via(url: str, port: int, scheme: str | None = None) -> str:
    """``url`` sent to 127.0.0.1:``port`` instead (a fault proxy in front of
    its server), credentials and path kept; ``scheme`` replaces its scheme."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(scheme=scheme or parts.scheme, netloc=netloc))


def with_url_password(options: dict[str, Any], password: str) -> dict[str, Any]:
    """``options`` whose ``url`` carries ``password`` (for Target.with_secret)."""
    parts = urlsplit(options["url"])
    user = parts.username or "guest"
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return {**options, "url": urlunsplit(parts._replace(netloc=netloc))}


def _unavailable(message: str, in_ci: str) -> NoReturn:
    """Skip on a laptop without what the test needs; fail under CI."""
    if IN_CI:
        pytest.fail(f"{message}, and {in_ci}")
    pytest.skip(message)


def require_broker(available: bool, what: str) -> None:
    """Skip a broker test on a laptop without the broker; fail it under CI."""
    if not available:
        _unavailable(f"{what} is not reachable", "CI must test against it")


def require_program(name: str) -> str:
    """The path of a program a test runs; skip without it, fail under CI."""
    path = shutil.which(name)
    if path is None:
        _unavailable(f"{name} is not installed", "CI must run this test")
    return path


# ---------------------------------------------------------------- places


class Place(dict[str, Any]):
    """The options naming a place of one test's own on a broker (a stream, a
    topic, an exchange and a queue), its url among them. The test lists more
    of the same kind it makes there (queues, streams) in ``extra``: they are
    removed with it."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.extra: list[str] = []


@dataclass(frozen=True)
class Places:
    """How a harness gives each test a place of its own on its broker.

    ``make`` names a new place (reaching the broker's url through the pytest
    ``request``); ``remove`` deletes it and its ``extra``, parts already gone
    included. The harness's conformance Target and the backend's own tests
    (through :meth:`fixture`) make and remove their places alike.
    """

    make: Callable[[pytest.FixtureRequest], dict[str, Any]]
    remove: Callable[[Place], None]

    def new(self, request: pytest.FixtureRequest) -> Place:
        return Place(self.make(request))

    def cleanup(self, place: Place) -> Callable[[], None]:
        """For Target.cleanup."""
        return lambda: self.remove(place)

    def fixture(self, option: str | None = None) -> Any:
        """A fixture giving each test a new place (or only its ``option``,
        say the stream's name), removed after the test."""

        @pytest.fixture
        def fresh_place(request: pytest.FixtureRequest) -> Iterator[Any]:
            place = self.new(request)
            try:
                yield place if option is None else place[option]
            finally:
                self.remove(place)

        return fresh_place


def read_until_all(events: Any, messages: list[Any], timeout: float = 30.0) -> list[Event]:
    """Events until every one of ``messages`` arrived (duplicates allowed)."""
    wanted = {m.id for m in messages}
    received: list[Event] = []
    deadline = time.monotonic() + timeout
    while not wanted <= {e.id for e in received}:
        assert time.monotonic() < deadline, f"{len(received)} events, some missing"
        event = events.poll(timeout=1.0)
        if event is not None:
            received.append(event)
    return received


def make_certificates(directory: Any) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = require_program("openssl")
    files = {name: str(directory / f"{name}.pem") for name in ("ca", "ca-key", "cert", "key")}
    csr, ext = str(directory / "server.csr"), directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", files["ca-key"], "-out", files["ca"],
    )  # fmt: skip
    run(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", files["key"], "-out", csr,
    )  # fmt: skip
    run(
        "x509", "-req", "-in", csr, "-CA", files["ca"], "-CAkey", files["ca-key"],
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", files["cert"],
    )  # fmt: skip
    return files


def tls_server_context(certificates: dict[str, str]) -> ssl.SSLContext:
    """A server-side SSL context with the certificate from :func:`make_certificates`,
    for a TLS-terminating FaultProxy."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates["cert"], certificates["key"])
    return context


def assert_replayed(backend: str, options: dict[str, Any], messages: list[Message]) -> None:
    """Publish ``messages`` through a new backend, then read them back from the beginning."""
    made = create_backend(backend, options)
    made.open()
    try:
        made.publish(messages)
    finally:
        made.close()
    with subscribe(backend, from_beginning=True, **options) as events:
        assert [e.id for e in read_events(events, count=len(messages))] == [m.id for m in messages]


def poll_until_logged(events: Any, caplog: Any, text: str, timeout: float = 20.0) -> None:
    """Poll a subscription whose broker is away until a warning containing
    ``text`` was logged: every poll meanwhile must come back empty (waiting,
    not raising). Waits on the log, not a fixed time, so that a loaded
    machine's slower reconnect attempts still happen during the outage."""
    deadline = time.monotonic() + timeout
    while not any(text in record.getMessage() for record in caplog.records):
        assert events.poll(timeout=0.5) is None
        assert time.monotonic() < deadline, f"no warning saying {text!r}"


# What publishing needs no part of: the scheduler side and the command line.
NOT_IN_THE_PUBLISHER = ("distributed", "dask", "click", "yaml", "tornado", "psutil")
# Nor these of ours (diagnosis explains errors; spooling is for a spool;
# subscriptions read back).
NOT_OURS_TO_LOAD = ("dask_eventbus.plugin", "dask_eventbus.preload", "dask_eventbus.cli",
                    "dask_eventbus.metrics", "dask_eventbus.process.supervisor",
                    "dask_eventbus.backends.registry", "dask_eventbus.backends.diagnosis",
                    "dask_eventbus.spooling", "dask_eventbus.backends.subscription")  # fmt: skip


def publisher_process_imports(backend: Backend) -> set[str]:
    """The modules a publisher process imports to publish one event with
    ``backend`` and close: run as ProcessSink runs it, with Python reporting
    every import."""
    from dask_eventbus.config import load_settings
    from dask_eventbus.events import LOG
    from dask_eventbus.process import (
        PUBLISHER_COMMAND,
        ProcessSink,
        publisher_environment,
        read_frame,
        write_frame,
    )

    init = ProcessSink(backend, load_settings(), "dask://test", "run")._init
    with subprocess.Popen(
        PUBLISHER_COMMAND,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**publisher_environment(), "PYTHONPROFILEIMPORTTIME": "1"},
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        write_frame(child.stdin, ["init", init])
        assert read_frame(child.stdout) == ["ready"]
        # A record travels as [type, sequence, time, *fields].
        write_frame(child.stdin, ["batch", 1, [[LOG, 1, time.time(), "topic", {"a": 1}]]])
        write_frame(child.stdin, ["close", 5.0])
        frames = []
        while (frame := read_frame(child.stdout)) is not None:
            frames.append(frame)
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == 0
    # Log frames aside (a created topic, say): one acknowledgement, then closed.
    assert [f[0] for f in frames if f[0] != "log"] == ["ack", "closed"], frames
    return {
        line.split("|")[-1].strip()
        for line in stderr.decode().splitlines()
        if line.startswith("import time:") and "|" in line
    }


def ours_not_for_publishing(imported: set[str]) -> list[str]:
    """Those of this package's modules in ``imported`` a publisher process
    should not need (whatever its client library loads)."""
    return sorted(name for name in imported if name.startswith(NOT_OURS_TO_LOAD))


def not_for_publishing(imported: set[str], *packages: str) -> list[str]:
    """Those of ``imported`` a publisher process should not need: the scheduler
    side, the command line, and ``packages``."""
    return sorted(
        name
        for name in imported
        if name.split(".")[0] in (*NOT_IN_THE_PUBLISHER, *packages)
        or name.startswith(NOT_OURS_TO_LOAD)
    )
