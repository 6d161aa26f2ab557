"""Where a consumer's events come from: JSON Lines files and backends.

Both kinds give message bodies in batches through :meth:`read` (``None`` at
the end of what there is to read, an empty list when nothing arrived in
time while following) and learn with :meth:`commit` that everything read so
far is safely processed: a backend then acknowledges it, a file's
:attr:`position` is where to start again.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import IO, Any, Protocol

from ..backends import Backend

FOLLOW_POLL_SECONDS = 0.1


class EventsInput(Protocol):
    """What every consumer reads from: bodies in batches, committed when processed."""

    @property
    def resumable(self) -> bool:
        """Whether :attr:`position` can be given back to start there again."""

    @property
    def position(self) -> int | None:
        """Where the input stands after what was read (a file's byte offset)."""

    def read(self, limit: int, timeout: float | None = None) -> list[bytes] | None: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


class FileInput:
    """The lines of a JSON Lines file (``-``: standard input), gunzipped if gzip.

    ``offset`` starts at that byte of a plain file (where a consumer's stored
    :attr:`position` says it stopped; ignored, and :attr:`resumable` false, for
    gzip and standard input). ``follow`` waits for lines appended after the
    end instead of ending there; a last line without its newline is only read
    once it is complete, or at the end when not following.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, offset: int = 0, follow: bool = False
    ) -> None:
        self.path = str(path)
        self.follow = follow
        self._stack = ExitStack()
        raw: io.BufferedReader
        if self.path == "-":
            raw = sys.stdin.buffer  # type: ignore[assignment]
        else:
            raw = self._stack.enter_context(open(self.path, "rb"))
        self._raw = raw
        self._lines: IO[bytes] | gzip.GzipFile = raw
        gzipped = raw.peek(2)[:2] == b"\x1f\x8b"
        if gzipped:
            self._lines = self._stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        self.resumable = self.path != "-" and not gzipped
        if self.resumable and 0 < offset <= os.fstat(raw.fileno()).st_size:
            raw.seek(offset)
        self.position = raw.tell() if self.path != "-" else 0
        """Bytes of the file read (for a plain file: up to the end of the last line given)."""

    def read(self, limit: int, timeout: float | None = None) -> list[bytes] | None:
        """Up to ``limit`` lines; ``None`` at the end when not following."""
        deadline = None if timeout is None else time.monotonic() + timeout
        lines: list[bytes] = []
        while len(lines) < limit:
            line = self._lines.readline()
            if line.endswith(b"\n") or (line and not self.follow):
                lines.append(line)
                if self.resumable:
                    self.position += len(line)
                continue
            if line:  # a line still being written: read it again when complete
                self._raw.seek(-len(line), os.SEEK_CUR)
            if lines or not self.follow:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(FOLLOW_POLL_SECONDS)
        if not self.resumable and self.path != "-":
            self.position = self._raw.tell()
        if not lines and not self.follow:
            return None
        return lines

    def commit(self) -> None:
        """Nothing to acknowledge: :attr:`position` is the file's bookmark."""

    def close(self) -> None:
        self._stack.close()


class BackendInput:
    """The messages of a backend's subscription, acknowledged on :meth:`commit`.

    ``idle_timeout`` ends the input when nothing arrived for that long (the
    end of what the backend holds); ``None`` follows until closed. Messages
    are read raw, so that a consumer counts and skips what is not an event
    instead of the subscription's logging each one.
    """

    resumable = False
    position = None

    def __init__(
        self, backend: Backend, *, from_beginning: bool, idle_timeout: float | None
    ) -> None:
        self._subscription = backend.subscribe(from_beginning=from_beginning)
        self._idle_timeout = idle_timeout
        self._idle_since = time.monotonic()
        self._unacknowledged: list[Any] = []

    def read(self, limit: int, timeout: float | None = None) -> list[bytes] | None:
        """What arrives within ``timeout`` (at most about ``limit``); ``None`` when idle."""
        wait = 1.0 if timeout is None else timeout
        if self._idle_timeout is not None:
            wait = min(wait, self._idle_timeout)
        deliveries = self._subscription.fetch(wait)
        now = time.monotonic()
        if not deliveries:
            if self._idle_timeout is not None and now - self._idle_since >= self._idle_timeout:
                return None
            return []
        self._idle_since = now
        self._unacknowledged.extend(delivery.token for delivery in deliveries)
        return [delivery.body for delivery in deliveries]

    def commit(self) -> None:
        """Acknowledge everything read so far (a queue then hands it to no one else)."""
        for token in self._unacknowledged:
            self._subscription.ack(token)
        self._unacknowledged.clear()

    def close(self) -> None:
        # Unacknowledged messages stay with the broker for the next reader.
        self._subscription.close(ack=False)


def bodies(source: EventsInput, batch: int = 4096) -> Iterator[bytes]:
    """Every body ``source`` gives until its end, each batch committed once taken.

    For a one-pass consumer (the report) that keeps no bookmark of its own.
    """
    while (read := source.read(batch)) is not None:
        yield from read
        source.commit()


def describe_size(path: str | os.PathLike[str]) -> int | None:
    """The file's size in bytes, or None when it has none (a pipe)."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return None
    return size or None
