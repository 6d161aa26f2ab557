"""What a scheduler's events add up to: its tasks, workers, graphs and spans.

:class:`SourceState` folds new events (as :class:`~.reader.EventReader`
gives them) into the state every consumer starts from: the report
summarizes it, the archive writes what changed. It grows with the number of
tasks, workers, graphs and failures, never with the number of events; a
consumer that has stored a finished task can :meth:`~SourceState.forget` it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..events import (
    CLIENT_ADDED,
    CLIENT_REMOVED,
    DROPPED,
    GRAPH_TASKS,
    GRAPH_UPDATED,
    LOG,
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

NO_OUTCOME, MEMORY, ERRED = 0, 1, 2
PROCESSING = "processing"
ACTIVE_STATES = frozenset({"waiting", "processing", "queued", "no-worker"})
"""States of a task that has not run to an end yet."""

# Memory samples kept per worker spell.
MAX_MEMORY_SAMPLES = 2000
# Exception and traceback texts shared between the failures that carry them
# (a failure's dependents repeat its text); forgotten past this many.
MAX_SHARED_TEXTS = 10_000

_TIMESTAMP_SUFFIX = re.compile(r"-\d+(\.\d+)?$")


def stimulus_name(stimulus_id: str | None) -> str | None:
    """``retire-workers-1796135295.47`` -> ``retire-workers``."""
    return None if stimulus_id is None else _TIMESTAMP_SUFFIX.sub("", stimulus_id)


@dataclass(slots=True)
class Task:
    """One task key: where it stands and what its last run did."""

    key: str
    prefix: str
    group: str | None
    state: str
    submitted: float
    """When its first event was seen."""
    outcome: int = NO_OUTCOME
    ever_memory: bool = False
    nbytes: int = 0
    worker: str | None = None
    started: float | None = None
    """When its last run started: the first of its start-stops, else when it went processing."""
    finished: float | None = None
    """When it last reached memory or erred (a rerun keeps it until it ends)."""
    compute_seconds: float | None = None
    span_id: str | None = None


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
    stimulus_id: str | None = None


@dataclass(slots=True)
class SpanNode:
    """One Dask span, and how many distinct tasks the graphs listed in it."""

    span_id: str
    name: list[str]
    parent_id: str | None
    tasks: int = 0


class SourceState:
    """Everything one source's (scheduler's) new events say, folded as they come.

    :meth:`add` takes each event once (the reader drops redeliveries). A
    consumer that needs more than the state keeps overrides the ``on_*``
    hooks, which run after the state took the event in.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.events = 0
        self.start: float | None = None
        self.end: float | None = None
        self.schedulers: dict[str, dict[str, Any]] = {}
        self.restarts: list[float] = []
        self.tasks: dict[str, Task] = {}
        self.workers: list[WorkerSpell] = []
        self.clients: set[str] = set()
        self.graphs: list[Graph] = []
        self.spans: dict[str, SpanNode] = {}
        self.failures: dict[str, Failure] = {}
        self.dropped = 0
        self.dropped_announcements: list[dict[str, Any]] = []
        self.oversized: Counter[str] = Counter()
        self.current_workers: dict[str, WorkerSpell] = {}
        self.event_data: dict[str, Any] = {}
        """The data of the event being added, for hooks that want more of it."""
        self._task_spans: dict[str, str] = {}
        self._texts: dict[str, str] = {}
        self._names: dict[str, str] = {}
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
            LOG: self._log,
        }

    def add(self, type_: str, data: Any, when: float) -> None:
        """Account for one new event of this source.

        Raises KeyError, TypeError or ValueError, having changed nothing, when
        ``data`` lacks what its type requires.
        """
        handler = self._handlers.get(type_)
        if handler is not None and isinstance(data, dict):
            self.event_data = data
            handler(data, when)
        self.events += 1
        if self.start is None or when < self.start:
            self.start = when
        if self.end is None or when > self.end:
            self.end = when

    def forget(self, key: str) -> None:
        """Drop a task the consumer has stored (it comes back if it runs again)."""
        self.tasks.pop(key, None)
        self.failures.pop(key, None)
        self._task_spans.pop(key, None)

    # ---- hooks for consumers that keep more

    def on_graph(self, graph: Graph) -> None:
        """A graph submission (``dask.graph.updated``), appended to :attr:`graphs`."""

    def on_task_added(self, task: Task, when: float) -> None:
        """A task key seen for the first time (or again after :meth:`forget`)."""

    def on_transition(self, task: Task, start: str, when: float) -> None:
        """``task`` went from ``start`` to ``task.state``."""

    def on_task_finished(
        self, task: Task, data: dict[str, Any], when: float, *, erred: bool, first: bool
    ) -> None:
        """A task run reached memory or erred (``data``: its transition).

        ``first``: the key had no outcome before (a rerun after a lost
        result has one).
        """

    def on_action(
        self,
        task: Task,
        worker: WorkerSpell,
        action: str,
        start: float,
        stop: float,
        source: str | None,
    ) -> None:
        """One of a finished task run's start-stops (compute, transfer, ...);
        ``source``: for a transfer, the worker the data came from."""

    def on_worker_changed(self, spell: WorkerSpell) -> None:
        """A worker joined, left or changed status."""

    def on_worker_metrics(self, spell: WorkerSpell, data: dict[str, Any], when: float) -> None:
        """A worker's metrics sample."""

    def on_log(self, data: dict[str, Any], when: float) -> None:
        """A ``dask.log`` event."""

    def on_scheduler(self, scheduler_id: str, info: dict[str, Any]) -> None:
        """A scheduler started or is closing (``info``: what is known of it)."""

    # ---- tasks

    def name(self, text: str) -> str:
        """One string object per distinct prefix, state or action, not one per event."""
        return self._names.setdefault(text, text)

    def _text(self, text: str | None) -> str | None:
        if text is None:
            return None
        if len(self._texts) >= MAX_SHARED_TEXTS:
            self._texts.clear()
        return self._texts.setdefault(text, text)

    def _transition(self, data: dict[str, Any], when: float) -> None:
        key, start, finish = data["key"], data["start"], data["finish"]
        if not (isinstance(key, str) and isinstance(start, str) and isinstance(finish, str)):
            raise TypeError("key, start and finish must be strings")
        finish = self.name(finish)
        task = self.tasks.get(key)
        if task is None:
            group = data.get("group")
            task = self.tasks[key] = Task(
                key,
                self.name(data.get("prefix") or "Other"),
                self.name(group) if isinstance(group, str) else None,
                finish,
                when,
                span_id=self._task_spans.get(key),
            )
            self.on_task_added(task, when)
        else:
            task.state = finish
        if finish == PROCESSING:
            task.started = when
        elif finish == "memory":
            first = task.outcome == NO_OUTCOME
            task.outcome = MEMORY
            task.ever_memory = True
            nbytes = data.get("nbytes")
            if isinstance(nbytes, int):
                task.nbytes = nbytes
            self._finished(task, data, when, erred=False, first=first)
        elif finish == "erred":
            first = task.outcome == NO_OUTCOME
            task.outcome = ERRED
            self._failed(data, task, when)
            self._finished(task, data, when, erred=True, first=first)
        self.on_transition(task, start, when)

    def _failed(self, data: dict[str, Any], task: Task, when: float) -> None:
        cause = data.get("cause")
        self.failures[task.key] = Failure(
            key=task.key,
            prefix=task.prefix,
            exception=self._text(data.get("exception")),
            traceback=self._text(data.get("traceback")),
            # distributed names a failing task as its own cause.
            cause=None if cause == task.key else cause,
            worker=data.get("worker"),
            time=when,
        )

    def _finished(
        self, task: Task, data: dict[str, Any], when: float, *, erred: bool, first: bool
    ) -> None:
        task.finished = when
        worker = data.get("worker")
        startstops = data.get("startstops")
        if isinstance(worker, str):
            task.worker = worker
        if isinstance(worker, str) and isinstance(startstops, list) and startstops:
            spell = self.worker(worker)
            spell.tasks += 1
            compute = 0.0
            first_begin: float | None = None
            for entry in startstops:
                if not isinstance(entry, dict):
                    continue
                begin, stop = entry.get("start"), entry.get("stop")
                if not isinstance(begin, (int, float)) or not isinstance(stop, (int, float)):
                    continue
                action = self.name(str(entry.get("action")))
                if first_begin is None or begin < first_begin:
                    first_begin = begin
                if action == "compute":
                    compute += stop - begin
                    spell.compute_seconds += stop - begin
                self.on_action(task, spell, action, begin, stop, entry.get("source"))
            task.compute_seconds = compute
            if first_begin is not None:
                task.started = first_begin
        self.on_task_finished(task, data, when, erred=erred, first=first)

    # ---- everything else

    def worker(self, address: str) -> WorkerSpell:
        """The worker's current spell, made if it joined before the first event read."""
        spell = self.current_workers.get(address)
        if spell is None:
            spell = self.current_workers[address] = WorkerSpell(address)
            self.workers.append(spell)
        return spell

    def _worker_added(self, data: dict[str, Any], when: float) -> None:
        address = data["address"]
        spell = self.current_workers.get(address)
        if spell is None or spell.removed is not None or spell.added is not None:
            spell = self.current_workers[address] = WorkerSpell(address)
            self.workers.append(spell)
        spell.added = when
        spell.name = data.get("name")
        spell.nthreads = data.get("nthreads")
        spell.memory_limit = data.get("memory_limit")
        self.on_worker_changed(spell)

    def _worker_removed(self, data: dict[str, Any], when: float) -> None:
        spell = self.worker(data["address"])
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
        self.on_worker_changed(spell)

    def _worker_status(self, data: dict[str, Any], when: float) -> None:
        status = data["status"]
        if not isinstance(status, str):
            raise TypeError("a status name")
        spell = self.worker(data["address"])
        spell.statuses.append((when, data.get("previous"), status))
        self.on_worker_changed(spell)

    def _worker_metrics(self, data: dict[str, Any], when: float) -> None:
        spell = self.worker(data["address"])
        process = data.get("memory_process")
        if isinstance(process, int):
            spell.add_memory(
                when, process, data.get("memory_managed") or 0, data.get("memory_spilled") or 0
            )
        self.on_worker_metrics(spell, data, when)

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
        for entry in tasks:
            if not isinstance(entry, dict):
                continue
            key, span_id = entry.get("key"), entry.get("span_id")
            node = self.spans.get(span_id) if isinstance(span_id, str) else None
            # A task each submission lists again counts once.
            if node is not None and isinstance(key, str) and key not in self._task_spans:
                self._task_spans[key] = node.span_id
                node.tasks += 1
                task = self.tasks.get(key)
                if task is not None:
                    task.span_id = node.span_id

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
            stimulus_id=data.get("stimulus_id"),
        )
        self.clients.add(client)
        self.graphs.append(graph)
        self.on_graph(graph)

    def _scheduler(self, data: dict[str, Any], when: float, moment: str) -> None:
        scheduler_id = str(data.get("scheduler_id"))
        known = self.schedulers.setdefault(scheduler_id, {"started": None, "closing": None})
        known["address"] = data.get("address")
        known["versions"] = data.get("versions") or {}
        known[moment] = when
        self.on_scheduler(scheduler_id, known)

    def _scheduler_started(self, data: dict[str, Any], when: float) -> None:
        self._scheduler(data, when, "started")

    def _scheduler_closing(self, data: dict[str, Any], when: float) -> None:
        self._scheduler(data, when, "closing")

    def _restarted(self, data: dict[str, Any], when: float) -> None:
        self.restarts.append(when)

    def _dropped(self, data: dict[str, Any], when: float) -> None:
        count = data.get("count", 0)
        if not isinstance(count, int):
            raise TypeError("an integer count")
        self.dropped += count
        self.dropped_announcements.append({**data, "time": when})

    def _oversized(self, data: dict[str, Any], when: float) -> None:
        self.oversized[str(data.get("type"))] += 1

    def _log(self, data: dict[str, Any], when: float) -> None:
        self.on_log(data, when)
