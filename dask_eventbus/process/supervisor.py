"""The parent's side of process mode: ships batches to the publisher process
and supervises it, starting a new one (with backoff) when it dies and sending
it every batch not yet acknowledged, in order."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, cast

import msgspec

from ..backends import Backend
from ..config import PUBLISHER_PROCESS_ENV, Settings, redact_url
from ..events import safe_text
from ..pacing import Backoff, RateLimitedLog
from ..records import AnyRecord, Record
from ..stats import DeliveryStats
from .frames import (
    BatchFrame,
    Close,
    Deadline,
    Init,
    length_prefixed,
    merged_stats,
    pack,
    read_frame,
    write_frame,
)

logger = logging.getLogger("distributed.eventbus")

START_TIMEOUT = 60.0
# The cyclic garbage collector stays off while the publisher process imports
# and sets up (the child freezes what that made, then turns it back on):
# imports allocate objects that live as long as the process, and collecting
# among them made every start 3 to 5 % slower.
PUBLISHER_COMMAND = [
    sys.executable,
    "-c",
    "import gc; gc.disable(); from dask_eventbus.process.child import main; main()",
]
# A child that dies sooner than this after starting counts as a failed start.
CRASH_WINDOW = 10.0


def publisher_environment() -> dict[str, str]:
    """The publisher process's environment: this one's, marked as that process's."""
    return {**os.environ, PUBLISHER_PROCESS_ENV: "1"}


# A started publisher process, the thread reading its replies, and where that
# thread puts the process's first answer.
_Launched = tuple["subprocess.Popen[bytes]", threading.Thread, "queue.Queue[list[Any] | None]"]


