"""What ``dask-eventbus top`` knows: every source on the bus, folded as events come.

:class:`TopSource` is the shared :class:`~dask_eventbus.consume.state.SourceState`
plus what only the terminal view draws: task counts by state, computations
(one per graph submission) with progress by prefix, the latest metrics of
each worker, recent failures and an events-per-second rate. :class:`TopModel`
holds one per source, the log, and the :class:`~dask_eventbus.consume.reader.EventReader`
that feeds them.

Memory is bounded however long it runs: tasks are forgotten when the
scheduler forgets them, finished computations beyond the newest
:data:`KEEP_COMPUTATIONS` are folded into totals, and failures, log lines,
departed workers and graphs are kept to fixed numbers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..consume.reader import EventReader
from ..consume.sequence import SequenceTracker
from ..consume.state import NO_OUTCOME, PROCESSING, Graph, SourceState, Task, WorkerSpell
from ..events import DROPPED, Event

KEEP_COMPUTATIONS = 100
"""Computations kept per source with their prefixes; older finished ones become totals."""
KEEP_FAILURES = 500
"""Latest failures kept per source."""
KEEP_LOG = 2000
"""Latest ``dask.log`` events kept (all sources)."""
KEEP_DEPARTED = 50
"""Workers that left, kept per source."""
KEEP_GRAPHS = 20
KEEP_STATUSES = 20
SILENT_AFTER = 30.0
"""Seconds without an event after which a running source counts as silent."""
RATE_WINDOW = 5
"""Seconds of events the events-per-second rate is taken over."""


@dataclass(slots=True)
class PrefixProgress:
    """The tasks of one prefix in one computation."""

    total: int = 0
    done: int = 0
    erred: int = 0
    processing: int = 0


@dataclass(slots=True)
class Computation:
    """One graph submission and how far its new tasks got."""

    number: int
    source: str
    client: str
    stimulus_id: str | None
    submitted: float
    prefixes: dict[str, PrefixProgress] = field(default_factory=dict)
    total: int = 0
    done: int = 0
    erred: int = 0
    cancelled: int = 0
    """Tasks forgotten before they ran to an end (cancelled, or the client left)."""
    processing: int = 0
    last_progress: float | None = None
    finished: float | None = None

    @property
    def left(self) -> int:
        return max(0, self.total - self.done - self.erred - self.cancelled)

    def elapsed(self, now: float) -> float:
        return max(0.0, (self.finished if self.finished is not None else now) - self.submitted)

    def estimate(self, now: float) -> float | None:
        """Seconds still to go at the rate so far; None before anything finished."""
        if self.finished is not None:
            return 0.0
        ended = self.done + self.erred
        if not ended or self.last_progress is None:
            return None
        spent = max(self.last_progress - self.submitted, 1e-3)
        return self.left * spent / ended


@dataclass(slots=True)
class Folded:
    """Computations no longer kept one by one."""

    computations: int = 0
    tasks: int = 0
    done: int = 0
    erred: int = 0


@dataclass(slots=True)
class FailureView:
    """One failed task as the Failures view lists it."""

    source: str
    key: str
    prefix: str
    exception: str | None
    traceback: str | None
    cause: str | None
    worker: str | None
    time: float


@dataclass(slots=True)
class LogLine:
    source: str
    time: float
    topic: str
    message: Any


class TopSource(SourceState):
    """One source (scheduler) as ``top`` shows it."""

    def __init__(
        self,
        source: str,
        runs: dict[str, SequenceTracker] | None = None,
        log: Callable[[LogLine], None] | None = None,
    ) -> None:
        super().__init__(source)
        self.runs = {} if runs is None else runs
        self.states: Counter[str] = Counter()
        self.computations: deque[Computation] = deque()
        self.folded = Folded()
        self.computation_count = 0
        self.recent_failures: deque[FailureView] = deque(maxlen=KEEP_FAILURES)
        self.failure_count = 0
        self.metrics: dict[str, dict[str, Any]] = {}
        self.rate_buckets: deque[list[float]] = deque()
        self._by_stimulus: dict[str, Computation] = {}
        self._of_task: dict[str, Computation] = {}
        self._added: Task | None = None
        self._log_sink = log

    # ---- folding

    def add(self, type_: str, data: Any, when: float) -> None:
        super().add(type_, data, when)
        self._count(when)
        if type_ == DROPPED:
            del self.dropped_announcements[:-KEEP_GRAPHS]

    def on_graph(self, graph: Graph) -> None:
        self._computation(graph)
        del self.graphs[:-KEEP_GRAPHS]

    def _count(self, when: float) -> None:
        second = float(int(when))
        buckets = self.rate_buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
        elif not buckets or second > buckets[-1][0]:
            buckets.append([second, 1])
            while buckets[0][0] <= second - RATE_WINDOW:
                buckets.popleft()

    def rate(self, now: float) -> float:
        """Events per second over the last RATE_WINDOW seconds before ``now``."""
        since = int(now) - RATE_WINDOW
        return sum(count for second, count in self.rate_buckets if second > since) / RATE_WINDOW

    def _computation(self, graph: Any) -> None:
        self.computation_count += 1
        computation = Computation(
            self.computation_count, self.source, graph.client, graph.stimulus_id, graph.time
        )
        self.computations.append(computation)
        if graph.stimulus_id is not None:
            self._by_stimulus[graph.stimulus_id] = computation
        self._fold()

    def _fold(self) -> None:
        while len(self.computations) > KEEP_COMPUTATIONS:
            # The oldest finished one, or the oldest at all when far over.
            victim = next((c for c in self.computations if c.finished is not None), None)
            if victim is None:
                if len(self.computations) < 2 * KEEP_COMPUTATIONS:
                    return
                victim = self.computations[0]
            self.computations.remove(victim)
            if victim.stimulus_id is not None:
                self._by_stimulus.pop(victim.stimulus_id, None)
            self.folded.computations += 1
            self.folded.tasks += victim.total
            self.folded.done += victim.done
            self.folded.erred += victim.erred

    def on_task_added(self, task: Task, when: float) -> None:
        self._added = task
        stimulus = self.event_data.get("stimulus_id")
        computation = self._by_stimulus.get(stimulus) if isinstance(stimulus, str) else None
        if computation is None:
            if not self.computations:
                # Tasks of a graph submitted before the first event read.
                self.computation_count += 1
                self.computations.append(
                    Computation(self.computation_count, self.source, "", None, when)
                )
            computation = self.computations[-1]
        progress = computation.prefixes.get(task.prefix)
        if progress is None:
            progress = computation.prefixes[task.prefix] = PrefixProgress()
        progress.total += 1
        computation.total += 1
        if computation.finished is not None:
            computation.finished = None
        self._of_task[task.key] = computation

    def on_transition(self, task: Task, start: str, when: float) -> None:
        states = self.states
        if self._added is task:
            self._added = None
        elif states[start] > 0:
            states[start] -= 1
        finish = task.state
        computation = self._of_task.get(task.key)
        if computation is not None and PROCESSING in (start, finish) and start != finish:
            step = 1 if finish == PROCESSING else -1
            computation.processing += step
            computation.prefixes[task.prefix].processing += step
        if finish == "forgotten":
            if computation is not None and task.outcome == NO_OUTCOME:
                computation.cancelled += 1
                computation.last_progress = when
                if computation.left == 0:
                    computation.finished = when
            self.forget(task.key)
        else:
            states[finish] += 1

    def on_task_finished(
        self, task: Task, data: dict[str, Any], when: float, *, erred: bool, first: bool
    ) -> None:
        if erred:
            self.failure_count += 1
            failure = self.failures.get(task.key)
            if failure is not None:
                self.recent_failures.append(
                    FailureView(
                        self.source,
                        failure.key,
                        failure.prefix,
                        failure.exception,
                        failure.traceback,
                        failure.cause,
                        failure.worker,
                        when,
                    )
                )
        computation = self._of_task.get(task.key)
        if computation is None or not first:
            return
        progress = computation.prefixes[task.prefix]
        if erred:
            progress.erred += 1
            computation.erred += 1
        else:
            progress.done += 1
            computation.done += 1
        computation.last_progress = when
        if computation.left == 0:
            computation.finished = when
            self._fold()

    def forget(self, key: str) -> None:
        super().forget(key)
        self._of_task.pop(key, None)

    def on_worker_changed(self, spell: WorkerSpell) -> None:
        del spell.statuses[:-KEEP_STATUSES]
        if spell.removed is not None:
            self.metrics.pop(spell.address, None)
            departed = [w for w in self.workers if w.removed is not None]
            for old in departed[:-KEEP_DEPARTED]:
                self.workers.remove(old)

    def on_worker_metrics(self, spell: WorkerSpell, data: dict[str, Any], when: float) -> None:
        if spell.removed is None:
            self.metrics[spell.address] = data

    def on_log(self, data: dict[str, Any], when: float) -> None:
        if self._log_sink is not None:
            self._log_sink(LogLine(self.source, when, str(data.get("topic")), data.get("message")))

    # ---- what the views ask

    def status(self, now: float) -> str:
        """running, closed or silent."""
        started = max((s["started"] or 0.0 for s in self.schedulers.values()), default=0.0)
        closing = max((s["closing"] or 0.0 for s in self.schedulers.values()), default=0.0)
        if closing and closing >= started:
            return "closed"
        if self.end is not None and now - self.end > SILENT_AFTER:
            return "silent"
        return "running"

    def live_workers(self) -> list[WorkerSpell]:
        return [w for w in self.current_workers.values() if w.removed is None]

    def gaps(self) -> int:
        """Events missing from the sequence that no dropped announcement explains."""
        return sum(
            end - start + 1
            for tracker in self.runs.values()
            for start, end in tracker.unexplained_gaps()
        )

    def duplicates(self) -> int:
        return sum(tracker.duplicates for tracker in self.runs.values())

    def dependents(self, key: str) -> list[FailureView]:
        """Failures caused by the failure of ``key``."""
        return [f for f in self.recent_failures if f.cause == key and f.key != key]


def worker_status(spell: WorkerSpell) -> str:
    """running, paused, closing...; for a worker that left: left, closed or died."""
    if spell.removed is not None:
        if spell.statuses and spell.statuses[-1][2].startswith("closing"):
            return "closed"
        return "died" if spell.expected is False else "left"
    if spell.statuses:
        return spell.statuses[-1][2]
    return "running"


class TopModel:
    """Every source's state, the log, and the reader that feeds them.

    The ingest thread calls :meth:`feed` while holding :attr:`lock`; the
    views take the lock while they read.
    """

    def __init__(self, *, source: str | None = None, live: bool = False, **reader: Any) -> None:
        self.reader = EventReader(source=source, consumer="top", **reader)
        self.sources: dict[str, TopSource] = {}
        self.log: deque[LogLine] = deque(maxlen=KEEP_LOG)
        self.log_count = 0
        self.lock = threading.RLock()
        self.live = live
        self.latest: float | None = None
        self.applied = 0

    def feed(self, body: bytes) -> int:
        """Fold the new events of one message body; returns how many there were."""
        events = self.reader.events(body)
        for event in events:
            self.apply(event)
        return len(events)

    def apply(self, event: Event) -> None:
        """Fold one event the reader accepted."""
        state = self.sources.get(event.source)
        if state is None:
            state = self.sources[event.source] = TopSource(
                event.source, self.reader.sequences.get(event.source), self._logged
            )
        when = event.time.timestamp()
        try:
            state.add(event.type, event.data, when)
        except (KeyError, TypeError, ValueError) as exc:
            self.reader.skip("not_cloudevent", f"{event.type}: {exc!r}")
            return
        self.applied += 1
        if self.latest is None or when > self.latest:
            self.latest = when

    def _logged(self, line: LogLine) -> None:
        self.log_count += 1
        self.log.append(line)

    def now(self) -> float:
        """The clock the views measure against: the wall clock live, the events' in a replay."""
        if self.live or self.latest is None:
            return time.time()
        return self.latest

    def failures(self) -> list[FailureView]:
        """The latest failures of every source, newest first."""
        merged = [f for state in self.sources.values() for f in state.recent_failures]
        merged.sort(key=lambda f: f.time, reverse=True)
        return merged
