"""``dask-eventbus archive``: events into the history database, exactly once.

Events are read in batches through the shared reader, folded into one
:class:`RunState` per scheduler run, and each batch becomes one transaction:
the events, the rows they change, the sequence numbers seen and the input's
position together. Killed at any moment, the archive starts again from the
last committed position with the sequence numbers committed with it, so no
row is lost or written twice; a redelivered event is recognised by its
sequence number and, as a last guard, refused by the events table's key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..consume.inputs import EventsInput, FileInput
from ..consume.reader import EventReader, run_of
from ..consume.sequence import SequenceTracker
from ..consume.state import ACTIVE_STATES, ERRED, MEMORY, Graph, SourceState, Task, WorkerSpell
from ..events import (
    CLIENT_ADDED,
    CLIENT_REMOVED,
    SPAN,
    Event,
)
from ..pacing import Backoff, RateLimitedLog
from .database import Database, DatabaseUnavailable

logger = logging.getLogger("dask_eventbus.archive")

BATCH_EVENTS = 5000
"""Events per transaction at most."""
BATCH_SECONDS = 1.0
"""A transaction at least this often while events trickle in."""

_OUTCOMES = {MEMORY: "memory", ERRED: "erred"}
_TASK_COLUMNS = (
    "source", "run", "key", "prefix", '"group"', "state", "outcome", "worker", "submitted",
    "started", "finished", "updated", "compute_seconds", "nbytes", "exception", "traceback",
    "cause", "span_id",
)  # fmt: skip
# Each batch's facts merge with what earlier batches stored: the earliest
# submission, the latest state (by its time), and the newest of the rest.
_TASK_MERGE = """
ON CONFLICT (source, run, key) DO UPDATE SET
    prefix = COALESCE(tasks.prefix, excluded.prefix),
    "group" = COALESCE(tasks."group", excluded."group"),
    state = CASE WHEN excluded.updated >= tasks.updated THEN excluded.state ELSE tasks.state END,
    updated = CASE WHEN excluded.updated >= tasks.updated
                   THEN excluded.updated ELSE tasks.updated END,
    outcome = COALESCE(excluded.outcome, tasks.outcome),
    worker = COALESCE(excluded.worker, tasks.worker),
    submitted = CASE WHEN excluded.submitted < tasks.submitted
                     THEN excluded.submitted ELSE tasks.submitted END,
    started = COALESCE(excluded.started, tasks.started),
    finished = COALESCE(excluded.finished, tasks.finished),
    compute_seconds = COALESCE(excluded.compute_seconds, tasks.compute_seconds),
    nbytes = COALESCE(excluded.nbytes, tasks.nbytes),
    exception = COALESCE(excluded.exception, tasks.exception),
    traceback = COALESCE(excluded.traceback, tasks.traceback),
    cause = COALESCE(excluded.cause, tasks.cause),
    span_id = COALESCE(excluded.span_id, tasks.span_id)
"""
_WORKER_COLUMNS = (
    "source", "run", "address", "spell", "name", "nthreads", "memory_limit", "joined",
    "departed", "reason", "expected", "processing", "processing_total", "lost_total", "status",
)  # fmt: skip
_WORKER_MERGE = "ON CONFLICT (source, run, address, spell) DO UPDATE SET " + ", ".join(
    f"{column} = COALESCE(excluded.{column}, workers.{column})" for column in _WORKER_COLUMNS[4:]
)
_UPSERT_SCHEDULER = """
INSERT INTO schedulers (source, run, scheduler_id, address, versions, started, closed,
    first_event, last_event, events)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (source, run) DO UPDATE SET
    scheduler_id = COALESCE(excluded.scheduler_id, schedulers.scheduler_id),
    address = COALESCE(excluded.address, schedulers.address),
    versions = COALESCE(excluded.versions, schedulers.versions),
    started = COALESCE(excluded.started, schedulers.started),
    closed = COALESCE(excluded.closed, schedulers.closed),
    first_event = CASE WHEN excluded.first_event < schedulers.first_event
                       THEN excluded.first_event ELSE schedulers.first_event END,
    last_event = CASE WHEN excluded.last_event > schedulers.last_event
                      THEN excluded.last_event ELSE schedulers.last_event END,
    events = schedulers.events + excluded.events
