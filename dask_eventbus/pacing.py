"""Pacing repeated work: retry backoff with jitter, and rate-limited logging.

One of each for the whole package: the publisher's retries, the publisher
process's restarts and the subscribers' reconnects all back off alike, and
every "still failing" message is summarised alike.
"""

from __future__ import annotations

import random
import time

LOG_SUMMARY_INTERVAL = 60.0
"""After the first occurrence, repeats are summarised at most this often."""


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each scaled by a
    random factor in [0.5, 1] so that many clients do not retry in step."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        """The wait before the next attempt, counting one more failure."""
        self.failures += 1
        delay = min(self.maximum, self.initial * 2 ** min(self.failures - 1, 30))
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        """An attempt worked: the next failure starts from ``initial`` again."""
        self.failures = 0


class RateLimitedLog:
    """When to log a condition that persists (a broker that stays down, a
    queue that keeps overflowing): at its first occurrence, then at most
    every ``interval`` while it lasts. The caller writes the messages."""

    def __init__(self, interval: float = LOG_SUMMARY_INTERVAL) -> None:
        self.interval = interval
        self.since: float | None = None
        """When the condition started (monotonic), or None while it is off."""
        self.unlogged = 0
        """Occurrences since the last one logged."""
        self.last_logged = 0.0
        """When an occurrence was last logged (monotonic)."""

    def occurred(self) -> bool:
        """Count one occurrence; True when this one should be logged."""
        now = time.monotonic()
        if self.since is None:
            self.since = self.last_logged = now
            self.unlogged = 0
            return True
        if now - self.last_logged < self.interval:
            self.unlogged += 1
            return False
        return True

    def logged(self) -> int:
        """Say that this occurrence was logged; returns how many were not
        since the one logged before, and counting starts over."""
        self.last_logged = time.monotonic()
        unlogged, self.unlogged = self.unlogged, 0
        return unlogged

    def ended(self) -> float | None:
        """The condition is over: how long it lasted, or None if it was off."""
        if self.since is None:
            return None
        lasted, self.since = time.monotonic() - self.since, None
        return lasted
