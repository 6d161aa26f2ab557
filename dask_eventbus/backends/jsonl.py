"""``jsonl``: one CloudEvent per line appended to a local file.

The embedded default: no server, readable with ``tail -f``, ``jq`` or any
JSON Lines reader. Each batch is written with one ``write`` and flushed
(optionally fsynced) before ``publish`` returns.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import IO, Any

from . import Backend, BackendOptions, Delivery, Message, SubscribeOptions, Subscription

POLL_INTERVAL = 0.05
READ_SIZE = 1 << 20


class JsonLinesOptions(BackendOptions):
    path: str = "dask-events.jsonl"
    fsync: bool = False


class JsonLinesBackend(Backend):
    """Appends events to a JSON Lines file."""

    name = "jsonl"
    Options = JsonLinesOptions
    options: JsonLinesOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._file: IO[bytes] | None = None

    @property
    def path(self) -> str:
        return os.path.abspath(os.path.expanduser(self.options.path))

    def open(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        self._file = open(self.path, "ab")
        if self._file.tell() and not _ends_with_newline(self.path):
            # A write cut short (full disk, crash) left half a line: end it,
            # so the retried batch starts on a line of its own.
            self._file.write(b"\n")

    def publish(self, messages: Sequence[Message]) -> None:
        if self._file is None:
            raise RuntimeError("jsonl backend is not open")
        self._file.write(b"".join([m.body + b"\n" for m in messages]))
        self._file.flush()
        if self.options.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def open_subscription(self, options: SubscribeOptions) -> Subscription:
        return _FileFollower(self.path, options.from_beginning)

    def describe(self) -> str:
        return f"file {self.path}"

    def explain(self, exc: BaseException) -> str:
        if isinstance(exc, OSError) and exc.strerror:
            where = exc.filename or self.path
            return (
                f"cannot use the events file {where}: {exc.strerror}. Check that "
                "eventbus.backends.jsonl.path names a writable file in an existing "
                "or creatable directory"
            )
        return super().explain(exc)


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class _FileFollower(Subscription):
    """Reads complete lines, then follows the file like ``tail -f``.

    A file that shrinks or is replaced (rotation) is read again from its start.
    """

    def __init__(self, path: str, from_beginning: bool) -> None:
        super().__init__()
        self._path = path
        self._file: IO[bytes] | None = None
        self._inode: int | None = None
        self._partial = b""
        # "From now" means from the end of the file as it is now; a file that
        # does not exist yet is read from its start once it appears.
        self._start_at_end = not from_beginning and os.path.exists(path)
        self._reopen_if_needed()

    def _reopen_if_needed(self) -> None:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            return
        if self._file is not None:
            replaced = stat.st_ino != self._inode
            truncated = stat.st_size < self._file.tell()
            if not (replaced or truncated):
                return
            self._file.close()
            self._start_at_end = False
        self._file = open(self._path, "rb")
        self._inode = os.fstat(self._file.fileno()).st_ino
        self._partial = b""
        if self._start_at_end:
            self._file.seek(0, os.SEEK_END)
            self._start_at_end = False

    def fetch(self, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            self._reopen_if_needed()
            if self._file is not None:
                chunk = self._file.read(READ_SIZE)
                if chunk:
                    *lines, self._partial = (self._partial + chunk).split(b"\n")
                    found = [Delivery(line) for line in lines if line.strip()]
                    if found:
                        return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(POLL_INTERVAL, remaining))

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