class ProcessSink:
    """The parent's side: ships batches to the child and supervises it."""

    def __init__(self, backend: Backend, settings: Settings, source: str, run_id: str) -> None:
        self.backend = backend
        self.retry = settings.retry
        self._window = settings.queue.max_events
        self._in_flight = 0  # events in unacknowledged batches
        self._init = {
            # Only to our own child: the backend's class and options, the settings.
            "backend": pickle.dumps(backend),
            "backend_module": type(backend).__module__,
            "unused": list(backend.unused_when_publishing),
            "settings": pickle.dumps(settings),
            "source": source,
            "run_id": run_id,
            "sys_path": list(sys.path),
        }  # EventBusPlugin checked at construction that these pickle
        self._changed = threading.Condition()
        self._unacked: OrderedDict[int, tuple[bytes, int]] = OrderedDict()
        self._batch_ids = itertools.count(1)
        self._child: subprocess.Popen[bytes] | None = None
        self._replies: threading.Thread | None = None
        # A child started by launch() whose handshake _spawn() has yet to do.
        self._launched: _Launched | None = None
        self._alive = False
        self._write_lock = threading.Lock()  # the pipeline thread and close() write
        self._closing = threading.Event()
        self._deadline = float("inf")
        # Totals of children that exited, and those plus the running child's.
        self._finished_stats = DeliveryStats()
        self._stats = DeliveryStats()
        self._starts = 0
        self._started_at = 0.0
        # Failed or short-lived starts in a row, and the wait before the next.
        self._restarts = Backoff(settings.retry.initial_backoff, settings.retry.max_backoff)
        self._restart_delay = 0.0
        self._failure_log = RateLimitedLog()

    @property
    def stats(self) -> DeliveryStats:
        return self._stats

    # ---- Sink interface

    def launch(self) -> None:
        """Start the publisher process now, without waiting for it.

        Called on the scheduler's event loop as the plugin starts (it costs a
        ``posix_spawn``, about a millisecond), so that everything the sink
        holds in this process (both pipes, the thread reading replies) exists
        once the scheduler's start returns, rather than appearing a moment
        later. The pipeline thread's :meth:`start` then sends it its settings
        and waits until it is ready. A failure here is left for that to retry
        and report.
        """
        if self._launched is None and self._child is None:
            with contextlib.suppress(OSError, ValueError):
                self._launched = self._launch()

    def start(self) -> None:
        self._ensure_child()

    def in_flight(self) -> int:
        return self._in_flight

    def begin_close(self, deadline: float) -> None:
        self._deadline = deadline
        self._closing.set()
        # Lets the child cut a retry's backoff short, as thread mode does.
        self._write(pack(Deadline(max(0.0, deadline - time.monotonic()))))
        with self._changed:
            self._changed.notify_all()

    def idle(self) -> None:
        # A child that died while nothing was being sent still owes batches.
        if not self._alive and self._unacked:
            self._ensure_child()

    def send(self, records: Sequence[Record]) -> bool:
        batch_id = next(self._batch_ids)
        frame = pack(BatchFrame(batch_id, cast("list[AnyRecord]", records)))
        with self._changed:
            while self._unacked and self._in_flight + len(records) > self._window:
                if not self._wait_for_room():
                    return False
            self._unacked[batch_id] = (frame, len(records))
            self._in_flight += len(records)
        # From here the batch is ours to deliver or count as undelivered. A new
        # child is sent every unacknowledged batch, this one included.
        if not self._write(frame):
            self._ensure_child()
        return True

    def finish(self) -> int:
        """Wait for acknowledgements until the deadline, then stop the child."""
        with self._changed:
            while self._unacked and self._wait_for_room():
                pass
        launched, self._launched = self._launched, None
        if launched is not None:  # the pipeline thread failed before it took it
            _release(launched[0], launched[1], 0.0)
        child = self._child
        if child is not None:
            remaining = max(0.0, self._deadline - time.monotonic())
            self._write_to(child, pack(Close(remaining)))
            # Still self._child meanwhile: its last acks and stats count.
            _release(child, self._replies, remaining + 0.5)
            self._child = self._replies = None
        with self._changed:
            undelivered = self._in_flight
            self._unacked.clear()
            self._in_flight = 0
            self._finish_child_stats()
        return undelivered

    # ---- supervision

    def _wait_for_room(self) -> bool:
        """Wait (holding the condition) for an ack or restart a dead child.

        False once closing ran out of time.
        """
        if not self._alive:
            self._changed.release()
            try:
                return self._ensure_child()
            finally:
                self._changed.acquire()
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._changed.wait(min(remaining, 1.0))
        return True

    def _ensure_child(self) -> bool:
        """A running child that has every unacknowledged batch; False past the deadline."""
        while not self._alive:
            if self._restarts.failures:
                # Children that fail to start, or die soon after, are restarted
                # with backoff rather than in a tight loop.
                remaining = self._deadline - time.monotonic()
                time.sleep(max(0.0, min(self._restart_delay, remaining)))
            if time.monotonic() >= self._deadline:
                return False
            if self._spawn():
                with self._changed:
                    frames = [frame for frame, _ in self._unacked.values()]
                if all(self._write(frame) for frame in frames):
                    return True
        return True

    def _launch(self) -> _Launched:
        child = subprocess.Popen(
            PUBLISHER_COMMAND,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=publisher_environment(),
            # Ctrl-C reaches the scheduler, which then closes the child in order.
            start_new_session=True,
        )
        handshake: queue.Queue[list[Any] | None] = queue.Queue()
        replies = threading.Thread(
            target=self._read_replies,
            args=(child, handshake),
            name="dask-eventbus-replies",
            daemon=True,
        )
        replies.start()
        return child, replies, handshake

    def _spawn(self) -> bool:
        self._retire_child()
        launched, self._launched = self._launched, None
        child = replies = None
        reply: list[Any]
        try:
            if launched is None:
                launched = self._launch()
            child, replies, handshake = launched
            assert child.stdin is not None
            write_frame(child.stdin, Init(self._init))
            timeout = min(START_TIMEOUT, max(0.1, self._deadline - time.monotonic()))
            try:
                answer = handshake.get(timeout=timeout)
            except queue.Empty:
                answer = ["failed", f"no answer within {timeout:g}s"]
            reply = answer or ["failed", "it exited before it was ready"]
        except (OSError, ValueError) as exc:
            reply = ["failed", f"{type(exc).__name__}: {safe_text(exc)}"]
        if reply[0] != "ready":
            if child is not None:
                _release(child, replies, 0.0)
            self._failed(f"the publisher process failed to start: {redact_url(str(reply[1]))}")
            return False
        if self._starts:
            logger.warning(
                "dask-eventbus: publisher process restarted; resending %d unacknowledged batches",
                len(self._unacked),
            )
        self._starts += 1
        self._started_at = time.monotonic()
        with self._changed:
            self._child, self._replies, self._alive = child, replies, True
        return True

    def _failed(self, why: str) -> None:
        self._stats.last_error = self._finished_stats.last_error = why
        self._restart_delay = self._restarts.next_delay()
        if self._failure_log.occurred():
            logger.error(
                "dask-eventbus: publishing to %s: %s (%d in a row). Retrying with backoff.",
                self.backend.destination(),
                why,
                self._restarts.failures,
            )
            self._failure_log.logged()

    def _retire_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        _release(child, self._replies, 0.0)
        self._replies = None
        with self._changed:
            self._finish_child_stats()

    def _write(self, frame: bytes) -> bool:
        child = self._child
        if child is None or not self._alive:
            return False
        return self._write_to(child, frame)

    def _write_to(self, child: subprocess.Popen[bytes], frame: bytes) -> bool:
        try:
            with self._write_lock:
                assert child.stdin is not None
                child.stdin.write(length_prefixed(frame))
                child.stdin.flush()
        except (OSError, ValueError):
            self._mark_dead(child)
            return False
        return True

    def _mark_dead(self, child: subprocess.Popen[bytes]) -> None:
        with self._changed:
            if child is self._child and self._alive:
                self._alive = False
                if not self._closing.is_set():
                    lived = time.monotonic() - self._started_at
                    if lived < CRASH_WINDOW:
                        self._failed(f"the publisher process died after {lived:.1f}s")
                    else:
                        self._restarts.reset()
                        self._failure_log.ended()
                        logger.error(
                            "dask-eventbus: the publisher process exited (code %s); restarting it",
                            child.poll(),
                        )
            self._changed.notify_all()

    def _read_replies(
        self, child: subprocess.Popen[bytes], handshake: queue.Queue[list[Any] | None]
    ) -> None:
        """Reads ``child``'s frames until it exits; its first answer other than
        a log line (``ready`` or ``failed``, or None at its end) goes to
        ``handshake``."""
        assert child.stdout is not None
        ready = False
        while True:
            try:
                frame = read_frame(child.stdout)
            except (OSError, ValueError, msgspec.DecodeError):
                frame = None
            if frame is None:
                if not ready:
                    handshake.put(None)
                self._mark_dead(child)
                return
            if frame[0] == "log":
                logger.log(frame[1], frame[2])
                continue
            if not ready:
                handshake.put(frame)
                if frame[0] != "ready":
                    return  # it failed to start, and exits
                ready = True
                continue
            with self._changed:
                if child is not self._child:
                    continue  # a retired child's late news is already counted
                if frame[0] == "ack":
                    _, count = self._unacked.pop(frame[1], (b"", 0))
                    self._in_flight -= count
                    self._stats = merged_stats(self._finished_stats, frame[2])
                elif frame[0] in ("stats", "closed"):
                    self._stats = merged_stats(self._finished_stats, frame[1])
                self._changed.notify_all()

    def _finish_child_stats(self) -> None:
        self._finished_stats = self._stats
        self._finished_stats.connected = False


