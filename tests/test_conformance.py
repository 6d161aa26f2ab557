"""The conformance suite of ``dask_eventbus.testing``, run against every
built-in backend through its harness: the same tests a third party runs."""

from __future__ import annotations

import pytest

from dask_eventbus.testing import BackendConformance, Target

pytestmark = pytest.mark.timeout(180)


class TestBuiltinBackends(BackendConformance):
    @pytest.fixture
    def target(self, harness: Target) -> Target:
        return harness
