"""Shared fixtures: the shared brokers' urls, and one harness per backend for
the conformance suite.

A harness knows how to give each test its own place on a backend (a file, a
store, a stream, a queue, a topic) and how to remove it afterwards
(``helpers.Places``). Broker harnesses skip when their broker is not
reachable, except under ``CI``, where a missing broker is a failure.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable, Iterator

import pytest
from helpers import Places, require_endpoint

from dask_eventbus.backends.memory import drop_store
from dask_eventbus.testing import Target, unique_name
from dask_eventbus.testing.conformance import needed_capabilities

# ---------------------------------------------------------------- shared brokers
# Each skips (fails under CI) when its broker is not reachable (helpers.ENDPOINTS).


@pytest.fixture(scope="session")
def redis_url() -> str:
    return require_endpoint("redis")


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    return require_endpoint("rabbitmq")


@pytest.fixture(scope="session")
def nats_url() -> str:
    return require_endpoint("nats")


# ---------------------------------------------------------------- harnesses

MEMORY = Places(
    make=lambda request: {"name": unique_name()},
    remove=lambda place: drop_store(place["name"]),
)
memory_store_name = MEMORY.fixture("name")


def memory_harness(request: pytest.FixtureRequest) -> Target:
    place = MEMORY.new(request)
    return Target(
        "memory",
        dict(place),
        bad_options=[({"max-events": 0}, "max-events"), ({"name": 5}, "name")],
        cleanup=MEMORY.cleanup(place),
    )


def jsonl_harness(request: pytest.FixtureRequest) -> Target:
    tmp_path = request.getfixturevalue("tmp_path")
    return Target(
        "jsonl",
        {"path": str(tmp_path / "events" / "bus.jsonl")},
        bad_options=[({"fsync": "sometimes"}, "fsync"), ({"path": ["a"]}, "path")],
    )


HARNESSES: dict[str, Callable[[pytest.FixtureRequest], Target]] = {
    "memory": memory_harness,
    "jsonl": jsonl_harness,
}

# Each broker backend's tests bring a module ``harness_<backend>.py`` beside
# this file with a ``HARNESSES`` dict of factories. A factory takes the
# pytest request (to reach fixtures such as a broker's url above, or a broker
# started for the session, which the module may define: it is loaded as a
# pytest plugin) and returns a Target, its place made and removed by the
# module's ``Places``; it skips when the broker is not reachable.
HARNESS_MODULES = [p.stem for p in sorted(pathlib.Path(__file__).parent.glob("harness_*.py"))]
# pytester runs the conformance suite as a third party would (test_thirdparty.py).
pytest_plugins = ["pytester", *HARNESS_MODULES]


# Harnesses with no network connection to a broker; a module may add its own
# in ``LOCAL``. Tests marked ``networked`` (faults, credentials) and
# conformance tests that need a connection leave them out.
LOCAL_HARNESSES = {"memory", "jsonl"}
# Harnesses whose subscribe(from_beginning=True) cannot return events
# published earlier (a module's ``NO_REPLAY``); conformance tests that need
# replay leave them out.
NO_REPLAY_HARNESSES: set[str] = set()
# Harnesses without a secret in their options (a module's ``NO_SECRET``), and
# publish-only ones read back elsewhere (``READ_ELSEWHERE``).
NO_SECRET_HARNESSES = {"memory", "jsonl"}
READ_ELSEWHERE_HARNESSES: set[str] = set()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness" in metafunc.fixturenames:
        for name in HARNESS_MODULES:
            HARNESSES.update(sys.modules[name].HARNESSES)
            LOCAL_HARNESSES.update(getattr(sys.modules[name], "LOCAL", ()))
            NO_REPLAY_HARNESSES.update(getattr(sys.modules[name], "NO_REPLAY", ()))
            NO_SECRET_HARNESSES.update(getattr(sys.modules[name], "NO_SECRET", ()))
            READ_ELSEWHERE_HARNESSES.update(getattr(sys.modules[name], "READ_ELSEWHERE", ()))
        # Configurations that cannot apply are not generated rather than skipped.
        needs = needed_capabilities(metafunc.function)
        names = list(HARNESSES)
        if metafunc.definition.get_closest_marker("networked") or "connection" in needs:
            names = [name for name in names if name not in LOCAL_HARNESSES]
        if "replay" in needs:
            names = [name for name in names if name not in NO_REPLAY_HARNESSES]
        if "secret" in needs:
            names = [name for name in names if name not in NO_SECRET_HARNESSES]
        if "subscription" in needs:
            names = [name for name in names if name not in READ_ELSEWHERE_HARNESSES]
        metafunc.parametrize("harness", names, indirect=True)


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Iterator[Target]:
    made = HARNESSES[request.param](request)
    try:
        yield made
    finally:
        made.cleanup()