"""
_ACTIVE = "(" + ", ".join(f"'{state}'" for state in sorted(ACTIVE_STATES)) + ")"
_MARK_UNFINISHED = (
    f"UPDATE tasks SET unfinished = TRUE WHERE source = ? AND run = ? AND state IN {_ACTIVE}"
)


class RunState(SourceState):
    """One scheduler run's state, remembering what changed since the last commit."""

    def __init__(self, source: str, run: str) -> None:
        super().__init__(source)
        self.run = run
        self.event_id = ""
        self.batch_events = 0
        self.batch_start: float | None = None
        self.batch_end: float | None = None
        self.changed_tasks: dict[str, float] = {}
        """Keys changed, with the time of their last transition."""
        self.changed_workers: dict[int, WorkerSpell] = {}
        self.metrics: list[tuple[Any, ...]] = []
        self.logs: list[tuple[Any, ...]] = []
        self.graph_rows: list[tuple[Any, ...]] = []
        self.span_rows: list[tuple[Any, ...]] = []
        self.client_rows: dict[str, float] = {}
        self.scheduler: dict[str, Any] | None = None
        self.closed = False

    def take(self, event: Event) -> None:
        """Fold one new event of this run."""
        when = event.time.timestamp()
        self.event_id = event.id
        self.add(event.type, event.data, when)
        self.batch_events += 1
        if self.batch_start is None or when < self.batch_start:
            self.batch_start = when
        if self.batch_end is None or when > self.batch_end:
            self.batch_end = when
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == SPAN and data.get("span_id") in self.spans:
            node = self.spans[data["span_id"]]
            self.span_rows.append(
                (self.source, self.run, node.span_id, json.dumps(node.name), node.parent_id)
            )
        elif event.type in (CLIENT_ADDED, CLIENT_REMOVED) and isinstance(data.get("client"), str):
            self.client_rows.setdefault(data["client"], when)

    def on_graph(self, graph: Graph) -> None:
        self.graphs.pop()  # written once, not kept
        self.graph_rows.append(
            (
                self.source,
                self.event_id,
                self.run,
                graph.time,
                graph.client,
                graph.stimulus_id,
                graph.tasks,
                graph.keys,
                json.dumps(graph.prefixes),
            )
        )

    def on_transition(self, task: Task, start: str, when: float) -> None:
        self.changed_tasks[task.key] = when

    def on_worker_changed(self, spell: WorkerSpell) -> None:
        self.changed_workers[id(spell)] = spell

    def on_worker_metrics(self, spell: WorkerSpell, data: dict[str, Any], when: float) -> None:
        self.metrics.append(
            (
                self.source,
                self.event_id,
                self.run,
                spell.address,
                when,
                *(data.get(name) for name in _METRIC_FIELDS),
            )
        )

    def on_log(self, data: dict[str, Any], when: float) -> None:
        message = json.dumps(data.get("message"), default=str)
        self.logs.append((self.source, self.event_id, self.run, when, data.get("topic"), message))

    def on_scheduler(self, scheduler_id: str, info: dict[str, Any]) -> None:
        self.scheduler = {"scheduler_id": scheduler_id, **info}
        if info.get("closing") is not None:
            self.closed = True

    def write(self, plan: WritePlan) -> None:
        """Add this run's changes to ``plan`` and start the next batch afresh."""
        source, run = self.source, self.run
        info = self.scheduler or {}
        plan.statements.append(
            (
                _UPSERT_SCHEDULER,
                [
                    (
                        source,
                        run,
                        info.get("scheduler_id"),
                        info.get("address"),
                        json.dumps(info["versions"]) if info.get("versions") else None,
                        info.get("started"),
                        info.get("closing"),
                        self.batch_start,
                        self.batch_end,
                        self.batch_events,
                    )
                ],
            )
        )
        tasks = [self._task_row(key, when) for key, when in self.changed_tasks.items()]
        plan.merges.append(("tasks", _TASK_COLUMNS, _TASK_MERGE, tasks))
        workers = [self._worker_row(spell) for spell in self.changed_workers.values()]
        plan.merges.append(("workers", _WORKER_COLUMNS, _WORKER_MERGE, workers))
        plan.tables.append(("worker_metrics", _METRICS_COLUMNS, self.metrics))
        plan.tables.append(("logs", _LOG_COLUMNS, self.logs))
        plan.tables.append(("graphs", _GRAPH_COLUMNS, self.graph_rows))
        plan.statements.append(
            (
                "INSERT INTO spans (source, run, span_id, name, parent_id) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (source, run, span_id) DO NOTHING",
                self.span_rows,
            )
        )
        plan.statements.append(
            (
                "INSERT INTO clients (source, run, client, seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (source, run, client) DO NOTHING",
                [(source, run, client, when) for client, when in self.client_rows.items()],
            )
        )
        if self.closed:
            plan.statements.append((_MARK_UNFINISHED, [(source, run)]))
        self._forget_written()

    def _task_row(self, key: str, updated: float) -> tuple[Any, ...]:
        task = self.tasks[key]
        failure = self.failures.get(key) if task.outcome == ERRED else None
        return (
            self.source,
            self.run,
            key,
            task.prefix,
            task.group,
            task.state,
            _OUTCOMES.get(task.outcome),
            task.worker,
            task.submitted,
            task.started,
            task.finished,
            updated,
            task.compute_seconds,
            task.nbytes if task.ever_memory else None,
            failure.exception if failure else None,
            failure.traceback if failure else None,
            failure.cause if failure else None,
            task.span_id,
        )

    def _worker_row(self, spell: WorkerSpell) -> tuple[Any, ...]:
        return (
            self.source,
            self.run,
            spell.address,
            spell.added or 0.0,
            spell.name,
            spell.nthreads,
            spell.memory_limit,
            spell.added,
            spell.removed,
            spell.reason,
            spell.expected,
            json.dumps(spell.processing) if spell.removed is not None else None,
            spell.processing_total if spell.removed is not None else None,
            spell.lost_total if spell.removed is not None else None,
            spell.statuses[-1][2] if spell.statuses else None,
        )

    def _forget_written(self) -> None:
        # Stored tasks need not stay in memory: a later event about one
        # merges with its row. Tasks still running stay, to be written whole.
        for key in self.changed_tasks:
            task = self.tasks.get(key)
            if task is not None and task.state not in ACTIVE_STATES:
                self.forget(key)
        self.changed_tasks = {}
        self.changed_workers = {}
        self.metrics, self.logs, self.graph_rows, self.span_rows = [], [], [], []
        self.client_rows = {}
        self.batch_events = 0
        self.batch_start = self.batch_end = None
        for spell in self.workers:
            spell.memory.clear()
        self.workers = [s for s in self.workers if s.removed is None]


