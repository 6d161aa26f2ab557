"""What one scheduler's events add up to, accumulated one event at a time.

Everything here grows with the number of tasks, workers, graphs and
failures, never with the number of events: per task key a small list, per
prefix the compute durations, a bounded sample of the task stream, and
counts over time in a bounded number of buckets.
"""

from __future__ import annotations

import random
import re
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..events import (
    CLIENT_ADDED,
    CLIENT_REMOVED,
    DROPPED,
    GRAPH_TASKS,
    GRAPH_UPDATED,
    OVERSIZED,
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
from .sequence import SequenceTracker
from .timeline import Timeline

# Indices into the small list kept per task key.
PREFIX, STATE, OUTCOME, EVER_MEMORY, NBYTES = range(5)
NO_OUTCOME, MEMORY, ERRED = 0, 1, 2
PROCESSING = "processing"
# Series of the progress timeline besides the per-prefix ones.
PROCESSING_SERIES = ("processing",)

# Memory samples kept per worker spell for the Workers tab.
MAX_MEMORY_SAMPLES = 2000

_TIMESTAMP_SUFFIX = re.compile(r"-\d+(\.\d+)?$")


def stimulus_name(stimulus_id: str | None) -> str | None:
    """``retire-workers-1796135295.47`` -> ``retire-workers``."""
    return None if stimulus_id is None else _TIMESTAMP_SUFFIX.sub("", stimulus_id)


@dataclass(slots=True)
class WorkerSpell:
    """One worker from joining to leaving (a worker that rejoins gets another)."""

    address: str
    name: str | None = None
    nthreads: int | None = None
    memory_limit: int | None = None
    added: float | None = None
    removed: float | None = None
    reason: str | None = None
    tasks: int = 0
    compute_seconds: float = 0.0
    expected: bool | None = None
    processing: list[str] = field(default_factory=list)
    """Keys of the tasks it was running when it left (as many as the event lists)."""
    processing_total: int = 0
    lost_total: int = 0
    statuses: list[tuple[float, str | None, str]] = field(default_factory=list)
    """``(time, previous, status)`` per status change."""
    memory: list[tuple[float, int, int, int]] = field(default_factory=list)
    """``(time, process, managed, spilled)`` samples, thinned to MAX_MEMORY_SAMPLES."""
    memory_stride: int = 1
    memory_seen: int = 0
    peak_memory: int | None = None

    def add_memory(self, when: float, process: int, managed: int, spilled: int) -> None:
        if self.peak_memory is None or process > self.peak_memory:
            self.peak_memory = process
        self.memory_seen += 1
        if self.memory_seen % self.memory_stride:
            return
        self.memory.append((when, process, managed, spilled))
        if len(self.memory) >= MAX_MEMORY_SAMPLES:
            # Keep every other sample and take half as many from now on: the
            # series stays bounded however long the run.
            del self.memory[1::2]
            self.memory_stride *= 2


@dataclass(slots=True)
class Failure:
    """The last failure of one task key."""

    key: str
    prefix: str
    exception: str | None
    traceback: str | None
    cause: str | None
    worker: str | None
    time: float


@dataclass(slots=True)
class Graph:
    """One ``dask.graph.updated``."""

    time: float
    client: str
    tasks: int
    keys: int
    prefixes: dict[str, int]


@dataclass(slots=True)
class SpanNode:
    """One Dask span, and how many distinct tasks the graphs listed in it."""

    span_id: str
    name: list[str]
    parent_id: str | None
    tasks: int = 0


@dataclass(slots=True)
class StreamTask:
    """A finished task as the task stream draws it."""

    worker: str
    key: str
    prefix: str
    erred: bool
    startstops: list[tuple[str, float, float]]


@dataclass
class SourceAggregate:
    """Everything one source (scheduler) contributes to a report."""

    source: str
    stream_limit: int = 50_000
    events: int = 0
    start: float | None = None
    end: float | None = None
    schedulers: dict[str, dict[str, Any]] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)
    tasks: dict[str, list[Any]] = field(default_factory=dict)
    compute: dict[str, array] = field(default_factory=dict)
    workers: list[WorkerSpell] = field(default_factory=list)
    clients: set[str] = field(default_factory=set)
    graphs: list[Graph] = field(default_factory=list)
    spans: dict[str, SpanNode] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    action_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    dropped: int = 0
    dropped_announcements: list[dict[str, Any]] = field(default_factory=list)
    oversized: Counter[str] = field(default_factory=Counter)
    runs: dict[str, SequenceTracker] = field(default_factory=dict)
    timeline: Timeline = field(default_factory=Timeline)
    stream: list[StreamTask] = field(default_factory=list)
    stream_erred: list[StreamTask] = field(default_factory=list)
    stream_seen: int = 0

    def __post_init__(self) -> None:
        self._current_worker: dict[str, WorkerSpell] = {}
        self._task_spans: dict[str, str] = {}
        self._texts: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._series: dict[str, tuple[tuple[str, str], ...]] = {}
        self._random = random.Random(17)
        self._handlers: dict[str, Callable[[Any, float], None]] = {
            TASK_TRANSITION: self._transition,
            GRAPH_UPDATED: self._graph,
            WORKER_ADDED: self._worker_added,
            WORKER_REMOVED: self._worker_removed,
            CLIENT_ADDED: self._client,
            CLIENT_REMOVED: self._client,
            SCHEDULER_STARTED: self._scheduler_started,
            SCHEDULER_CLOSING: self._scheduler_closing,
            SCHEDULER_RESTARTED: self._restarted,
            DROPPED: self._dropped,
            OVERSIZED: self._oversized,
            SPAN: self._span,
            GRAPH_TASKS: self._graph_tasks,
            WORKER_STATUS: self._worker_status,
            WORKER_METRICS: self._worker_metrics,
        }

    def is_new(self, run: str, sequence: int) -> bool:
        """Whether this event (of plugin run ``run``) was not seen before."""
        tracker = self.runs.get(run)
        if tracker is None:
            tracker = self.runs[run] = SequenceTracker()
        return tracker.is_new(sequence)

    def add(self, type_: str, data: Any, when: float, run: str) -> None:
        """Account for one new event of this source.

        Raises KeyError, TypeError or ValueError, having changed nothing, when
        ``data`` lacks what its type requires.
        """
        handler = self._handlers.get(type_)
        if handler is not None and isinstance(data, dict):
            handler(data, when)
            if type_ == DROPPED:
                self._dropped_in(run, data)
        self.events += 1
        if self.start is None or when < self.start:
            self.start = when
        if self.end is None or when > self.end:
            self.end = when

    # ---------------------------------------------------------------- tasks

    def _name(self, text: str) -> str:
        # One string object per distinct prefix or state, not one per event.
        return self._names.setdefault(text, text)

    def _text(self, text: str | None) -> str | None:
        return None if text is None else self._texts.setdefault(text, text)

    def _prefix_series(self, prefix: str) -> tuple[tuple[str, str], ...]:
        series = self._series.get(prefix)
        if series is None:
            series = self._series[prefix] = (("added", prefix), ("done", prefix))
        return series

    def _transition(self, data: dict[str, Any], when: float) -> None:
        key, start, finish = data["key"], data["start"], data["finish"]
        if not (isinstance(key, str) and isinstance(start, str) and isinstance(finish, str)):
            raise TypeError("key, start and finish must be strings")
        finish = self._name(finish)
        task = self.tasks.get(key)
        if task is None:
            prefix = self._name(data.get("prefix") or "Other")
            task = self.tasks[key] = [prefix, finish, NO_OUTCOME, False, 0]
            self.timeline.add(when, self._prefix_series(prefix)[0])
        else:
            task[STATE] = finish
        if start == PROCESSING:
            self.timeline.add(when, PROCESSING_SERIES, -1)
        if finish == PROCESSING:
            self.timeline.add(when, PROCESSING_SERIES, 1)
        elif finish == "memory":
            self._outcome(task, MEMORY, when)
            task[EVER_MEMORY] = True
            nbytes = data.get("nbytes")
            if isinstance(nbytes, int):
                task[NBYTES] = nbytes
            self._finished(data, key, task[PREFIX], False)
        elif finish == "erred":
            self._outcome(task, ERRED, when)
            self._failed(data, key, task[PREFIX], when)
            self._finished(data, key, task[PREFIX], True)

    def _outcome(self, task: list[Any], outcome: int, when: float) -> None:
        if task[OUTCOME] == NO_OUTCOME:
            self.timeline.add(when, self._prefix_series(task[PREFIX])[1])
        task[OUTCOME] = outcome

    def _failed(self, data: dict[str, Any], key: str, prefix: str, when: float) -> None:
        cause = data.get("cause")
        self.failures[key] = Failure(
            key=key,
            prefix=prefix,
            exception=self._text(data.get("exception")),
            traceback=self._text(data.get("traceback")),
            # distributed names a failing task as its own cause.
            cause=None if cause == key else cause,
            worker=data.get("worker"),
            time=when,
        )

    def _finished(self, data: dict[str, Any], key: str, prefix: str, erred: bool) -> None:
        worker = data.get("worker")
        startstops = data.get("startstops")
        if not isinstance(worker, str) or not isinstance(startstops, list) or not startstops:
            return
        spell = self._worker(worker)
        spell.tasks += 1
        actions = []
        for entry in startstops:
            if not isinstance(entry, dict):
                continue
            begin, stop = entry.get("start"), entry.get("stop")
            if not isinstance(begin, (int, float)) or not isinstance(stop, (int, float)):
                continue
            action = self._name(str(entry.get("action")))
            actions.append((action, begin, stop))
            self.action_seconds[action] += stop - begin
            if action == "compute":
                durations = self.compute.get(prefix)
                if durations is None:
                    durations = self.compute[prefix] = array("d")
                durations.append(stop - begin)
                spell.compute_seconds += stop - begin
        self._sample(StreamTask(worker, key, prefix, erred, actions))

    def _sample(self, item: StreamTask) -> None:
        if item.erred:
            # Failures are what people look for: keep them apart from the
            # random sample, up to a tenth of the limit.
            if len(self.stream_erred) < max(1, self.stream_limit // 10):
                self.stream_erred.append(item)
            return
        self.stream_seen += 1
        if len(self.stream) < self.stream_limit:
            self.stream.append(item)
        else:
            slot = self._random.randrange(self.stream_seen)
            if slot < self.stream_limit:
                self.stream[slot] = item

    # ------------------------------------------------------- everything else

    def _worker(self, address: str) -> WorkerSpell:
        spell = self._current_worker.get(address)
        if spell is None:
            # A worker that joined before the first event read.
            spell = self._current_worker[address] = WorkerSpell(address)
            self.workers.append(spell)
        return spell

    def _worker_added(self, data: dict[str, Any], when: float) -> None:
        address = data["address"]
        spell = self._current_worker.get(address)
        if spell is None or spell.removed is not None or spell.added is not None:
            spell = self._current_worker[address] = WorkerSpell(address)
            self.workers.append(spell)
        spell.added = when
        spell.name = data.get("name")
        spell.nthreads = data.get("nthreads")
        spell.memory_limit = data.get("memory_limit")

    def _worker_removed(self, data: dict[str, Any], when: float) -> None:
        spell = self._worker(data["address"])
        spell.removed = when
        spell.reason = stimulus_name(data.get("stimulus_id"))
        if spell.name is None:
            spell.name = data.get("name")
            spell.nthreads = data.get("nthreads")
        spell.expected = data.get("expected")
        processing = data.get("processing")
        if isinstance(processing, list):
            spell.processing = [str(key) for key in processing]
        spell.processing_total = data.get("processing_total") or len(spell.processing)
        spell.lost_total = data.get("lost_total") or 0

    def _worker_status(self, data: dict[str, Any], when: float) -> None:
        status = data["status"]
        if not isinstance(status, str):
            raise TypeError("a status name")
        self._worker(data["address"]).statuses.append((when, data.get("previous"), status))

    def _worker_metrics(self, data: dict[str, Any], when: float) -> None:
        process = data.get("memory_process")
        if not isinstance(process, int):
            return
        self._worker(data["address"]).add_memory(
            when, process, data.get("memory_managed") or 0, data.get("memory_spilled") or 0
        )

    def _span(self, data: dict[str, Any], when: float) -> None:
        span_id, name = data["span_id"], data["name"]
        if not isinstance(span_id, str) or not isinstance(name, list):
            raise TypeError("a span id and a name")
        if span_id not in self.spans:
            self.spans[span_id] = SpanNode(span_id, [str(n) for n in name], data.get("parent_id"))

    def _graph_tasks(self, data: dict[str, Any], when: float) -> None:
        tasks = data["tasks"]
        if not isinstance(tasks, list):
            raise TypeError("a list of tasks")
        for task in tasks:
            if not isinstance(task, dict):
                continue
            key, span_id = task.get("key"), task.get("span_id")
            node = self.spans.get(span_id) if isinstance(span_id, str) else None
            # A task each submission lists again counts once.
            if node is not None and isinstance(key, str) and key not in self._task_spans:
                self._task_spans[key] = node.span_id
                node.tasks += 1

    def _client(self, data: dict[str, Any], when: float) -> None:
        client = data["client"]
        if not isinstance(client, str):
            raise TypeError("a client id")
        self.clients.add(client)

    def _graph(self, data: dict[str, Any], when: float) -> None:
        client = data.get("client", "")
        if not isinstance(client, str):
            raise TypeError("a client id")
        graph = Graph(
            time=when,
            client=client,
            tasks=data.get("tasks", 0),
            keys=data.get("keys_total", 0),
            prefixes=dict(data.get("prefixes") or {}),
        )
        self.clients.add(client)
        self.graphs.append(graph)

    def _scheduler(self, data: dict[str, Any], when: float, moment: str) -> None:
        known = self.schedulers.setdefault(
            str(data.get("scheduler_id")), {"started": None, "closing": None}
        )
        known["address"] = data.get("address")
        known["versions"] = data.get("versions") or {}
        known[moment] = when

    def _scheduler_started(self, data: dict[str, Any], when: float) -> None:
        self._scheduler(data, when, "started")

    def _scheduler_closing(self, data: dict[str, Any], when: float) -> None:
        self._scheduler(data, when, "closing")

    def _restarted(self, data: dict[str, Any], when: float) -> None:
        self.restarts.append(when)

    def _dropped_in(self, run: str, data: dict[str, Any]) -> None:
        first, last = data.get("first_sequence"), data.get("last_sequence")
        if isinstance(first, int) and isinstance(last, int):
            self.runs[run].announce_dropped(first, last)

    def _dropped(self, data: dict[str, Any], when: float) -> None:
        count = data.get("count", 0)
        if not isinstance(count, int):
            raise TypeError("an integer count")
        self.dropped += count
        self.dropped_announcements.append({**data, "time": when})

    def _oversized(self, data: dict[str, Any], when: float) -> None:
        self.oversized[str(data.get("type"))] += 1
