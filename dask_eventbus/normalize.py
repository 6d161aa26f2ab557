"""Normalization: from the records hooks capture to :class:`~dask_eventbus.events.Event`.

The publisher (a thread of the scheduler's process, or the publisher process)
runs this for every record, so it must stay cheap; it never raises, turning
anything it cannot normalize into a ``dask.log`` event that says so.
"""

from __future__ import annotations

import functools
import re
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import msgspec

from .config import EventSettings
from .events import (
    DATA_CONTENT_TYPE,
    LOG,
    MAX_OVERSIZED_SUBJECT,
    OVERSIZED,
    SEQUENCE_DIGITS,
    SPECVERSION,
    ClientInfo,
    Dropped,
    Event,
    GraphTask,
    GraphTasks,
    GraphUpdated,
    LogMessage,
    Oversized,
    Probe,
    SchedulerInfo,
    SpanInfo,
    TaskTransition,
    Versions,
    WorkerInfo,
    WorkerMetrics,
    WorkerStatus,
    _as_tuple,
    _Data,
    _json_encoder,
    key_to_str,
    safe_text,
)
from .records import (
    ClientAddedRecord,
    ClientRemovedRecord,
    DroppedRecord,
    GraphRecord,
    GraphTasksRecord,
    LogRecord,
    ProbeRecord,
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
    _ClientRecord,
    _SchedulerRecord,
    _WorkerRecord,
)


def _truncate(text: object, limit: int) -> str | None:
    if text is None:
        return None
    text = text if isinstance(text, str) else safe_text(text)
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


_NO_EXTRA: dict[str, Any] = {}
# Longest JSON an annotation value keeps in dask.graph.tasks; a longer one is
# replaced by its text, cut to this length.
MAX_ANNOTATION_CHARS = 200
# Bytes of JSON allowed per unit when a submission's structure is cut into
# chunks. A dependency or an annotation is one unit; a task is TASK_UNITS, for
# its key appears with its prefix, group, span id and field names: room for
# keys of some 300 characters, far more than Dask's own keys take.
_BYTES_PER_UNIT = 512
TASK_UNITS = 2


