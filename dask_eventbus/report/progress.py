"""A one-line progress display on the terminal while a report reads its input."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO


class Progress:
    """Events read and the rate, redrawn at most five times a second.

    Silent unless ``stream`` is a terminal. ``fraction`` (when given) says
    how much of the input was read, for a percentage.
    """

    INTERVAL = 0.2

    def __init__(
        self,
        stream: IO[str],
        count: Callable[[], int],
        fraction: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.enabled = stream.isatty()
        self._stream = stream
        self._count = count
        self._fraction = fraction
        self._started = time.monotonic()
        self._shown = self._started

    def update(self) -> None:
        """Redraw if it is time to."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._shown >= self.INTERVAL:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        count = self._count()
        rate = count / max(now - self._started, 1e-9)
        line = f"Reading events: {count:,} ({rate:,.0f}/s)"
        fraction = self._fraction()
        if fraction is not None:
            line += f" {min(fraction, 1.0):4.0%}"
        self._stream.write("\r" + line + "\x1b[K")
        self._stream.flush()

    def close(self) -> None:
        """Draw the final count and end the line."""
        if self.enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()
