"""Shared fixtures: one harness per backend for the conformance suite.

A harness knows how to give each test its own place on a backend (a file, a
store, a stream, a queue, a topic) and how to remove it afterwards. Broker
harnesses skip when their broker is not reachable, except under ``CI``,
where a missing broker is a failure.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable, Iterator

import msgspec
import pytest
from helpers import Harness, unique_name

from dask_eventbus.backends import get_backend
from dask_eventbus.backends.memory import drop_store


def memory_harness(request: pytest.FixtureRequest) -> Harness:
    name = unique_name()
    return Harness(
        "memory",
        {"name": name},
        bad_options=[({"max-events": 0}, "max-events"), ({"name": 5}, "name")],
        cleanup=lambda: drop_store(name),
    )


def jsonl_harness(request: pytest.FixtureRequest) -> Harness:
    tmp_path = request.getfixturevalue("tmp_path")
    return Harness(
        "jsonl",
        {"path": str(tmp_path / "events" / "bus.jsonl")},
        bad_options=[({"fsync": "sometimes"}, "fsync"), ({"path": ["a"]}, "path")],
    )


HARNESSES: dict[str, Callable[[pytest.FixtureRequest], Harness]] = {
    "memory": memory_harness,
    "jsonl": jsonl_harness,
}

# Each broker backend's tests bring a module ``harness_<backend>.py`` beside
# this file with a ``HARNESSES`` dict of factories. A factory takes the
# pytest request (to reach fixtures such as a broker started for the session,
# which the module may define: it is loaded as a pytest plugin) and returns a
# Harness, or skips via require_broker.
pytest_plugins = [p.stem for p in sorted(pathlib.Path(__file__).parent.glob("harness_*.py"))]


# Harnesses with no network connection to a broker; a module may add its own
# in ``LOCAL``. Tests marked ``networked`` (faults, credentials) leave them out.
LOCAL_HARNESSES = {"memory", "jsonl"}
# Harnesses whose subscribe(from_beginning=True) cannot return events
# published earlier (a module's ``NO_REPLAY``); tests marked ``replays``
# leave them out.
NO_REPLAY_HARNESSES: set[str] = set()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness" in metafunc.fixturenames:
        for name in pytest_plugins:
            HARNESSES.update(sys.modules[name].HARNESSES)
            LOCAL_HARNESSES.update(getattr(sys.modules[name], "LOCAL", ()))
            NO_REPLAY_HARNESSES.update(getattr(sys.modules[name], "NO_REPLAY", ()))
        names = list(HARNESSES)
        if metafunc.definition.get_closest_marker("networked"):
            names = [name for name in names if name not in LOCAL_HARNESSES]
        if metafunc.definition.get_closest_marker("replays"):
            names = [name for name in names if name not in NO_REPLAY_HARNESSES]
        if metafunc.definition.get_closest_marker("batched"):
            names = [name for name in names if has_batched_mode(name)]
        metafunc.parametrize("harness", names, indirect=True)


def has_batched_mode(harness_name: str) -> bool:
    """Whether the harness's backend (``kombu`` for ``kombu-redis``) has content-mode."""
    options = get_backend(harness_name.partition("-")[0]).Options
    return "content-mode" in {f.encode_name for f in msgspec.structs.fields(options)}


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    made = HARNESSES[request.param](request)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def memory_store_name() -> Iterator[str]:
    name = unique_name()
    yield name
    drop_store(name)
