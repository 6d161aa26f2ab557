"""Where a report's input comes from: JSON Lines files and backends."""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections.abc import Generator
from contextlib import ExitStack
from typing import IO

from ..backends import Backend


def file_lines(
    path: str | os.PathLike[str], position: list[int] | None = None
) -> Generator[bytes, None, None]:
    """The lines of a JSON Lines file (``-``: standard input), gunzipped if gzip.

    ``position``, when given, holds the bytes of the file read so far in its
    one element, for a progress display.
    """
    with ExitStack() as stack:
        raw: io.BufferedReader
        if str(path) == "-":
            raw = sys.stdin.buffer  # type: ignore[assignment]
            position = None  # a pipe has no position
        else:
            raw = stack.enter_context(open(path, "rb"))
        lines: IO[bytes] | gzip.GzipFile = raw
        if raw.peek(2)[:2] == b"\x1f\x8b":
            lines = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        for count, line in enumerate(lines):
            if position is not None and not count & 0xFFF:
                position[0] = raw.tell()
            yield line


def backend_messages(instance: Backend, idle_timeout: float) -> Generator[bytes, None, None]:
    """Every message the backend still holds, from the beginning, then stop.

    The end of what is there is when nothing arrived for ``idle_timeout``
    seconds. Messages are read raw, so that the report can count and skip
    what is not an event instead of the subscription's logging each one;
    each is acknowledged once read (on a RabbitMQ or Kombu queue that
    consumes it, as any reader of a queue does).
    """
    subscription = instance.subscribe(from_beginning=True)
    try:
        while True:
            deliveries = subscription.fetch(idle_timeout)
            if not deliveries:
                return
            for delivery in deliveries:
                yield delivery.body
                subscription.ack(delivery.token)
    finally:
        subscription.close()


def describe_size(path: str | os.PathLike[str]) -> int | None:
    """The file's size in bytes, or None when it has none (a pipe)."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return None
    return size or None
