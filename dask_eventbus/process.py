"""Process mode: publishing from a supervised child process.

Normalizing, encoding and above all the broker client cost CPU, and a thread
of the scheduler's process takes that CPU (and the GIL) from the scheduler.
In process mode the pipeline thread only packs batches of captured records
with msgpack and writes them to a child process (running :func:`main`),
which runs the same :class:`~dask_eventbus.publisher.Publisher` and
acknowledges each batch once the broker has.

The parent keeps every batch until it is acknowledged. When the child dies
it starts a new one and sends the unacknowledged batches again, in order, so
delivery stays at least once across a crash. Batches leave the buffer as
soon as they are packed (compact bytes the garbage collector need not scan,
unlike the captured tuples), up to ``queue.max-events`` unacknowledged events;
beyond that the pipeline stops taking records, the buffer fills, and the
overflow policy applies as in thread mode.

Frames are a 4-byte big-endian length and a msgpack array: parent to child
``["init", {...}]``, ``["batch", id, records]`` (each record an array
``[type, sequence, time, *fields]``, decoded into its record type),
``["deadline", seconds]`` (closing has begun: stop backing off),
``["close", seconds]``;
child to parent ``["ready"]``, ``["failed", text]``, ``["ack", id, stats]``,
``["stats", stats]`` (after a failed attempt, and every 0.25 s while a spool
drains), ``["log", level, text]`` and
``["closed", stats]``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import IO, Any, cast

import msgspec

from .backends import Backend
from .config import PUBLISHER_PROCESS_ENV, Settings, redact_url
from .events import safe_text
from .normalize import Normalizer
from .pacing import Backoff, RateLimitedLog
from .records import AnyRecord, LogRecord, Record
from .spooling import make_publisher
from .stats import DeliveryStats, Histogram

logger = logging.getLogger("distributed.eventbus")

START_TIMEOUT = 60.0
PUBLISHER_COMMAND = [sys.executable, "-c", "from dask_eventbus.process import main; main()"]
# A child that dies sooner than this after starting counts as a failed start.
CRASH_WINDOW = 10.0
_LENGTH = struct.Struct(">I")
# The publisher process reports its statistics at least this often (seconds)
# while a spool drains.
STATS_INTERVAL = 0.25


def publisher_environment() -> dict[str, str]:
    """The publisher process's environment: this one's, marked as that process's."""
    return {**os.environ, PUBLISHER_PROCESS_ENV: "1"}


def _pack_fallback(obj: object) -> object:
    # Whatever msgpack cannot carry travels as text; the child makes JSON of it.
    return safe_text(obj)


class _ParentFrame(msgspec.Struct, array_like=True, tag_field="kind"):
    """What the parent sends the publisher process."""


class _Init(_ParentFrame, tag="init"):
    state: dict[str, Any]


class _Batch(_ParentFrame, tag="batch"):
    batch_id: int
    records: list[AnyRecord]


class _Deadline(_ParentFrame, tag="deadline"):
    seconds: float


class _Close(_ParentFrame, tag="close"):
    seconds: float


_encoder = msgspec.msgpack.Encoder(enc_hook=_pack_fallback)
_decoder = msgspec.msgpack.Decoder()
_parent_frames = msgspec.msgpack.Decoder(_Init | _Batch | _Deadline | _Close)


def write_frame(stream: IO[bytes], message: Any, lock: threading.Lock | None = None) -> None:
    payload = _encoder.encode(message)
    data = _LENGTH.pack(len(payload)) + payload
    if lock is None:
        stream.write(data)
        stream.flush()
    else:
        with lock:
            stream.write(data)
            stream.flush()


