"""The conformance suite of ``dask_eventbus.testing``, run against every
built-in backend through its harness: the same tests a third party runs."""

from __future__ import annotations

import pytest

from dask_eventbus.backends.memory import MemoryBackend, drop_store
from dask_eventbus.config import ConfigError
from dask_eventbus.testing import BackendConformance, Target, unique_name

pytestmark = pytest.mark.timeout(180)


class TestBuiltinBackends(BackendConformance):
    @pytest.fixture
    def target(self, harness: Target) -> Target:
        return harness


def test_a_target_made_from_a_factory_names_options_as_users_write_them() -> None:
    # The docs allow Target(lambda: MyBackend(...)); the suite's own check of
    # bad options must pass for it too, and errors name keys in kebab-case.
    name = unique_name()
    target = Target(lambda: MemoryBackend(name=name), cleanup=lambda: drop_store(name))
    BackendConformance().test_bad_options_are_refused_clearly(target)
    with pytest.raises(ConfigError) as info:
        target.create(**{"max-events": 0})
    assert "max-events" in str(info.value) and "max_events" not in str(info.value)
    assert target.create(**{"max-events": 5}).options.max_events == 5