def _release(child: subprocess.Popen[bytes], reader: threading.Thread | None, grace: float) -> None:
    """Stop ``child`` and release all it holds in this process: both pipes, the
    thread reading its replies, the process itself (reaped).

    It gets ``grace`` seconds to exit on its own (after a close frame) before it
    is killed. Nothing is left for the garbage collector, which would close the
    pipes later, in whatever code runs then, with a ResourceWarning.
    """
    if grace <= 0:
        # Killed first: a write blocked on a full pipe (another thread's) fails
        # at once instead of holding the stream's lock while it is closed.
        with contextlib.suppress(OSError):
            child.kill()
    if child.stdin is not None:
        # End of input: a child still reading stops (a close frame came first).
        with contextlib.suppress(OSError, ValueError):
            child.stdin.close()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            child.kill()
        child.wait()
    if reader is not None and reader is not threading.current_thread():
        # The child is gone, so its stdout is at end of stream: the reader
        # returns once it has read the last acknowledgements and stats.
        reader.join(5.0)
        if reader.is_alive():
            logger.warning("dask-eventbus: the publisher process's reply reader did not stop")
            return  # closing the stream under a blocked reader could hang
    if child.stdout is not None:
        with contextlib.suppress(OSError, ValueError):
            child.stdout.close()


# ---------------------------------------------------------------- child side
