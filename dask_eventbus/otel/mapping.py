"""Dask events as OpenTelemetry traces and log records (OTLP protobuf messages).

One :class:`TraceMapper` per scheduler run folds that run's events through
the shared state model and hands out, as they complete:

* per graph submission one trace: a root span from the submission until the
  last of its tasks finished (or the scheduler closed), the Dask spans its
  tasks ran in as intermediate spans, nested as in Dask, and one span per
  task run, from the worker's start-stops, linked to its dependencies' spans;
* ``dask.log`` events and worker status changes as log records.

Span ids are derived from what they stand for (the run, the key, the
attempt), so a task's span can link to a dependency's before or after that
one is sent, and a replay gives the same ids. Past ``max_spans_per_trace``
a trace keeps every erred task, the slowest tasks per prefix, and one
summary span per task group for the rest.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, SeverityNumber
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ..consume.state import NO_OUTCOME, PROCESSING, SourceState, Task, WorkerSpell
from ..events import (
    DROPPED,
    GRAPH_TASKS,
    GRAPH_UPDATED,
    LOG,
    OVERSIZED,
    SCHEDULER_CLOSING,
    WORKER_STATUS,
    Event,
)

INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL
ERROR = Status.StatusCode.STATUS_CODE_ERROR
SEVERITY_INFO = SeverityNumber.SEVERITY_NUMBER_INFO
SEVERITY_WARN = SeverityNumber.SEVERITY_NUMBER_WARN
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*)\((.*)\)$", re.DOTALL)


@dataclass(frozen=True)
class TraceSettings:
    """How much of a computation a trace shows."""

    max_spans_per_trace: int = 10_000
    max_links_per_span: int = 128
    slowest_per_prefix: int = 5


def span_id(*parts: str) -> bytes:
    """A span id (8 bytes) that the same parts always give."""
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()


def trace_id(*parts: str) -> bytes:
    """A trace id (16 bytes) that the same parts always give."""
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).digest()


def nanos(seconds: float) -> int:
    return int(seconds * 1e9)


def add_attributes(target: Any, pairs: dict[str, Any]) -> None:
    """Add OTLP attributes to a message's repeated ``attributes`` field, from
    Python values (None left out, lists as arrays of strings).

    Filled in place: a third of the time of building KeyValue messages.
    """
    for key, value in pairs.items():
        if value is None:
            continue
        item = target.add()
        item.key = key
        if isinstance(value, bool):
            item.value.bool_value = value
        elif isinstance(value, int):
            item.value.int_value = value
        elif isinstance(value, float):
            item.value.double_value = value
        elif isinstance(value, (list, tuple)):
            item.value.array_value.values.extend(AnyValue(string_value=str(v)) for v in value)
        else:
            item.value.string_value = str(value)


@dataclass(slots=True)
class TaskRun:
    """What a task span is made from; kept for the slowest until its trace ends."""

    key: str
    prefix: str
    group: str | None
    worker: str | None
    attempt: int
    start: float
    end: float
    waited: float | None
    nbytes: int | None
    compute: float
    parent: bytes
    actions: list[tuple[str, float, float, str | None]]
    links: list[tuple[bytes, bytes]]
    dropped_links: int
    erred: bool
    exception: str | None
    traceback: str | None
    cause: str | None


@dataclass(slots=True)
class GroupSummary:
    """The task runs of one group that a trace shows only as a count."""

    prefix: str
    count: int
    first_start: float
    last_end: float
    compute: float


@dataclass(slots=True)
class Trace:
    """One graph submission on its way to its root span."""

    trace_id: bytes
    root_id: bytes
    parent_id: bytes
    start: float
    client: str | None
    stimulus_id: str | None
    tasks_total: int
    prefixes: dict[str, int]
    end: float = 0.0
    pending: set[str] = field(default_factory=set)
    runs: int = 0
    erred: int = 0
    kept: int = 0
    groups: dict[str, GroupSummary] = field(default_factory=dict)
    slowest: dict[str, list[tuple[float, int, TaskRun]]] = field(default_factory=dict)
    dask_spans: dict[str, list[float]] = field(default_factory=dict)
    known_groups: set[str] = field(default_factory=set)
    known_prefixes: set[str] = field(default_factory=set)
    known_dask_spans: set[str] = field(default_factory=set)
    ended: bool = False


class TraceMapper(SourceState):
    """One scheduler run's events as OTLP spans and log records.

    Feed events with :meth:`take`; collect what completed with
    :meth:`drain`; :meth:`finish` ends every open trace (the scheduler closed,
    or a replay reached the end of its input).
    """

    def __init__(self, source: str, run: str, settings: TraceSettings | None = None) -> None:
        super().__init__(source)
        self.run = run
        self.settings = settings or TraceSettings()
        self.logs: list[LogRecord] = []
        self.resource: dict[str, Any] = {"service.instance.id": source}
        self.task_runs = 0
        self._ready: list[Span] = []
        self._traces: dict[str, Trace] = {}
        self._latest: Trace | None = None
        self._owner: dict[str, Trace] = {}
        self._task_trace: dict[str, Trace] = {}
        self._dependencies: dict[str, list[str]] = {}
        self._attempts: dict[str, int] = {}
        self._assigned: dict[str, float] = {}
        self._actions: list[tuple[str, float, float, str | None]] = []
        self._serial = itertools.count()

    def take(self, event: Event) -> None:
        """Fold one new event of this run."""
        data = event.data if isinstance(event.data, dict) else {}
        when = event.time.timestamp()
        type_ = event.type
        if type_ == GRAPH_UPDATED:
            self._submission(data, when)
        elif type_ == GRAPH_TASKS:
            self._structure(data)
        self.add(type_, event.data, when)
        if type_ == LOG:
            self._log_record(data, when)
        elif type_ == WORKER_STATUS:
            self._status_record(data, when)
        elif type_ in (DROPPED, OVERSIZED):
            self._loss_record(type_, data, when)
        elif type_ == SCHEDULER_CLOSING:
            self.finish(when)

    def drain(self) -> tuple[list[Span], list[LogRecord]]:
        """The spans and log records completed since the last call."""
        spans, logs = self._ready, self.logs
        self._ready, self.logs = [], []
        return spans, logs

    def finish(self, when: float | None = None) -> None:
        """End every open trace at ``when`` (default: the last event's time)."""
        moment = when if when is not None else (self.end or 0.0)
        for trace in list(self._traces.values()):
            if not trace.ended:
                self._end_trace(trace, moment)

    # ---- submissions

    def _submission(self, data: dict[str, Any], when: float) -> None:
        stimulus = str(data.get("stimulus_id") or f"graph-{when}")
        if stimulus in self._traces:
            return
        trace = Trace(
            trace_id=trace_id(self.source, self.run, stimulus),
            root_id=span_id(self.source, self.run, stimulus, "root"),
            parent_id=b"",
            start=when,
            client=data.get("client"),
            stimulus_id=stimulus,
            tasks_total=int(data.get("tasks") or 0),
            prefixes=dict(data.get("prefixes") or {}),
        )
        self._traces[stimulus] = self._latest = trace

    def _structure(self, data: dict[str, Any]) -> None:
        trace = self._traces.get(str(data.get("stimulus_id")))
        tasks = data.get("tasks")
        if trace is None or not isinstance(tasks, list):
            return
        for entry in tasks:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                continue
            key = entry["key"]
            if key not in self.tasks:
                # A key listed again by a later submission stays with the first.
                self._owner.setdefault(key, trace)
            dependencies = entry.get("dependencies")
            if isinstance(dependencies, list):
                self._dependencies[key] = [str(d) for d in dependencies]
            annotations = entry.get("annotations")
            if isinstance(annotations, dict) and not trace.parent_id and not trace.runs:
                self._join_caller(trace, annotations.get("traceparent"))

    def _join_caller(self, trace: Trace, traceparent: Any) -> None:
        """``with dask.annotate(traceparent=...)``: the caller's span becomes the root's parent."""
        found = _TRACEPARENT.match(traceparent) if isinstance(traceparent, str) else None
        if found is None or found[1] == "0" * 32 or found[2] == "0" * 16:
            return
        trace.trace_id = bytes.fromhex(found[1])
        trace.parent_id = bytes.fromhex(found[2])

    def _trace_of(self, key: str, when: float) -> Trace:
        trace = self._owner.pop(key, None)
        if trace is None:
            trace = self._traces.get(str(self.event_data.get("stimulus_id")))
        if trace is None or trace.ended:
            trace = self._latest if self._latest is not None and not self._latest.ended else None
        if trace is None:
            # Tasks of a submission not seen (a replay that starts mid-run).
            trace = Trace(
                trace_id=trace_id(self.source, self.run, f"unknown-{when}"),
                root_id=span_id(self.source, self.run, f"unknown-{when}", "root"),
                parent_id=b"",
                start=when,
                client=None,
                stimulus_id=None,
                tasks_total=0,
                prefixes={},
            )
            self._traces[f"unknown-{when}"] = self._latest = trace
        return trace

    # ---- tasks (the shared state's hooks)

    def on_task_added(self, task: Task, when: float) -> None:
        trace = self._trace_of(task.key, when)
        trace.pending.add(task.key)
        self._task_trace[task.key] = trace
        # What the budget must leave room for, known before the first task
        # finishes (a submission's tasks all arrive together).
        trace.known_groups.add(task.group or task.prefix)
        trace.known_prefixes.add(task.prefix)
        dask_span = task.span_id
        while dask_span is not None and dask_span not in trace.known_dask_spans:
            trace.known_dask_spans.add(dask_span)
            node = self.spans.get(dask_span)
            dask_span = node.parent_id if node is not None else None

    def on_transition(self, task: Task, start: str, when: float) -> None:
        key = task.key
        if task.state == PROCESSING:
            self._assigned[key] = when
        elif task.state == "forgotten":
            trace = self._task_trace.pop(key, None)
            if trace is not None and task.outcome == NO_OUTCOME:
                self._settled(trace, key, when)  # released before it ran
            for table in (self._dependencies, self._attempts, self._assigned, self._owner):
                table.pop(key, None)
            self.forget(key)

    def on_action(
        self,
        task: Task,
        worker: WorkerSpell,
        action: str,
        start: float,
        stop: float,
        source: str | None,
    ) -> None:
        self._actions.append((action, start, stop, source))

    def on_task_finished(
        self, task: Task, data: dict[str, Any], when: float, *, erred: bool, first: bool
    ) -> None:
        trace = self._task_trace.get(task.key)
        if trace is None:
            self._actions = []
            return
        run = self._task_run(task, trace, erred)
        if run is not None:
            trace.runs += 1
            self.task_runs += 1
            trace.end = max(trace.end, run.end)
            self._place(trace, run)
        if erred:
            trace.erred += 1
        self._settled(trace, task.key, when)

    def _task_run(self, task: Task, trace: Trace, erred: bool) -> TaskRun | None:
        actions, self._actions = self._actions, []
        if not actions:
            return None  # it never ran (it erred because a dependency did)
        key = task.key
        attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        start = min(a[1] for a in actions)
        end = max(a[2] for a in actions)
        assigned = self._assigned.pop(key, None)
        dependencies = self._dependencies.pop(key, ())
        cap = self.settings.max_links_per_span
        links = [
            (self._task_trace[d].trace_id if d in self._task_trace else trace.trace_id,
             span_id(self.source, self.run, d, str(self._attempts.get(d, 1))))
            for d in dependencies[:cap]
        ]  # fmt: skip
        if task.span_id is not None:
            trace.dask_spans.setdefault(task.span_id, [start, end])
            bounds = trace.dask_spans[task.span_id]
            bounds[0], bounds[1] = min(bounds[0], start), max(bounds[1], end)
            parent = span_id(trace.trace_id.hex(), task.span_id)
        else:
            parent = trace.root_id
        failure = self.failures.get(key) if erred else None
        return TaskRun(
            key=key,
            prefix=task.prefix,
            group=task.group,
            worker=task.worker,
            attempt=attempt,
            start=start,
            end=end,
            waited=None if assigned is None else max(0.0, start - assigned),
            nbytes=task.nbytes if task.ever_memory and not erred else None,
            compute=task.compute_seconds or 0.0,
            parent=parent,
            actions=actions,
            links=links,
            dropped_links=max(0, len(dependencies) - cap),
            erred=erred,
            exception=failure.exception if failure else None,
            traceback=failure.traceback if failure else None,
            cause=failure.cause if failure else None,
        )

    def _place(self, trace: Trace, run: TaskRun) -> None:
        """Send the run's span now, keep it among the slowest, or count it in its group."""
        reserved = (
            1
            + len(trace.known_dask_spans | trace.dask_spans.keys())
            + len(trace.known_groups)
            + self.settings.slowest_per_prefix * len(trace.known_prefixes)
        )
        if run.erred or trace.kept + reserved < self.settings.max_spans_per_trace:
            trace.kept += 1
            self._ready.append(self._task_span(trace, run))
            return
        heap = trace.slowest.setdefault(run.prefix, [])
        item = (run.end - run.start, next(self._serial), run)
        if len(heap) < self.settings.slowest_per_prefix:
            heapq.heappush(heap, item)
            return
        faster = heapq.heappushpop(heap, item)[2]
        summary = trace.groups.get(faster.group or faster.prefix)
        if summary is None:
            trace.groups[faster.group or faster.prefix] = GroupSummary(
                faster.prefix, 1, faster.start, faster.end, faster.compute
            )
        else:
            summary.count += 1
            summary.first_start = min(summary.first_start, faster.start)
            summary.last_end = max(summary.last_end, faster.end)
            summary.compute += faster.compute

    def _settled(self, trace: Trace, key: str, when: float) -> None:
        trace.pending.discard(key)
        if not trace.pending and not trace.ended:
            self._end_trace(trace, max(trace.end, when))

    # ---- spans

    def _task_span(self, trace: Trace, run: TaskRun) -> Span:
        span = Span(
            trace_id=trace.trace_id,
            span_id=span_id(self.source, self.run, run.key, str(run.attempt)),
            parent_span_id=run.parent,
            name=run.prefix,
            kind=INTERNAL,
            start_time_unix_nano=nanos(run.start),
            end_time_unix_nano=nanos(run.end),
            dropped_links_count=run.dropped_links,
        )
        add_attributes(
            span.attributes,
            {
                "dask.key": run.key,
                "dask.prefix": run.prefix,
                "dask.group": run.group,
                "dask.worker": run.worker,
                "dask.attempt": run.attempt,
                "dask.nbytes": run.nbytes,
                "dask.compute_seconds": run.compute,
                "dask.waited_seconds": run.waited,
                "dask.cause": run.cause,
            },
        )
        for action, begin, stop, source in run.actions:
            event = span.events.add()
            event.time_unix_nano = nanos(begin)
            event.name = action
            add_attributes(
                event.attributes,
                {"dask.duration_seconds": stop - begin, "dask.source_worker": source},
            )
        for linked_trace, linked_span in run.links:
            link = span.links.add()
            link.trace_id = linked_trace
            link.span_id = linked_span
        if run.erred:
            span.status.code = ERROR
            span.status.message = (run.exception or "")[:1000]
            _add_exception_event(span, run.end, run.exception, run.traceback)
        return span

    def _end_trace(self, trace: Trace, when: float) -> None:
        trace.ended = True
        for heap in trace.slowest.values():
            for _, _, run in sorted(heap, key=lambda item: item[0]):
                trace.kept += 1
                self._ready.append(self._task_span(trace, run))
        for group, summary in trace.groups.items():
            self._ready.append(
                _span(
                    trace.trace_id,
                    span_id(trace.trace_id.hex(), "group", group),
                    trace.root_id,
                    f"{summary.prefix} ({summary.count} more tasks)",
                    summary.first_start,
                    summary.last_end,
                    {
                        "dask.summary": True,
                        "dask.group": group,
                        "dask.prefix": summary.prefix,
                        "dask.tasks": summary.count,
                        "dask.compute_seconds": summary.compute,
                    },
                )
            )
        self._dask_span_tree(trace)
        root = _span(
            trace.trace_id,
            trace.root_id,
            trace.parent_id,
            _root_name(trace.prefixes),
            trace.start,
            max(trace.start, trace.end, when),
            {
                "dask.client": trace.client,
                "dask.stimulus_id": trace.stimulus_id,
                "dask.tasks": trace.tasks_total,
                "dask.prefixes": sorted(trace.prefixes),
                "dask.task_runs": trace.runs,
                "dask.task_spans_kept": trace.kept,
                "dask.tasks_erred": trace.erred,
                "dask.tasks_unfinished": len(trace.pending),
            },
        )
        if trace.erred:
            root.status.code = ERROR
            root.status.message = f"{trace.erred} tasks erred"
        self._ready.append(root)
        # An ended trace is sent whole: nothing of it needs keeping.
        self._traces = {key: kept for key, kept in self._traces.items() if kept is not trace}
        trace.slowest.clear()
        trace.groups.clear()
        trace.known_groups.clear()
        trace.known_prefixes.clear()
        trace.known_dask_spans.clear()

    def _dask_span_tree(self, trace: Trace) -> None:
        """The Dask spans the trace's tasks ran in, and their ancestors, nested as in Dask."""
        bounds = dict(trace.dask_spans)
        for dask_span in list(bounds):
            start, end = bounds[dask_span]
            node = self.spans.get(dask_span)
            while node is not None and node.parent_id is not None:
                parent = bounds.setdefault(node.parent_id, [start, end])
                parent[0], parent[1] = min(parent[0], start), max(parent[1], end)
                node = self.spans.get(node.parent_id)
        for dask_span, (start, end) in bounds.items():
            node = self.spans.get(dask_span)
            parent_id = trace.root_id
            if node is not None and node.parent_id in bounds:
                parent_id = span_id(trace.trace_id.hex(), node.parent_id)
            self._ready.append(
                _span(
                    trace.trace_id,
                    span_id(trace.trace_id.hex(), dask_span),
                    parent_id,
                    "/".join(node.name) if node is not None else dask_span,
                    start,
                    end,
                    {"dask.span_id": dask_span},
                )
            )

    # ---- log records

    def _log_record(self, data: dict[str, Any], when: float) -> None:
        message = data.get("message")
        record = _log_record(
            when,
            "dask.log",
            json.dumps(message, default=str),
            {"dask.topic": data.get("topic")},
        )
        key = message.get("key") if isinstance(message, dict) else None
        trace = self._task_trace.get(key) if isinstance(key, str) else None
        if trace is not None and isinstance(key, str):
            record.trace_id = trace.trace_id
            record.span_id = span_id(self.source, self.run, key, str(self._attempts.get(key, 1)))
        self.logs.append(record)

    def _status_record(self, data: dict[str, Any], when: float) -> None:
        status = str(data.get("status"))
        self.logs.append(
            _log_record(
                when,
                "dask.worker.status",
                f"worker {data.get('address')}: {data.get('previous')} -> {status}",
                {
                    "dask.worker": data.get("address"),
                    "dask.status": status,
                    "dask.previous_status": data.get("previous"),
                },
                warn=status == "paused",
            )
        )

    def _loss_record(self, type_: str, data: dict[str, Any], when: float) -> None:
        """Events the bus lost or replaced: a trace may lack what they said."""
        if type_ == DROPPED:
            body = (
                f"dask-eventbus lost {data.get('count')} events of this scheduler "
                f"(sequence {data.get('first_sequence')}-{data.get('last_sequence')}, "
                f"{data.get('policy')}): traces may miss their spans"
            )
        else:
            body = (
                f"dask-eventbus replaced a {data.get('type')} event of {data.get('size')} "
                f"bytes, over its limit of {data.get('limit')}"
            )
        self.logs.append(
            _log_record(
                when, type_, body, {k: v for k, v in data.items() if k != "time"}, warn=True
            )
        )

    # ---- the resource

    def on_scheduler(self, scheduler_id: str, info: dict[str, Any]) -> None:
        versions = info.get("versions") or {}
        self.resource.update(
            {
                "dask.scheduler.address": info.get("address"),
                "dask.scheduler.id": scheduler_id,
                "dask.version": versions.get("dask"),
                "distributed.version": versions.get("distributed"),
                "dask_eventbus.version": versions.get("dask_eventbus"),
            }
        )


def _span(
    trace: bytes,
    span: bytes,
    parent: bytes,
    name: str,
    start: float,
    end: float,
    pairs: dict[str, Any],
) -> Span:
    made = Span(
        trace_id=trace,
        span_id=span,
        parent_span_id=parent,
        name=name,
        kind=INTERNAL,
        start_time_unix_nano=nanos(start),
        end_time_unix_nano=nanos(end),
    )
    add_attributes(made.attributes, pairs)
    return made


def _log_record(
    when: float, event_name: str, body: str, pairs: dict[str, Any], *, warn: bool = False
) -> LogRecord:
    record = LogRecord(
        time_unix_nano=nanos(when),
        observed_time_unix_nano=nanos(when),
        severity_number=SEVERITY_WARN if warn else SEVERITY_INFO,
        severity_text="WARN" if warn else "INFO",
        body=AnyValue(string_value=body),
    )
    # The event.name attribute rather than LogRecord.event_name: the field is
    # missing from the opentelemetry-proto releases this package supports.
    add_attributes(record.attributes, {"event.name": event_name, **pairs})
    return record


def _root_name(prefixes: dict[str, int]) -> str:
    """``dask.graph`` and the submission's three largest prefixes."""
    if not prefixes:
        return "dask.graph (submission not seen)"
    largest = sorted(prefixes, key=lambda prefix: -prefixes[prefix])[:3]
    return "dask.graph " + ", ".join(largest)


def _add_exception_event(
    span: Span, when: float, exception: str | None, traceback: str | None
) -> None:
    """The ``exception`` event of the OTel semantic conventions."""
    text = exception or ""
    found = _EXCEPTION.match(text)
    type_, message = (found[1], found[2].strip("'\"")) if found else ("Exception", text)
    event = span.events.add()
    event.time_unix_nano = nanos(when)
    event.name = "exception"
    add_attributes(
        event.attributes,
        {
            "exception.type": type_,
            "exception.message": message,
            "exception.stacktrace": traceback,
        },
    )
