"""The dask-eventbus conformance suite, run against the sqlite backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from dask_eventbus.testing import BackendConformance, Target


class TestSQLiteBackend(BackendConformance):
    @pytest.fixture
    def target(self, tmp_path: Path) -> Target:
        return Target(
            "sqlite",
            {"path": str(tmp_path / "events.db")},
            bad_options=[({"timeout": "soon"}, "timeout")],
        )
