"""EventBusPlugin: the scheduler hooks. They capture; the pipeline does the rest.

Every hook builds one record of its event's type (``records.py``) and hands
it to the pipeline's capture function. Hooks read from the scheduler
only what will have changed by the time the publisher thread gets to it (the
worker a task was sent to, the blame of a failure, a worker's description
before it is removed); everything else is kept by reference. No I/O, no
encoding, no locks, and no exception escapes into the scheduler.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import logging
import pickle
import socket
import uuid
from collections.abc import Callable, Sequence
from time import time
from typing import TYPE_CHECKING, Any

import dask
import distributed
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from . import events as ev
from . import metrics
from ._version import __version__
from .backends import Backend, create_backend
from .buffer import Pipeline
from .config import ConfigError, Settings, load_settings
from .normalize import TASK_UNITS, Normalizer, listed_dependencies, structure_units
from .process import ProcessSink
from .publisher import Sink, make_publisher
from .records import (
    ClientAddedRecord,
    ClientRemovedRecord,
    GraphRecord,
    GraphTasksRecord,
    LogRecord,
    Record,
    SchedulerClosingRecord,
    SchedulerRestartedRecord,
    SchedulerStartedRecord,
    SpanRecord,
    TransitionRecord,
    WorkerAddedRecord,
    WorkerMetricsRecord,
    WorkerRemovedRecord,
    WorkerStatusRecord,
    _SchedulerRecord,
)
from .spooling import check_spool

if TYPE_CHECKING:
    from distributed import Scheduler

logger = logging.getLogger("distributed.eventbus")

VERSIONS = {
    "dask": dask.__version__,
    "distributed": distributed.__version__,
    "dask_eventbus": __version__,
    "event_schema": ev.SCHEMA_VERSION,
}
# What dask.worker.metrics takes of a worker's heartbeat metrics.
_HEARTBEAT_METRICS = ("time", "cpu", "task_counts", "transfer", "event_loop_interval")
# The key sets of the scheduler's remove-worker log message, and the field
# names they get in dask.worker.removed.
_DEPARTURE_KEYS = {
    "processing-tasks": "processing",
    "lost-computed-tasks": "lost",
    "lost-scattered-tasks": "lost_scattered",
}


def _discard(record: Record) -> None:
    pass


def _no_sequence() -> int:
    return 0


def _matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in include) and not any(
        fnmatch.fnmatchcase(name, p) for p in exclude
    )


class EventBusPlugin(SchedulerPlugin):
    """Publish the scheduler's events as CloudEvents through a backend.

    All settings but the backend options come from Dask config
    (``eventbus.*``) as it is when the plugin is constructed; invalid settings
    raise :class:`~dask_eventbus.ConfigError` here, before any scheduler
    starts. The plugin pickles until started, so
    ``client.register_plugin(EventBusPlugin(...))`` works.

    Parameters
    ----------
    backend
        A backend name (``"jsonl"``, ``"memory"``, ``"redis"``, ``"rabbitmq"``,
        ``"kombu"``, ``"kafka"``, ``"nats"``, ``"webhook"`` or a third-party
        one), a :class:`Backend` instance, or ``None`` for the configured
        ``eventbus.backend``.
    **options
        Backend options, overriding ``eventbus.backends.<name>.*``.
    """

    name = "eventbus"

    def __init__(self, backend: str | Backend | None = None, **options: Any) -> None:
        self.settings: Settings = load_settings()
        chosen = self.settings.backend if backend is None else backend
        self.backend = create_backend(chosen, options, self.settings.backends)
        self.mode = _pipeline_mode(self.settings.pipeline.mode, self.backend)
        events = self.settings.events
        self._enabled = {
            type_: _matches(type_, events.include, events.exclude) for type_ in ev.EVENT_TYPES
        }
        transitions = self.settings.transitions
        self._transitions_on = self._enabled[ev.TASK_TRANSITION]
        self._transition_patterns = (transitions.include, transitions.exclude)
        self._transition_allowed: dict[tuple[str, str], bool] | None = (
            None if transitions.include == ["*"] and not transitions.exclude else {}
        )
        self.scheduler: Scheduler | None = None
        self._pipeline: Pipeline | None = None
        self._capture: Callable[[Record], None] = _discard
        self._next_sequence: Callable[[], int] = _no_sequence
        self._workers: dict[str, dict[str, Any]] = {}
        self._departures: dict[str, dict[str, Any]] = {}
        self._tasks: dict[Any, Any] = {}
        self._group_names = False
        self._structure_on = events.graph_structure and self._enabled[ev.GRAPH_TASKS]
        self._structure_units = structure_units(events.max_event_bytes)
        self._listed_dependencies = listed_dependencies(events.max_event_bytes)
        self._spans_announced: set[str] = set()
        self._metrics_callback: PeriodicCallback | None = None

    def __repr__(self) -> str:
        return f"<EventBusPlugin backend={self.backend!r}>"

    # ------------------------------------------------------------ lifecycle

    async def start(self, scheduler: Scheduler) -> None:
        if self._pipeline is not None:
            return
        self.scheduler = scheduler
        self._tasks = scheduler.tasks
        source = self.settings.source or f"dask://{socket.gethostname()}/{scheduler.id}"
        run_id = uuid.uuid4().hex[:12]
        # A spool another scheduler holds fails the start, after waiting (off
        # the event loop) for a publisher process that may still be closing.
        await asyncio.get_running_loop().run_in_executor(None, check_spool, self.settings)
        sink: Sink
        if self.mode == "process":
            sink = ProcessSink(self.backend, self.settings, source, run_id)
            # Now, not in the pipeline thread a moment later: what the plugin
            # holds in the scheduler's process is all there once start returns.
            sink.launch()
        else:
            normalizer = Normalizer.from_settings(source, run_id, self.settings.events)
            sink = make_publisher(self.backend, normalizer, self.settings)
        # Task groups name a task without parsing its key; in process mode the
        # publisher process parses the key instead of receiving the names.
        self._group_names = self.mode == "thread"
        self._pipeline = pipeline = Pipeline(self.backend, sink, self.settings)
        for address, ws in scheduler.workers.items():
            self._workers[address] = _worker_info(ws)
        scheduler.handlers["eventbus_stats"] = self.stats
        self._next_sequence = pipeline.next_sequence
        self._capture = pipeline.capture
        pipeline.start()
        metrics.export(pipeline)
        interval = self.settings.events.worker_metrics_interval
        if interval > 0 and self._enabled[ev.WORKER_METRICS]:
            self._metrics_callback = PeriodicCallback(self._capture_worker_metrics, interval * 1000)
            self._metrics_callback.start()
        logger.info(
            "dask-eventbus: publishing scheduler events to %r (%s mode)", self.backend, self.mode
        )
        self._capture_scheduler(SchedulerStartedRecord)

    async def before_close(self) -> None:
        # No metrics after the closing event: it is the last the scheduler sends.
        self._stop_worker_metrics()
        self._capture_scheduler(SchedulerClosingRecord)

    async def close(self) -> None:
        pipeline = self._pipeline
        if pipeline is None or self._capture is _discard:
            return
        # On the event loop, so that no hook runs between the last sequence
        # number and the end of capture.
        self._stop_worker_metrics()
        self._capture = _discard
        self._next_sequence = _no_sequence
        pipeline.stop_capture()
        if self.scheduler is not None:
            self.scheduler.handlers.pop("eventbus_stats", None)
        await asyncio.get_running_loop().run_in_executor(None, pipeline.close)
        metrics.unexport(pipeline)

    def _stop_worker_metrics(self) -> None:
        if self._metrics_callback is not None:
            self._metrics_callback.stop()
            self._metrics_callback = None

    def stats(self) -> dict[str, Any]:
        """Delivery statistics; also the scheduler handler ``eventbus_stats``."""
        if self._pipeline is None:
            return {"backend": self.backend.name, "started": False}
        return {"started": True, **self._pipeline.stats()}

    # ------------------------------------------------------------ hooks

    def transition(
        self,
        key: Any,
        start: str,
        finish: str,
        *args: Any,
        stimulus_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            if not self._transitions_on:
                return
            allowed = self._transition_allowed
            if allowed is not None:
                ok = allowed.get((start, finish))
                if ok is None:
                    ok = allowed[start, finish] = _matches(
                        f"{start}->{finish}", *self._transition_patterns
                    )
                if not ok:
                    return
            ts = self._tasks.get(key)
            worker = None
            if finish == "processing" and ts is not None:
                ws = ts.processing_on
                if ws is not None:
                    worker = ws.address
            elif finish == "erred":
                kwargs = self._blame(ts, kwargs)
            # Names, not the TaskGroup: a record of strings and numbers is
            # untracked by the cyclic GC at its first collection, so a burst
            # of buffered records does not set off full collections of the
            # scheduler's heap.
            group = prefix = None
            if ts is not None and self._group_names:
                task_group = ts.group
                group, prefix = task_group.name, task_group.prefix.name
            self._capture(
                TransitionRecord(
                    self._next_sequence(),
                    time(),
                    key,
                    start,
                    finish,
                    stimulus_id,
                    worker,
                    kwargs,
                    group,
                    prefix,
                )
            )
        except Exception:
            logger.debug("dask-eventbus: transition capture failed", exc_info=True)

    @staticmethod
    def _blame(ts: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        # Tasks that fail because a dependency failed get no exception text in
        # their transition; it lives on the task to blame, which may be
        # recomputed (and reset) before the publisher thread looks.
        if kwargs.get("exception_text") is not None:
            return kwargs
        blame = ts.exception_blame if ts is not None else None
        if blame is None:
            return kwargs
        return {
            **kwargs,
            "cause": blame.key,
            "exception_text": blame.exception_text,
            "traceback_text": blame.traceback_text,
        }

    def update_graph(
        self,
        scheduler: Scheduler,
        *,
        client: str,
        keys: Any,
        tasks: list[Any],
        stimulus_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            if stimulus_id is None:
                # Older distributed releases pass plugins none; one in
                # distributed's own form lets consumers join a submission's
                # dask.graph.updated and dask.graph.tasks events.
                stimulus_id = f"update-graph-{time()}"
            if self._enabled[ev.GRAPH_UPDATED]:
                limit = self.settings.events.max_graph_keys
                shown = list(itertools.islice(keys, limit))
                self._capture(
                    GraphRecord(
                        self._next_sequence(),
                        time(),
                        client,
                        tasks,
                        shown,
                        len(keys),
                        stimulus_id,
                    )
                )
            if self._structure_on:
                self._capture_structure(scheduler, client, tasks, stimulus_id)
        except Exception:
            logger.debug("dask-eventbus: update_graph capture failed", exc_info=True)

    def _capture_structure(
        self, scheduler: Scheduler, client: str, keys: list[Any], stimulus_id: str | None
    ) -> None:
        # Dependencies are read now: a finished task is forgotten, and its
        # dependencies cleared, long before the publisher would look. Each
        # chunk is a few flat lists rather than a container per task, because
        # a hundred thousand new containers that survive set off full garbage
        # collections of the scheduler's heap. Chunks are cut by a count of
        # keys (normalize.TASK_UNITS), which keeps each event under
        # max-event-bytes without encoding anything.
        budget, most = self._structure_units, self._listed_dependencies
        all_tasks = self._tasks
        chunks: list[GraphTasksRecord] = []
        chunk = _structure_chunk(client, stimulus_id)
        units = 0
        span_ids: set[str | None] = set()
        limit = self.settings.events.max_graph_tasks
        for key in itertools.islice(keys, limit):
            ts = all_tasks.get(key)
            if ts is None:
                continue
            dependencies = ts.dependencies
            annotations = ts.annotations
            size = TASK_UNITS + min(len(dependencies), most)
            if annotations:
                size += len(annotations)
            if units + size > budget and chunk.keys:
                chunks.append(chunk)
                chunk, units = _structure_chunk(client, stimulus_id), 0
            units += size
            if annotations:
                # A copy: a later submission of the same key changes them in place.
                chunk.annotations[len(chunk.keys)] = annotations.copy()
            chunk.keys.append(key)
            chunk.dependency_counts.append(len(dependencies))
            append = chunk.dependencies.append
            for dts in dependencies:
                append(dts.key)
            span_id = ts.group.span_id
            chunk.span_ids.append(span_id)
            span_ids.add(span_id)
        chunks.append(chunk)
        if self._enabled[ev.SPAN]:
            self._capture_spans(scheduler, span_ids)
        omitted = max(0, len(keys) - limit)
        now = time()
        for number, record in enumerate(chunks, 1):
            record.sequence = self._next_sequence()
            record.time = now
            record.chunk, record.chunks = number, len(chunks)
            record.tasks_total, record.tasks_omitted = len(keys), omitted
            self._capture(record)

    def _capture_spans(self, scheduler: Scheduler, span_ids: set[str | None]) -> None:
        extension = scheduler.extensions.get("spans")
        if extension is None:
            return
        announced = self._spans_announced
        for span_id in span_ids - announced:
            span = extension.spans.get(span_id)
            # Ancestors first, so that consumers can build the tree as events come.
            lineage = []
            while span is not None and span.id not in announced:
                lineage.append(span)
                span = span.parent
            for span in reversed(lineage):
                announced.add(span.id)
                parent = span.parent
                self._capture(
                    SpanRecord(
                        self._next_sequence(),
                        time(),
                        span.id,
                        [str(part) for part in span.name],
                        parent.id if parent is not None else None,
                    )
                )

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        try:
            info = _worker_info(scheduler.workers[worker])
            self._workers[worker] = info
            if self._enabled[ev.WORKER_ADDED]:
                self._capture(WorkerAddedRecord(self._next_sequence(), time(), info, None))
        except Exception:
            logger.debug("dask-eventbus: add_worker capture failed", exc_info=True)

    def remove_worker(
        self,
        scheduler: Scheduler,
        worker: str,
        *,
        stimulus_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            info = self._workers.pop(worker, None) or {"address": worker}
            # The scheduler logs what the worker took with it just before
            # calling this hook (log_event below keeps it).
            departure = self._departures.pop(worker, None)
            if self._enabled[ev.WORKER_REMOVED]:
                if departure is not None:
                    departure = self._departure_fields(departure)
                self._capture(
                    WorkerRemovedRecord(self._next_sequence(), time(), info, stimulus_id, departure)
                )
        except Exception:
            logger.debug("dask-eventbus: remove_worker capture failed", exc_info=True)

    def _departure_fields(self, message: dict[str, Any]) -> dict[str, Any]:
        limit = self.settings.events.max_graph_keys
        fields: dict[str, Any] = {"expected": message.get("expected")}
        for name, field in _DEPARTURE_KEYS.items():
            keys = message.get(name)
            if keys is not None:
                fields[field] = list(itertools.islice(keys, limit))
                fields[f"{field}_total"] = len(keys)
        return fields

    def _capture_worker_metrics(self) -> None:
        scheduler = self.scheduler
        if scheduler is None:
            return
        now = time()
        for ws in list(scheduler.workers.values()):
            try:
                heartbeat = ws.metrics
                memory = None
                if "memory" in heartbeat:
                    state = ws.memory
                    memory = (state.process, state.managed, state.unmanaged, state.spilled)
                self._capture(
                    WorkerMetricsRecord(
                        self._next_sequence(),
                        now,
                        ws.address,
                        ws.status.name,
                        ws.memory_limit,
                        len(ws.processing),
                        memory,
                        {name: heartbeat[name] for name in _HEARTBEAT_METRICS if name in heartbeat},
                    )
                )
            except Exception:
                logger.debug("dask-eventbus: worker metrics capture failed", exc_info=True)

    def add_client(self, scheduler: Scheduler, client: str) -> None:
        self._capture_simple(ClientAddedRecord, client)

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        self._capture_simple(ClientRemovedRecord, client)

    def restart(self, scheduler: Scheduler) -> None:
        self._capture_scheduler(SchedulerRestartedRecord)

    def log_event(self, topic: str, msg: Any) -> None:
        self._capture_simple(LogRecord, topic, msg)
        if type(msg) is not dict:
            return
        action = msg.get("action")
        if action == "worker-status-change":
            self._capture_simple(
                WorkerStatusRecord,
                topic,
                msg.get("status"),
                msg.get("prev-status"),
                msg.get("stimulus_id"),
            )
        elif action == "remove-worker" and "worker" not in msg:
            # Logged under the worker's address (and again under "all", with
            # a "worker" field) right before the remove_worker hook runs.
            self._departures[topic] = msg

    def _capture_simple(self, record_type: type[Record], *fields: Any) -> None:
        try:
            if self._enabled[record_type.event_type]:
                self._capture(record_type(self._next_sequence(), time(), *fields))
        except Exception:
            logger.debug("dask-eventbus: %s capture failed", record_type.event_type, exc_info=True)

    def _capture_scheduler(self, record_type: type[_SchedulerRecord]) -> None:
        scheduler = self.scheduler
        if scheduler is None:
            return
        self._capture_simple(
            record_type,
            scheduler.id,
            scheduler.address or None,
            VERSIONS,
            len(scheduler.workers),
        )


def _structure_chunk(client: str, stimulus_id: str | None) -> GraphTasksRecord:
    return GraphTasksRecord(0, 0.0, client, stimulus_id, 0, 0, [], [], [], [], {}, 0, 0)


def _pipeline_mode(configured: str, backend: Backend) -> str:
    mode = backend.modes[0] if configured == "auto" else configured
    if mode == "process" and type(backend).__module__ == "__main__":
        # The publisher process cannot import the script that defines it.
        if configured == "auto" and "thread" in backend.modes:
            return "thread"
        raise ConfigError(
            f"Invalid event bus config eventbus.pipeline.mode = {configured!r}: the "
            f"{backend.name} backend's class is defined in __main__, which the "
            "publisher process cannot import; move it to a module, or use thread mode"
        )
    if mode not in backend.modes:
        raise ConfigError(
            f"Invalid event bus config eventbus.pipeline.mode = {configured!r}: the "
            f"{backend.name} backend runs only in {' or '.join(backend.modes)} mode"
        )
    if mode == "process":
        try:
            pickle.loads(pickle.dumps(backend))
        except Exception as exc:
            raise ConfigError(
                f"The {backend.name} backend cannot be sent to the publisher process "
                f"({type(exc).__name__}: {exc}); define its class at module level, or set "
                "eventbus.pipeline.mode to thread"
            ) from None
    return mode


def _worker_info(ws: Any) -> dict[str, Any]:
    return {
        "address": ws.address,
        "name": str(ws.name),
        "host": ws.host,
        "nthreads": ws.nthreads,
        "memory_limit": ws.memory_limit,
        "resources": dict(ws.resources),
    }
