"""The publisher process: the same publisher as thread mode, fed by frames.

It imports only what publishing needs; its log records go to the parent as
frames, and it reports its statistics with each acknowledgement, after a
failed attempt, and every 0.25 s while a spool drains.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import queue
import sys
import threading
import time
from typing import IO

from ..events import safe_text
from ..normalize import Normalizer
from ..publisher import make_publisher
from .frames import (
    BatchFrame,
    Close,
    Deadline,
    Init,
    decode_parent_frame,
    read_frame,
    stats_state,
    write_frame,
)

# The publisher process reports its statistics at least this often (seconds)
# while a spool drains.
STATS_INTERVAL = 0.25


class _ForwardToParent(logging.Handler):
    def __init__(self, out: IO[bytes], frame_lock: threading.Lock) -> None:
        super().__init__(logging.INFO)
        self.out, self.frame_lock = out, frame_lock

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            write_frame(self.out, ["log", record.levelno, record.getMessage()], self.frame_lock)


def main() -> None:
    """Entry point of the publisher process."""
    code = _child_main()
    # Everything it opened is closed and its last frame written by now; the
    # interpreter's teardown of the broker client's modules would only make
    # the scheduler's close wait longer (30 ms with redis-py).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _child_main() -> int:
    # Frames own the real stdout; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        return _serve(sys.stdin.buffer, out)
    finally:
        out.close()


def _import_without(module: str, unused: list[str]) -> None:
    """Import the backend's ``module`` with the modules it declares unused when
    publishing kept out (importing them fails meanwhile), unless already loaded."""
    hidden = [name for name in unused if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        __import__(module)  # as an import statement would, which -X importtime reports
    finally:
        for name in hidden:
            sys.modules.pop(name, None)


def _serve(stdin: IO[bytes], out: IO[bytes]) -> int:
    lock = threading.Lock()
    log = logging.getLogger("distributed.eventbus")
    log.handlers[:] = [_ForwardToParent(out, lock)]
    log.setLevel(logging.INFO)
    log.propagate = False

    frame = read_frame(stdin, decode_parent_frame)
    if not isinstance(frame, Init):
        return 2
    init = frame.state
    try:
        for path in reversed(init["sys_path"]):
            if path not in sys.path:
                sys.path.insert(0, path)
        _import_without(init["backend_module"], init["unused"])
        backend = pickle.loads(init["backend"])
        settings = pickle.loads(init["settings"])
        normalizer = Normalizer.from_settings(init["source"], init["run_id"], settings.events)
        publisher = make_publisher(backend, normalizer, settings)
        publisher.on_failure = lambda: write_frame(
            out, ["stats", stats_state(publisher.stats)], lock
        )
    except Exception as exc:
        write_frame(out, ["failed", f"{type(exc).__name__}: {safe_text(exc)}"], lock)
        return 1
    # PUBLISHER_COMMAND started it with the collector off: what setting up made
    # lives as long as the process, so collections need not look at it again.
    gc.freeze()
    gc.enable()
    write_frame(out, ["ready"], lock)

    inbox: queue.Queue[BatchFrame | None] = queue.Queue()

    def read_parent() -> None:
        while True:
            try:
                message = read_frame(stdin, decode_parent_frame)
            except Exception:
                message = None
            if message is None or isinstance(message, Close):
                timeout = message.seconds if message else 0.0
                publisher.begin_close(time.monotonic() + timeout)
                inbox.put(None)
                return
            if isinstance(message, Deadline):
                publisher.begin_close(time.monotonic() + message.seconds)
                continue
            inbox.put(message)

    threading.Thread(target=read_parent, daemon=True).start()
    while True:
        try:
            message = inbox.get(timeout=STATS_INTERVAL)
        except queue.Empty:
            if publisher.stats.spool is not None:  # it drains meanwhile: its figures change
                write_frame(out, ["stats", stats_state(publisher.stats)], lock)
            continue
        if message is None:
            break
        if not publisher.send(message.records):
            break
        write_frame(out, ["ack", message.batch_id, stats_state(publisher.stats)], lock)
    publisher.finish()
    write_frame(out, ["closed", stats_state(publisher.stats)], lock)
    return 0
