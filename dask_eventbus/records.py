"""Capture records: what a scheduler hook keeps of an event, one type per event.

A hook builds one record holding references to what the scheduler passed in
and appends it to the buffer; the publisher normalizes it into an
:class:`~dask_eventbus.events.Event` later, off the scheduler's event loop.

Records are msgspec structs rather than tuples or named tuples because that
is what costs nothing per event: ``gc=False`` keeps the garbage collector
from ever tracking them (a burst of buffered records must not set off full
collections of the scheduler's heap, and named tuples stay tracked), and
``array_like`` with a tag makes each one travel to the publisher process as
``[type, sequence, time, *fields]``, decoded back into its own type there.

No ``from __future__ import annotations`` here: msgspec reads the fields'
annotations in every publisher process, and annotations kept as strings
would each be compiled there first (2 ms of its start).
"""

import time
from typing import Any, ClassVar, Union, get_args

import msgspec

from .events import (
    CLIENT_ADDED,
    CLIENT_REMOVED,
    DROPPED,
    GRAPH_TASKS,
    GRAPH_UPDATED,
    LOG,
    PROBE,
    SCHEDULER_CLOSING,
    SCHEDULER_RESTARTED,
    SCHEDULER_STARTED,
    SPAN,
    TASK_TRANSITION,
    WORKER_ADDED,
    WORKER_METRICS,
    WORKER_REMOVED,
    WORKER_STATUS,
)


class Record(msgspec.Struct, array_like=True, gc=False, tag_field="type"):
    """Fields every record starts with."""

    sequence: int
    """Position in the scheduler's sequence of events, from 1."""
    time: float
    """Seconds since the epoch, when the hook ran."""

    event_type: ClassVar[str]
    """The CloudEvents ``type`` the record becomes (its tag)."""


class TransitionRecord(Record, tag=TASK_TRANSITION):
    key: Any
    start: str
    finish: str
    stimulus_id: str | None = None
    worker: str | None = None
    """The worker a task went to ``processing`` on."""
    extra: dict[str, Any] | None = None
    """The keyword arguments distributed passed to the hook."""
    group: str | None = None
    """Task group and prefix names; None when the publisher parses them from the key."""
    prefix: str | None = None


class GraphRecord(Record, tag=GRAPH_UPDATED):
    client: Any
    tasks: Any
    keys: list[Any]
    """The first ``events.max-graph-keys`` keys."""
    keys_total: int
    stimulus_id: str | None


class GraphTasksRecord(Record, tag=GRAPH_TASKS):
    """One chunk of a submission's structure, as flat lists (see the plugin)."""

    client: Any
    stimulus_id: str | None
    chunk: int
    chunks: int
    keys: list[Any]
    dependency_counts: list[int]
    """How many of ``dependencies`` belong to each key, in order."""
    dependencies: list[Any]
    span_ids: list[str | None]
    annotations: dict[int, dict[str, Any]]
    """Annotations by position in ``keys``, for the tasks that have any."""
    tasks_total: int
    tasks_omitted: int


class SpanRecord(Record, tag=SPAN):
    span_id: str
    name: list[str]
    parent_id: str | None


class _WorkerRecord(Record):
    info: dict[str, Any]
    stimulus_id: str | None


class WorkerAddedRecord(_WorkerRecord, tag=WORKER_ADDED):
    pass


class WorkerRemovedRecord(_WorkerRecord, tag=WORKER_REMOVED):
    departure: dict[str, Any] | None = None
    """The scheduler's ``remove-worker`` log message, its key sets cut to
    ``events.max-graph-keys`` as lists beside their totals."""


class WorkerStatusRecord(Record, tag=WORKER_STATUS):
    address: str
    status: str
    previous: str | None
    stimulus_id: str | None


class WorkerMetricsRecord(Record, tag=WORKER_METRICS):
    address: str
    status: str
    memory_limit: int | None
    processing: int
    memory: tuple[int, int, int, int] | None
    """``(process, managed, unmanaged, spilled)``: distributed's MemoryState."""
    metrics: dict[str, Any]
    """The worker's last heartbeat metrics, the few entries the event uses."""


class _ClientRecord(Record):
    client: Any


class ClientAddedRecord(_ClientRecord, tag=CLIENT_ADDED):
    pass


class ClientRemovedRecord(_ClientRecord, tag=CLIENT_REMOVED):
    pass


class _SchedulerRecord(Record):
    scheduler_id: str
    address: str | None
    versions: dict[str, str]
    workers: int


class SchedulerStartedRecord(_SchedulerRecord, tag=SCHEDULER_STARTED):
    pass


class SchedulerClosingRecord(_SchedulerRecord, tag=SCHEDULER_CLOSING):
    pass


class SchedulerRestartedRecord(_SchedulerRecord, tag=SCHEDULER_RESTARTED):
    pass


class LogRecord(Record, tag=LOG):
    topic: Any
    message: Any


class DroppedRecord(Record, tag=DROPPED):
    """Stands for records dropped or lost; its sequence is the last of them."""

    count: int
    first: int
    last: int
    policy: str
    """The overflow policy that dropped them, ``error`` for a batch that failed,
    ``refused`` for events the broker refused for good, or ``spool-corrupt``
    for events lost to damage in the spool."""

    @classmethod
    def spanning(
        cls, first: int, last: int, policy: str, count: int | None = None
    ) -> "DroppedRecord":
        """Stands for sequence numbers ``first`` to ``last``, lost now by
        ``policy``, taking the last of them; ``count`` when fewer events than
        numbers were lost (a failed batch that held announcements)."""
        lost = last - first + 1 if count is None else count
        return cls(last, time.time(), lost, first, last, policy)


class ProbeRecord(Record, tag=PROBE):
    probe_id: str
    host: str
    version: str


AnyRecord = Union[  # noqa: UP007 - msgspec needs a runtime Union on Python 3.10
    TransitionRecord,
    GraphRecord,
    GraphTasksRecord,
    SpanRecord,
    WorkerAddedRecord,
    WorkerRemovedRecord,
    WorkerStatusRecord,
    WorkerMetricsRecord,
    ClientAddedRecord,
    ClientRemovedRecord,
    SchedulerStartedRecord,
    SchedulerClosingRecord,
    SchedulerRestartedRecord,
    LogRecord,
    DroppedRecord,
    ProbeRecord,
]
"""Every record type, for decoding them in the publisher process."""

RECORD_TYPES: dict[str, type[Record]] = {}
"""The record type of each event type."""
for _type in get_args(AnyRecord):
    _type.event_type = _type.__struct_config__.tag
    RECORD_TYPES[_type.event_type] = _type
