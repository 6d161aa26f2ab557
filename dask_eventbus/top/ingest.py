"""Reading events into the model on a thread of its own, at the pace asked for.

The terminal view draws a few times a second from whatever the model holds;
:class:`Ingest` reads and folds in between, so a fast stream never waits for
the drawing and the drawing never waits for the stream longer than one batch.
A replay can be paced (``speed`` times as fast as it happened, 0: at once),
paused and stepped a second of the recording at a time.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol

from ..events import Event
from .model import TopModel

BATCH = 2048
"""Message bodies read and folded under one hold of the model's lock."""
STEP_SECONDS = 1.0
"""How much of the recording one step replays."""
SPEEDS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0, 1000.0)


class Input(Protocol):
    def read(self, limit: int, timeout: float | None = None) -> list[bytes] | None: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


class Ingest:
    """Feeds ``model`` from ``source`` on a daemon thread until the end or :meth:`stop`."""

    def __init__(self, model: TopModel, source: Input, *, speed: float = 0.0) -> None:
        if speed < 0 or not math.isfinite(speed):
            raise ValueError(f"speed must be 0 (at once) or a positive number, not {speed!r}")
        self.model = model
        self.source = source
        self.speed = speed
        self.paused = False
        self.ended = False
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Replay clock: event time ``_anchor_time`` was due at ``_anchor_wall``.
        self._anchor_time: float | None = None
        self._anchor_wall = 0.0
        self._allowed: float | None = None  # while paused: replay up to here (steps)
        self._first_step = 0.0  # a step asked for before the first event
        self._thread = threading.Thread(target=self._run, name="dask-eventbus-top", daemon=True)

    def start(self) -> Ingest:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.source.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the end of the input; True if it ended."""
        self._thread.join(timeout)
        return self.ended

    # ---- controls (from the UI thread)

    def position(self) -> float | None:
        """Where the replay stands in event time (None before the first event)."""
        if self._anchor_time is None:
            return None
        if self.paused:
            return self._allowed if self._allowed is not None else self._anchor_time
        if self.speed == 0:
            return math.inf
        return self._anchor_time + (time.monotonic() - self._anchor_wall) * self.speed

    def pause(self) -> None:
        if self.paused:
            return
        if self.speed and self._anchor_time is not None:
            self._allowed = self.position()
        else:
            self._allowed = self.model.latest
        self.paused = True

    def resume(self) -> None:
        if not self.paused:
            return
        if self._allowed is not None:
            self._anchor_time = self._allowed
        self._anchor_wall = time.monotonic()
        self._allowed = None
        self.paused = False
        self._wake.set()

    def toggle(self) -> None:
        self.resume() if self.paused else self.pause()

    def step(self, seconds: float = STEP_SECONDS) -> None:
        """While paused, replay the next ``seconds`` of the recording."""
        if not self.paused:
            self.pause()
        # The batch being folded when the pause came may have gone past it.
        known = [t for t in (self._allowed, self.model.latest) if t is not None]
        base = max(known) if known else None
        if base is not None:
            self._allowed = base + seconds
        else:
            self._first_step += seconds
        self._wake.set()

    def set_speed(self, speed: float) -> None:
        if self._anchor_time is not None and not self.paused and self.speed:
            self._anchor_time = self.position()
        elif self._anchor_time is not None and not self.paused:
            self._anchor_time = self.model.latest
        self._anchor_wall = time.monotonic()
        self.speed = speed
        self._wake.set()

    def faster(self) -> None:
        if self.speed:
            self.set_speed(next((s for s in SPEEDS if s > self.speed), 0.0))

    def slower(self) -> None:
        if self.speed == 0:
            self.set_speed(SPEEDS[-1])
        else:
            self.set_speed(next((s for s in reversed(SPEEDS) if s < self.speed), SPEEDS[0]))

    # ---- the thread

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # shown by the view instead of a dead thread
            self.error = exc
        finally:
            self.ended = True

    def _read(self) -> None:
        model = self.model
        while not self._stop.is_set():
            if self.paused and self._allowed is None and not self._first_step:
                self._wait(0.1)
                continue
            bodies = self.source.read(BATCH, timeout=0.2)
            if bodies is None:
                return
            if not bodies:
                continue
            if self.speed == 0 and not self.paused:
                with model.lock:
                    for body in bodies:
                        model.feed(body)
            else:
                for body in bodies:
                    with model.lock:
                        events = model.reader.events(body)
                    for event in events:
                        if not self._due(event):
                            return
                        with model.lock:
                            model.apply(event)
            self.source.commit()

    def _due(self, event: Event) -> bool:
        """Wait until the replay reaches ``event``; False when stopped first."""
        when = event.time.timestamp()
        if self._anchor_time is None:
            self._anchor_time, self._anchor_wall = when, time.monotonic()
        if self._first_step and self._allowed is None:
            self._allowed, self._first_step = when + self._first_step, 0.0
        while not self._stop.is_set():
            if self.paused:
                if self._allowed is not None and when <= self._allowed:
                    return True
                self._wait(0.1)
                continue
            if self.speed == 0:
                return True
            late = (when - self._anchor_time) / self.speed - (time.monotonic() - self._anchor_wall)
            if late <= 0:
                return True
            self._wait(min(late, 0.1))
        return False

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()