_METRIC_FIELDS = (
    "status",
    "processing",
    "executing",
    "ready",
    "memory_process",
    "memory_managed",
    "memory_unmanaged",
    "memory_spilled",
    "memory_limit",
    "cpu",
)


_METRICS_COLUMNS = ("source", "id", "run", "address", "time", *_METRIC_FIELDS)
_LOG_COLUMNS = ("source", "id", "run", "time", "topic", "message")
_GRAPH_COLUMNS = (
    "source", "id", "run", "time", "client", "stimulus_id", "tasks", "keys", "prefixes",
)  # fmt: skip
_EVENT_COLUMNS = ("source", "id", "run", "sequence", "type", "time", "body")


@dataclass
class WritePlan:
    """One transaction's writes, kept until committed so a retry repeats them."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    tables: list[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]] = field(default_factory=list)
    merges: list[tuple[str, tuple[str, ...], str, list[tuple[Any, ...]]]] = field(
        default_factory=list
    )
    statements: list[tuple[str, list[tuple[Any, ...]]]] = field(default_factory=list)

    def apply(self, database: Database) -> None:
        database.insert_rows("events", _EVENT_COLUMNS, self.events)
        for table, columns, rows in self.tables:
            if rows:
                database.insert_rows(table, columns, rows)
        for table, columns, conflict, rows in self.merges:
            if rows:
                database.merge_rows(table, columns, conflict, rows)
        for sql, rows in self.statements:
            database.executemany(sql, rows)
        database.commit()


@dataclass
class ArchiveCounts:
    """What an archive run did, for its closing line and the tests."""

    read: int = 0
    archived: int = 0
    transactions: int = 0
    retries: int = 0


class Archiver:
    """Reads ``events_input`` into the database ``connect()`` gives, until its end.

    ``connect`` is called again after the connection is lost; each
    transaction is retried with backoff until the database takes it, so
    nothing read is lost and the input's position only advances with the
    rows it covers. ``stale_after`` (seconds) marks a scheduler run that sent
    nothing for that long and never said it closed as crashed.
    """

    def __init__(
        self,
        connect: Callable[[], Database],
        events_input: EventsInput,
        *,
        input_name: str | None = None,
        source: str | None = None,
        stale_after: float | None = None,
        batch_events: int = BATCH_EVENTS,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self._connect = connect
        self.input = events_input
        self.input_name = input_name
        self.stale_after = stale_after
        self.batch_events = batch_events
        self.reader = EventReader(source=source, warn=warn, consumer="the archive")
        self.runs: dict[tuple[str, str], RunState] = {}
        self.counts = ArchiveCounts()
        self._backoff = Backoff(0.2, 10.0)
        self._trouble = RateLimitedLog()
        self.database = self._connected()
        try:
            self._restore()
        except BaseException:
            self.database.close()
            self.input.close()
            raise

    def _restore(self) -> None:
        """Carry on where the last committed transaction left off."""
        for source, run, state in self.database.execute(
            "SELECT source, run, state FROM archive_sequences"
        ):
            tracker = SequenceTracker.from_state(json.loads(state))
            self.reader.sequences.setdefault(source, {})[run] = tracker
        for source, run, address, joined in self.database.execute(
            "SELECT w.source, w.run, w.address, w.joined FROM workers w JOIN schedulers s "
            "ON s.source = w.source AND s.run = w.run "
            "WHERE w.departed IS NULL AND s.closed IS NULL AND s.crashed IS NULL"
        ):
            state = self._run(source, run)
            spell = state.worker(address)
            spell.added = joined
        if self.input_name is not None and isinstance(self.input, FileInput):
            rows = self.database.execute(
                "SELECT position FROM archive_positions WHERE input = ?", (self.input_name,)
            )
            if rows and self.input.resumable:
                self.input = FileInput(self.input.path, offset=rows[0][0], follow=self.input.follow)

    def _run(self, source: str, run: str) -> RunState:
        state = self.runs.get((source, run))
        if state is None:
            state = self.runs[(source, run)] = RunState(source, run)
        return state

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> ArchiveCounts:
        """Archive until the input ends (or ``should_stop``); the counts."""
        try:
            while not should_stop():
                bodies = self.input.read(self.batch_events, timeout=BATCH_SECONDS)
                if bodies is None:
                    break
                plan = WritePlan()
                for body in bodies:
                    self._take(body, plan)
                if bodies or self.stale_after is not None:
                    self._commit(plan)
            return self.counts
        finally:
            self.input.close()
            self.database.close()

    def _take(self, body: bytes, plan: WritePlan) -> None:
        if not body.strip():
            return
        events = self.reader.events(body)
        single = len(events) == 1 and body.lstrip()[:1] != b"["
        for event in events:
            run = run_of(event)
            state = self._run(event.source, run)
            try:
                state.take(event)
            except (KeyError, TypeError, ValueError) as exc:
                self.reader.skip("not_cloudevent", f"a {event.type} event whose data lacks {exc}")
            text = (body if single else event.to_json()).decode().rstrip("\n")
            plan.events.append(
                (
                    event.source,
                    event.id,
                    run,
                    int(event.sequence),
                    event.type,
                    event.time.timestamp(),
                    text,
                )
            )
        self.counts.read = self.reader.read

    def _commit(self, plan: WritePlan) -> None:
        touched = [state for state in self.runs.values() if state.batch_events]
        for state in touched:
            state.write(plan)
            tracker = self.reader.sequences[state.source][state.run]
            plan.statements.append(
                ("DELETE FROM gaps WHERE source = ? AND run = ?", [(state.source, state.run)])
            )
            plan.statements.append(
                (
                    "INSERT INTO gaps (source, run, first_sequence, last_sequence) "
                    "VALUES (?, ?, ?, ?)",
                    [(state.source, state.run, a, b) for a, b in tracker.unexplained_gaps()],
                )
            )
            plan.statements.append(
                (
                    "INSERT INTO archive_sequences (source, run, state) VALUES (?, ?, ?) "
                    "ON CONFLICT (source, run) DO UPDATE SET state = excluded.state",
                    [(state.source, state.run, json.dumps(tracker.to_state()))],
                )
            )
        if self.input_name is not None and self.input.position is not None:
            plan.statements.append(
                (
                    "INSERT INTO archive_positions (input, position) VALUES (?, ?) "
                    "ON CONFLICT (input) DO UPDATE SET position = excluded.position",
                    [(self.input_name, self.input.position)],
                )
            )
        if self.stale_after is not None:
            self._mark_stale(plan)
        self._apply(plan)
        self.input.commit()
        self.counts.archived += len(plan.events)
        self.counts.transactions += 1
        for key in [key for key, state in self.runs.items() if state.closed]:
            del self.runs[key]

    def _mark_stale(self, plan: WritePlan) -> None:
        assert self.stale_after is not None
        silent_since = time.time() - self.stale_after
        for (source, run), state in list(self.runs.items()):
            if not state.closed and state.end is not None and state.end < silent_since:
                plan.statements.append(
                    (
                        "UPDATE schedulers SET crashed = ? WHERE source = ? AND run = ? "
                        "AND closed IS NULL AND crashed IS NULL",
                        [(time.time(), source, run)],
                    )
                )
                plan.statements.append((_MARK_UNFINISHED, [(source, run)]))
                del self.runs[(source, run)]

    def _apply(self, plan: WritePlan) -> None:
        while True:
            try:
                plan.apply(self.database)
                break
            except DatabaseUnavailable as exc:
                self.database.rollback()
                self.counts.retries += 1
                if self._trouble.occurred():
                    unlogged = self._trouble.logged()
                    logger.warning(
                        "%s; retrying (nothing is lost: the input waits)%s",
                        exc,
                        f" ({unlogged} more failures since the last message)" if unlogged else "",
                    )
                time.sleep(self._backoff.next_delay())
                self._reconnect()
        self._backoff.reset()
        lasted = self._trouble.ended()
        if lasted is not None:
            logger.warning("the database takes writes again after %.1f s", lasted)

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):  # the old connection is gone either way
            self.database.close()
        self.database = self._connected()

    def _connected(self) -> Database:
        """A connection holding the archive lock, retried while the database is away."""
        while True:
            try:
                database = self._connect()
            except DatabaseUnavailable as exc:
                self.counts.retries += 1
                if self._trouble.occurred():
                    self._trouble.logged()
                    logger.warning("%s; retrying", exc)
                time.sleep(self._backoff.next_delay())
                continue
            try:
                database.lock_for_archiving()
            except BaseException:
                database.close()
                raise
            return database


def input_name(path: str) -> str | None:
    """The name a file's position is stored under: its absolute path (none for ``-``)."""
    return None if path == "-" else os.path.abspath(path)
