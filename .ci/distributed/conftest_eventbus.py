"""A pytest plugin next to distributed's conftest (``-p conftest_eventbus``).

It makes distributed's test certificates findable, refuses to run unless
the event bus is preloaded, and writes the id of every scheduler created in
this process to ``$EVENTBUS_SCHEDULER_IDS`` at the end, so that
``count_events.py`` can check that each of them published its start and its
close. It changes nothing else about how distributed's tests run.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import dask
import distributed.utils_test
import pytest
from distributed import Scheduler

# get_cert() looks beside the installed package, which has no tests folder.
distributed.utils_test.certs_dir = os.path.join(os.path.dirname(__file__), "certs")


def pytest_configure(config: pytest.Config) -> None:
    preload = dask.config.get("distributed.scheduler.preload")
    preloads = [preload] if isinstance(preload, str) else list(preload or [])
    if "dask_eventbus" not in preloads:
        raise pytest.UsageError(
            "set DASK_DISTRIBUTED__SCHEDULER__PRELOAD=dask_eventbus: these runs test "
            f"distributed with the event bus preloaded (distributed.scheduler.preload={preload!r})"
        )
    if not distributed.__file__.startswith(os.path.dirname(os.path.dirname(dask.__file__))):
        raise pytest.UsageError(f"not the installed distributed: {distributed.__file__}")


_scheduler_ids: list[str] = []
_original_init = Scheduler.__init__


@functools.wraps(_original_init)
def _recording_init(self: Scheduler, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    _scheduler_ids.append(self.id)


Scheduler.__init__ = _recording_init  # type: ignore[method-assign]


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("EVENTBUS_SCHEDULER_IDS")
    if path:
        with open(path, "w") as f:
            json.dump(_scheduler_ids, f)