def structure_units(max_event_bytes: int) -> int:
    """How many units one ``dask.graph.tasks`` chunk holds at most."""
    return max(16, max_event_bytes // _BYTES_PER_UNIT)


def listed_dependencies(max_event_bytes: int) -> int:
    """The most dependencies one task lists, so that it fits in a chunk of its own."""
    return structure_units(max_event_bytes) // 2


def _group_name(key: object) -> str:
    # distributed.utils.key_split_group, without importing distributed here.
    if isinstance(key, list):
        key = _as_tuple(key)
    if isinstance(key, tuple):
        return key_to_str(key[0]) if key else "Other"
    text = key_to_str(key)
    if text.startswith("("):
        return text.split(",", 1)[0].strip("()\"'")
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return "data"
    if text.startswith("<"):
        parts = text.strip("<>").split()
        return parts[0].split(".")[-1] if parts else text
    return _prefix_name(key)


_HEX = re.compile(r"[a-f]+")
_TOKEN = re.compile(r"[a-f0-9]{32}")


@functools.lru_cache(100000)
def key_split(s: Any) -> str:
    """The task prefix name of a key, exactly as ``dask.utils.key_split`` gives it.

    A copy, so that the publisher process need not import Dask (``import dask``
    alone costs more than everything else it imports); ``tests/test_events.py``
    checks it against Dask's own for every form of key.
    """
    if type(s) is bytes:
        return key_split(s.decode())
    if type(s) is tuple:
        return key_split(s[0])
    try:
        words = s.split("-")
        result = words[0]
        if not result[0].isalpha():
            result = result.split(",")[0].strip("_'()\"")
        for word in words[1:]:
            if word.isalpha() and not (len(word) == 8 and _HEX.match(word) is not None):
                result += f"-{word}"
            else:
                break
        if len(result) == 32 and _TOKEN.match(result):
            return "data"
        if result[0] == "<":
            result = result.strip("<>").split()[0].split(".")[-1]
        return sys.intern(result)
    except Exception:
        return "Other"


def _prefix_name(key: object) -> str:
    if isinstance(key, list):
        key = _as_tuple(key)
    try:
        return key_split(key)
    except Exception:
        return "Other"


class Normalizer:
    """Turns captured records into :class:`Event` objects for one plugin instance."""

    def __init__(
        self,
        source: str,
        run_id: str,
        *,
        include_tracebacks: bool = True,
        max_text_length: int = 10000,
        max_event_bytes: int = 900_000,
    ) -> None:
        self.source = source
        self.run_id = run_id
        self.include_tracebacks = include_tracebacks
        self.max_text_length = max_text_length
        self.max_event_bytes = max_event_bytes
        self._builders: dict[type[Record], Callable[[Any], tuple[str | None, _Data]]] = {
            TransitionRecord: self._transition,
            GraphRecord: self._graph,
            WorkerAddedRecord: self._worker,
            WorkerRemovedRecord: self._worker,
            ClientAddedRecord: self._client,
            ClientRemovedRecord: self._client,
            SchedulerStartedRecord: self._scheduler,
            SchedulerClosingRecord: self._scheduler,
            SchedulerRestartedRecord: self._scheduler,
            LogRecord: self._log,
            DroppedRecord: self._dropped,
            ProbeRecord: self._probe,
            GraphTasksRecord: self._graph_tasks,
            SpanRecord: self._span,
            WorkerStatusRecord: self._worker_status,
            WorkerMetricsRecord: self._worker_metrics,
        }
        self._listed_dependencies = listed_dependencies(max_event_bytes)

    @classmethod
    def from_settings(cls, source: str, run_id: str, settings: EventSettings) -> Normalizer:
        return cls(
            source,
            run_id,
            include_tracebacks=settings.include_tracebacks,
            max_text_length=settings.max_text_length,
            max_event_bytes=settings.max_event_bytes,
        )

    def oversized(self, event: Event, size: int) -> Event:
        """The :data:`OVERSIZED` event to publish instead of ``event`` (``size`` bytes)."""
        data = Oversized(type=event.type, size=size, limit=self.max_event_bytes)
        # A subject (task key) can itself be what is too large.
        subject = _truncate(event.subject, MAX_OVERSIZED_SUBJECT)
        return msgspec.structs.replace(event, type=OVERSIZED, subject=subject, data=data)

    def event(self, record: Record) -> Event:
        """The event for one record; never raises."""
        type_ = record.event_type
        try:
            subject, data = self._builders[type(record)](record)
        except Exception as exc:
            subject, data = (
                None,
                LogMessage(
                    topic="dask-eventbus.normalization-error",
                    message={"type": safe_text(type_), "error": safe_text(exc)[:1000]},
                ),
            )
            type_ = LOG
        return Event(
            specversion=SPECVERSION,
            id=f"{self.run_id}-{record.sequence}",
            source=self.source,
            type=type_,
            time=datetime.fromtimestamp(record.time, timezone.utc),
            datacontenttype=DATA_CONTENT_TYPE,
            sequence=str(record.sequence).zfill(SEQUENCE_DIGITS),
            subject=subject or None,  # CloudEvents forbids an empty subject
            data=data,
        )

    def _transition(self, record: TransitionRecord) -> tuple[str, TaskTransition]:
        # The hottest path of the publisher thread: values distributed passes
        # in are JSON-native already and go through untouched (the encoder's
        # hook still makes any surprise JSON-safe).
        key = record.key
        key_str = key if type(key) is str else key_to_str(key)
        group_name, prefix_name = record.group, record.prefix
        if group_name is None or prefix_name is None:
            group_name, prefix_name = _group_name(key), _prefix_name(key)
        get = (record.extra or _NO_EXTRA).get
        finish = record.finish
        data = TaskTransition(
            key=key_str,
            group=group_name,
            prefix=prefix_name,
            start=record.start,
            finish=finish,
            stimulus_id=record.stimulus_id,
            worker=record.worker or get("worker"),
            nbytes=get("nbytes"),
            typename=get("typename"),
            startstops=get("startstops") or None,
        )
        if finish == "erred":
            cause = get("cause")
            if cause is not None:
                data.cause = key_to_str(cause)
            if self.include_tracebacks:
                limit = self.max_text_length
                data.exception = _truncate(get("exception_text"), limit)
                data.traceback = _truncate(get("traceback_text"), limit)
        return key_str, data

    def _graph(self, record: GraphRecord) -> tuple[str, GraphUpdated]:
        prefixes = Counter(_prefix_name(key) for key in record.tasks)
        data = GraphUpdated(
            client=safe_text(record.client),
            tasks=len(record.tasks),
            keys=[key_to_str(k) for k in record.keys],
            keys_total=record.keys_total,
            prefixes=dict(prefixes),
            stimulus_id=record.stimulus_id,
        )
        return data.client, data

    def _graph_tasks(self, record: GraphTasksRecord) -> tuple[str, GraphTasks]:
        most = self._listed_dependencies
        dependencies, annotations = record.dependencies, record.annotations
        tasks = []
        offset = 0
        for index, (key, count, span_id) in enumerate(
            zip(record.keys, record.dependency_counts, record.span_ids, strict=True)
        ):
            annotated = annotations.get(index)
            tasks.append(
                GraphTask(
                    key=key_to_str(key),
                    prefix=_prefix_name(key),
                    group=_group_name(key),
                    dependencies=[
                        key_to_str(k) for k in dependencies[offset : offset + min(count, most)]
                    ],
                    dependencies_omitted=max(0, count - most),
                    span_id=span_id,
                    annotations=_annotations(annotated) if annotated else None,
                )
            )
            offset += count
        client = safe_text(record.client)
        data = GraphTasks(
            client=client,
            stimulus_id=record.stimulus_id,
            chunk=record.chunk,
            chunks=record.chunks,
            tasks=tasks,
            tasks_total=record.tasks_total,
            tasks_omitted=record.tasks_omitted,
        )
        return client, data

    def _span(self, record: SpanRecord) -> tuple[str, SpanInfo]:
        data = SpanInfo(span_id=record.span_id, name=record.name, parent_id=record.parent_id)
        return record.span_id, data

    def _worker(self, record: _WorkerRecord) -> tuple[str, WorkerInfo]:
        data = WorkerInfo(stimulus_id=record.stimulus_id, **record.info)
        departure = getattr(record, "departure", None)
        if departure:
            for field, value in departure.items():
                if isinstance(value, list):
                    value = [key_to_str(key) for key in value]
                setattr(data, field, value)
        return data.address, data

    def _worker_status(self, record: WorkerStatusRecord) -> tuple[str, WorkerStatus]:
        data = WorkerStatus(
            address=record.address,
            status=record.status,
            previous=record.previous,
            stimulus_id=record.stimulus_id,
        )
        return record.address, data

    def _worker_metrics(self, record: WorkerMetricsRecord) -> tuple[str, WorkerMetrics]:
        heartbeat = record.metrics
        counts = heartbeat.get("task_counts")
        transfer = heartbeat.get("transfer") or _NO_EXTRA
        process = managed = unmanaged = spilled = None
        if record.memory is not None:
            process, managed, unmanaged, spilled = record.memory
        data = WorkerMetrics(
            address=record.address,
            status=record.status,
            heartbeat=heartbeat.get("time"),
            memory_process=process,
            memory_managed=managed,
            memory_unmanaged=unmanaged,
            memory_spilled=spilled,
            memory_limit=record.memory_limit,
            cpu=heartbeat.get("cpu"),
            executing=None if counts is None else counts.get("executing", 0),
            ready=None if counts is None else counts.get("ready", 0),
            processing=record.processing,
            transfers_incoming=transfer.get("incoming_count"),
            transfers_incoming_bytes=transfer.get("incoming_bytes"),
            transfers_outgoing=transfer.get("outgoing_count"),
            transfers_outgoing_bytes=transfer.get("outgoing_bytes"),
            event_loop_interval=heartbeat.get("event_loop_interval"),
        )
        return record.address, data

    def _client(self, record: _ClientRecord) -> tuple[str, ClientInfo]:
        client = safe_text(record.client)
        return client, ClientInfo(client=client)

    def _scheduler(self, record: _SchedulerRecord) -> tuple[str | None, SchedulerInfo]:
        data = SchedulerInfo(
            scheduler_id=record.scheduler_id,
            address=record.address,
            versions=Versions(**record.versions),
            workers=record.workers,
        )
        return record.address, data

    def _log(self, record: LogRecord) -> tuple[str, LogMessage]:
        topic = safe_text(record.topic)
        return topic, LogMessage(topic=topic, message=record.message)

    def _probe(self, record: ProbeRecord) -> tuple[str, Probe]:
        return record.probe_id, Probe(
            probe_id=record.probe_id, host=record.host, dask_eventbus=record.version
        )

    def _dropped(self, record: DroppedRecord) -> tuple[None, Dropped]:
        data = Dropped(
            count=record.count,
            first_sequence=record.first,
            last_sequence=record.last,
            policy=record.policy,
        )
        return None, data


def _annotations(annotations: dict[str, Any]) -> dict[str, Any] | None:
    """A task's annotations for ``dask.graph.tasks``: JSON-safe, each value capped.

    The ``span`` annotation is left out: the task's ``span_id`` says the same.
    """
    result: dict[str, Any] = {}
    for name, value in annotations.items():
        name = key_to_str(name)
        if name == "span":
            continue
        if value is None or isinstance(value, (bool, int, float)):
            result[name] = value
            continue
        try:
            size = len(_json_encoder.encode(value))
        except Exception:
            size = MAX_ANNOTATION_CHARS + 1
        if size > MAX_ANNOTATION_CHARS:
            value = _truncate(value, MAX_ANNOTATION_CHARS)
        result[name] = value
    return result or None
