"""The one backoff and the one log limiter everything paces itself with."""

from __future__ import annotations

import pytest

from dask_eventbus import pacing
from dask_eventbus.pacing import Backoff, RateLimitedLog


def test_backoff_doubles_with_jitter_up_to_the_maximum() -> None:
    backoff = Backoff(0.1, 1.0)
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays), "jitter: no two waits alike"
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_rate_limited_log_says_when_to_log(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(pacing.time, "monotonic", lambda: now[0])
    log = RateLimitedLog(interval=60.0)
    assert log.ended() is None
    assert log.occurred()  # the first occurrence
    for _ in range(5):
        now[0] += 10
        assert not log.occurred()
    now[0] += 10  # 60 s after the first message
    assert log.occurred()
    assert log.logged() == 5 and log.logged() == 0
    now[0] += 5
    assert log.ended() == 65.0
    assert log.occurred()  # a new episode starts with a message again