def read_frame(stream: IO[bytes], decode: Callable[[bytes], Any] = _decoder.decode) -> Any:
    """The next frame, or None at end of stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return decode(payload)


def _decode_parent_frame(payload: bytes) -> _ParentFrame:
    try:
        return _parent_frames.decode(payload)
    except msgspec.ValidationError:
        # A field of a type the hooks do not promise (a change in what
        # distributed passes, say) costs that event, as it would cost its
        # normalization in thread mode, not the batch and all after it.
        _, batch_id, records = _decoder.decode(payload)
        return _Batch(batch_id, [_record_or_error(record) for record in records])


def _record_or_error(fields: list[Any]) -> AnyRecord:
    try:
        return msgspec.convert(fields, AnyRecord)
    except msgspec.ValidationError as exc:
        return LogRecord(
            fields[1],
            fields[2],
            "dask-eventbus.normalization-error",
            {"type": safe_text(fields[0]), "error": safe_text(exc)[:1000]},
        )


def _stats_state(stats: DeliveryStats) -> dict[str, Any]:
    return {
        "published": stats.published,
        "retries": stats.retries,
        "publish_errors": stats.publish_errors,
        "oversized": stats.oversized,
        "refused": stats.refused,
        "last_error": stats.last_error,
        "last_publish_time": stats.last_publish_time,
        "connected": stats.connected,
        "publish_seconds": stats.publish_seconds.state(),
        "delivery_seconds": stats.delivery_seconds.state(),
        "spool": stats.spool,
    }


# ---------------------------------------------------------------- parent side

# A started publisher process, the thread reading its replies, and where that
# thread puts the process's first answer.
_Launched = tuple["subprocess.Popen[bytes]", threading.Thread, "queue.Queue[list[Any] | None]"]


def _merged(base: DeliveryStats, state: dict[str, Any]) -> DeliveryStats:
    """``base`` (children that exited) plus the running child's latest report."""
    merged = DeliveryStats()
    for name in ("published", "retries", "publish_errors", "oversized", "refused"):
        setattr(merged, name, getattr(base, name) + state[name])
    merged.last_error = state["last_error"] or base.last_error
    merged.last_publish_time = state["last_publish_time"] or base.last_publish_time
    merged.connected = state["connected"]
    merged.spool = state["spool"]
    for name in ("publish_seconds", "delivery_seconds"):
        histogram: Histogram = getattr(merged, name)
        histogram.add(*getattr(base, name).state())
        histogram.add(*state[name])
    return merged


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
        self._write(_encoder.encode(_Deadline(max(0.0, deadline - time.monotonic()))))
        with self._changed:
            self._changed.notify_all()

    def idle(self) -> None:
        # A child that died while nothing was being sent still owes batches.
        if not self._alive and self._unacked:
            self._ensure_child()

    def send(self, records: Sequence[Record]) -> bool:
        batch_id = next(self._batch_ids)
        frame = _pack(_Batch(batch_id, cast("list[AnyRecord]", records)))
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
            self._write_to(child, _encoder.encode(_Close(remaining)))
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
            write_frame(child.stdin, _Init(self._init))
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
                child.stdin.write(_LENGTH.pack(len(frame)) + frame)
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
                    self._stats = _merged(self._finished_stats, frame[2])
                elif frame[0] in ("stats", "closed"):
                    self._stats = _merged(self._finished_stats, frame[1])
                self._changed.notify_all()

    def _finish_child_stats(self) -> None:
        self._finished_stats = self._stats
        self._finished_stats.connected = False


def _pack(message: _ParentFrame) -> bytes:
    try:
        return _encoder.encode(message)
    except (OverflowError, TypeError, ValueError):
        # Integers beyond 64 bits, say, in a log_event message: as text.
        return _encoder.encode(_packable(msgspec.to_builtins(message, enc_hook=_pack_fallback)))


def _packable(obj: Any) -> Any:
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        return str(obj)
    if isinstance(obj, list):
        return [_packable(item) for item in obj]
    if isinstance(obj, dict):
        return {_packable(k): _packable(v) for k, v in obj.items()}
    return obj


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


def _serve(stdin: IO[bytes], out: IO[bytes]) -> int:
    lock = threading.Lock()
    log = logging.getLogger("distributed.eventbus")
    log.handlers[:] = [_ForwardToParent(out, lock)]
    log.setLevel(logging.INFO)
    log.propagate = False

    frame = read_frame(stdin, _decode_parent_frame)
    if not isinstance(frame, _Init):
        return 2
    init = frame.state
    try:
        for path in reversed(init["sys_path"]):
            if path not in sys.path:
                sys.path.insert(0, path)
        backend = pickle.loads(init["backend"])
        settings = pickle.loads(init["settings"])
        normalizer = Normalizer.from_settings(init["source"], init["run_id"], settings.events)
        publisher = make_publisher(backend, normalizer, settings)
        publisher.on_failure = lambda: write_frame(
            out, ["stats", _stats_state(publisher.stats)], lock
        )
    except Exception as exc:
        write_frame(out, ["failed", f"{type(exc).__name__}: {safe_text(exc)}"], lock)
        return 1
    write_frame(out, ["ready"], lock)

    inbox: queue.Queue[_Batch | None] = queue.Queue()

    def read_parent() -> None:
        while True:
            try:
                message = read_frame(stdin, _decode_parent_frame)
            except Exception:
                message = None
            if message is None or isinstance(message, _Close):
                timeout = message.seconds if message else 0.0
                publisher.begin_close(time.monotonic() + timeout)
                inbox.put(None)
                return
            if isinstance(message, _Deadline):
                publisher.begin_close(time.monotonic() + message.seconds)
                continue
            inbox.put(message)

    threading.Thread(target=read_parent, daemon=True).start()
    while True:
        try:
            message = inbox.get(timeout=STATS_INTERVAL)
        except queue.Empty:
            if publisher.stats.spool is not None:  # it drains meanwhile: its figures change
                write_frame(out, ["stats", _stats_state(publisher.stats)], lock)
            continue
        if message is None:
            break
        if not publisher.send(message.records):
            break
        write_frame(out, ["ack", message.batch_id, _stats_state(publisher.stats)], lock)
    publisher.finish()
    write_frame(out, ["closed", _stats_state(publisher.stats)], lock)
    return 0
