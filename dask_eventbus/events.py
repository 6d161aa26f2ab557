"""The event model: CloudEvents 1.0 envelope, event types, codec, schema.

Scheduler hooks capture records (``records.py``); the publisher normalizes
each into an :class:`Event` (``normalize.py``), whose ``data`` is one of the
typed structs below, and encodes it once to CloudEvents JSON (structured
mode). The same structs generate the JSON Schema that ships with
the package (:func:`json_schema`), so the documented format and the emitted
one cannot drift apart.
"""

from __future__ import annotations

import inspect
import os
from datetime import datetime, timezone
from typing import Annotated, Any

import msgspec

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"
SCHEMA_FILE = os.path.join(os.path.dirname(__file__), "event-schema.json")
SEQUENCE_DIGITS = 20
# Longest subject an oversized event keeps of the event it replaces.
MAX_OVERSIZED_SUBJECT = 1000

TASK_TRANSITION = "dask.task.transition"
GRAPH_UPDATED = "dask.graph.updated"
WORKER_ADDED = "dask.worker.added"
WORKER_REMOVED = "dask.worker.removed"
CLIENT_ADDED = "dask.client.added"
CLIENT_REMOVED = "dask.client.removed"
SCHEDULER_STARTED = "dask.scheduler.started"
SCHEDULER_CLOSING = "dask.scheduler.closing"
SCHEDULER_RESTARTED = "dask.scheduler.restarted"
LOG = "dask.log"
DROPPED = "dask.eventbus.dropped"
OVERSIZED = "dask.eventbus.oversized"
PROBE = "dask.eventbus.probe"
GRAPH_TASKS = "dask.graph.tasks"
SPAN = "dask.span"
WORKER_STATUS = "dask.worker.status"
WORKER_METRICS = "dask.worker.metrics"

SCHEMA_VERSION = "1.1"
"""The version of the event format: the major version changes only with new
type names (``.v2``); each minor version adds types or fields (see the changelog)."""


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class Event(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One CloudEvent as dask-eventbus emits it (structured JSON mode)."""

    specversion: Annotated[str, _doc("CloudEvents version: always 1.0.")]
    id: Annotated[
        str, _doc("Unique for its source: a random token per plugin start, '-', the sequence.")
    ]
    source: Annotated[
        str,
        _doc("The scheduler: dask://<hostname>/<scheduler id> unless eventbus.source says else."),
    ]
    type: Annotated[str, _doc("What happened, e.g. dask.task.transition.")]
    time: Annotated[datetime, _doc("When the scheduler saw it (RFC 3339, UTC).")]
    datacontenttype: Annotated[str, _doc("Content type of data: always application/json.")]
    sequence: Annotated[
        str,
        _doc(
            "CloudEvents sequence extension: 20 zero-padded decimal digits, counting up by "
            "one per event from 1 for each plugin start, so string order is numeric order."
        ),
    ]
    subject: Annotated[
        str | None, _doc("What it is about: task key, worker address, client id, topic.")
    ] = None
    data: Annotated[Any, _doc("The type's fields, documented per type.")] = None

    @property
    def sequence_number(self) -> int:
        """``sequence`` as an integer."""
        return int(self.sequence)

    def to_json(self) -> bytes:
        """The event as CloudEvents structured-mode JSON."""
        return _encode(self)

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-compatible builtins (``time`` as an RFC 3339 string)."""
        result: dict[str, Any] = msgspec.json.decode(_encode(self))
        return result

    @classmethod
    def from_json(cls, body: bytes | str) -> Event:
        """Parse one structured-mode CloudEvent; ``data`` becomes plain JSON types."""
        return _decode_event(body)


# ---------------------------------------------------------------- data types
# Each field's description is its documentation: the JSON Schema and the
# event reference are generated from these.

_StimulusId = Annotated[str | None, _doc("The scheduler's id for the stimulus that caused this.")]


class _Data(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    # Unknown fields are allowed (and the schema says so), so that a reader of
    # this version accepts the events of a newer 1.x producer.
    pass


class StartStop(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One timed action of a finished task on its worker, as distributed reports it.

    Fields distributed may add later appear too.
    """

    action: Annotated[str, _doc("compute, transfer, disk-read, ...")]
    start: Annotated[float, _doc("Seconds since the epoch, worker clock.")]
    stop: Annotated[float, _doc("Seconds since the epoch, worker clock.")]
    source: Annotated[str | None, _doc("For transfers: the worker the data came from.")] = None


class TaskTransition(_Data):
    """A task moved from one scheduler state to another."""

    key: Annotated[str, _doc("The task key as a string (tuples as their repr).")]
    group: Annotated[str, _doc("The task group name, as on the dashboard.")]
    prefix: Annotated[str, _doc("The task prefix name, e.g. 'inc' or 'read_parquet'.")]
    start: Annotated[str, _doc("Scheduler state before: released, waiting, processing, ...")]
    finish: Annotated[str, _doc("Scheduler state after.")]
    stimulus_id: _StimulusId = None
    worker: Annotated[
        str | None,
        _doc("The worker involved: where it was sent (->processing), ran or failed."),
    ] = None
    nbytes: Annotated[int | None, _doc("processing->memory: size of the result in bytes.")] = None
    typename: Annotated[str | None, _doc("processing->memory: type name of the result.")] = None
    startstops: Annotated[
        list[StartStop] | None, _doc("processing->memory/erred: timed actions on the worker.")
    ] = None
    exception: Annotated[
        str | None,
        _doc("->erred: the exception text, cut to events.max-text-length (unless turned off)."),
    ] = None
    traceback: Annotated[str | None, _doc("->erred: the traceback text, cut the same way.")] = None
    cause: Annotated[
        str | None, _doc("->erred: key of the task whose failure made this one fail.")
    ] = None


class GraphUpdated(_Data):
    """A client submitted tasks (one Client.compute/submit/map call)."""

    client: Annotated[str, _doc("The client id.")]
    tasks: Annotated[int, _doc("Tasks the graph touched, dependencies included.")]
    keys: Annotated[list[str], _doc("Requested keys, at most events.max-graph-keys of them.")]
    keys_total: Annotated[int, _doc("How many keys were requested in all.")]
    prefixes: Annotated[dict[str, int], _doc("Tasks touched, counted by task prefix.")]
    stimulus_id: _StimulusId = None


class WorkerInfo(_Data):
    """A worker joined or left."""

    address: Annotated[str, _doc("The worker's address.")]
    name: Annotated[str | None, _doc("The worker's name, as a string.")] = None
    host: Annotated[str | None, _doc("The worker's host.")] = None
    nthreads: Annotated[int | None, _doc("Threads the worker runs tasks on.")] = None
    memory_limit: Annotated[int | None, _doc("Memory limit in bytes (0: none).")] = None
    resources: Annotated[dict[str, float] | None, _doc("Abstract resources the worker offers.")] = (
        None
    )
    stimulus_id: Annotated[str | None, _doc("dask.worker.removed: why it was removed.")] = None
    expected: Annotated[
        bool | None,
        _doc(
            "dask.worker.removed: whether the scheduler expected the departure (a retirement "
            "or a scale-down) rather than losing the worker."
        ),
    ] = None
    processing: Annotated[
        list[str] | None,
        _doc("dask.worker.removed: keys of tasks it was running, at most events.max-graph-keys."),
    ] = None
    processing_total: Annotated[
        int | None, _doc("dask.worker.removed: how many it was running.")
    ] = None
    lost: Annotated[
        list[str] | None,
        _doc(
            "dask.worker.removed: keys of results held only there, to be recomputed, "
            "at most events.max-graph-keys."
        ),
    ] = None
    lost_total: Annotated[int | None, _doc("dask.worker.removed: how many results were lost.")] = (
        None
    )
    lost_scattered: Annotated[
        list[str] | None,
        _doc(
            "dask.worker.removed: keys of scattered data held only there, which cannot be "
            "recomputed, at most events.max-graph-keys."
        ),
    ] = None
    lost_scattered_total: Annotated[
        int | None, _doc("dask.worker.removed: how many scattered keys were lost.")
    ] = None


class GraphTask(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """One task of a graph submission and the tasks it depends on."""

    key: Annotated[str, _doc("The task key as a string, as in dask.task.transition.")]
    prefix: Annotated[str, _doc("The task prefix name.")]
    group: Annotated[str, _doc("The task group name.")]
    dependencies: Annotated[list[str], _doc("Keys of the tasks whose results it takes.")]
    span_id: Annotated[str | None, _doc("The Dask span it belongs to (see dask.span).")]
    annotations: Annotated[
        dict[str, Any] | None,
        _doc(
            "Its annotations (retries, priority, resources, workers, user keys), made "
            "JSON-safe; a value over 200 characters of JSON is replaced by its text, cut."
        ),
    ]
    dependencies_omitted: Annotated[
        int, _doc("Dependencies left out of the list to keep the event within its size.")
    ] = 0


class GraphTasks(_Data):
    """The structure of a graph submission, in chunks.

    Follows the submission's ``dask.graph.updated``. Together the chunks list
    every task the submission touched (up to events.max-graph-tasks) with its
    dependencies, span and annotations; a consumer has the whole graph when it
    has chunks 1 to ``chunks`` of one ``stimulus_id``. Turned off with
    events.graph-structure.
    """

    client: Annotated[str, _doc("The client id, as on dask.graph.updated.")]
    stimulus_id: Annotated[
        str | None,
        _doc(
            "The submission's, as on its dask.graph.updated (made up in distributed's form, "
            "update-graph-<time>, where distributed gives plugins none)."
        ),
    ]
    chunk: Annotated[int, _doc("Which chunk this is, from 1.")]
    chunks: Annotated[int, _doc("How many chunks the submission's structure takes.")]
    tasks: Annotated[list[GraphTask], _doc("The tasks of this chunk.")]
    tasks_total: Annotated[int, _doc("Tasks the submission touched, as on dask.graph.updated.")]
    tasks_omitted: Annotated[
        int, _doc("Tasks past events.max-graph-tasks, listed in no chunk.")
    ] = 0


class SpanInfo(_Data):
    """A Dask span (``with distributed.span(...)``) seen for the first time.

    Parents are announced before their children, so consumers can build the
    tree as events arrive. Tasks outside any ``span`` block belong to a
    ``("default",)`` span.
    """

    span_id: Annotated[str, _doc("The span's id, as in a task's span_id.")]
    name: Annotated[list[str], _doc("The span's name: the names of the nested blocks.")]
    parent_id: Annotated[str | None, _doc("The enclosing span's id; null for a root span.")]


class WorkerStatus(_Data):
    """A worker's status changed: paused for memory, running again, closing gracefully."""

    address: Annotated[str, _doc("The worker's address.")]
    status: Annotated[str, _doc("Its status now: running, paused, closing_gracefully, ...")]
    previous: Annotated[str | None, _doc("Its status before.")]
    stimulus_id: _StimulusId = None


class WorkerMetrics(_Data):
    """What the scheduler knows of one worker, every events.worker-metrics-interval.

    From the worker's last heartbeat and the scheduler's own state; memory as
    the dashboard shows it (distributed's ``MemoryState``).
    """

    address: Annotated[str, _doc("The worker's address.")]
    status: Annotated[str, _doc("Its status: running, paused, closing_gracefully, ...")]
    processing: Annotated[int, _doc("Tasks the scheduler has assigned to it.")]
    heartbeat: Annotated[
        float | None, _doc("When the worker measured this (seconds since the epoch, its clock).")
    ] = None
    memory_process: Annotated[int | None, _doc("Process memory (RSS), bytes.")] = None
    memory_managed: Annotated[
        int | None, _doc("Bytes of task results held in memory (the scheduler's view).")
    ] = None
    memory_unmanaged: Annotated[int | None, _doc("Process memory not held by results.")] = None
    memory_spilled: Annotated[int | None, _doc("Bytes of results spilled to disk.")] = None
    memory_limit: Annotated[int | None, _doc("Memory limit in bytes (0: none).")] = None
    cpu: Annotated[float | None, _doc("CPU use in percent of one core.")] = None
    executing: Annotated[int | None, _doc("Tasks executing on the worker.")] = None
    ready: Annotated[int | None, _doc("Tasks ready to run, waiting for a thread.")] = None
    transfers_incoming: Annotated[int | None, _doc("Transfers from other workers in flight.")] = (
        None
    )
    transfers_incoming_bytes: Annotated[int | None, _doc("Bytes of those transfers.")] = None
    transfers_outgoing: Annotated[int | None, _doc("Transfers to other workers in flight.")] = None
    transfers_outgoing_bytes: Annotated[int | None, _doc("Bytes of those transfers.")] = None
    event_loop_interval: Annotated[
        float | None,
        _doc("Observed seconds between the worker's event-loop ticks: high means blocked."),
    ] = None


class ClientInfo(_Data):
    """A client connected or disconnected."""

    client: Annotated[str, _doc("The client id.")]


class Versions(_Data):
    """Versions of the packages on the scheduler."""

    dask: str
    distributed: str
    dask_eventbus: str
    event_schema: Annotated[
        str | None, _doc("The version of the event format it emits (from 1.1 on).")
    ] = None


class SchedulerInfo(_Data):
    """The scheduler started (the event bus started on it), is closing, or restarted."""

    scheduler_id: Annotated[str, _doc("The scheduler's id, unique per scheduler instance.")]
    address: Annotated[str | None, _doc("The scheduler's address.")]
    versions: Annotated[Versions, _doc("dask, distributed and dask-eventbus versions.")]
    workers: Annotated[int | None, _doc("Workers connected at that moment.")] = None


class LogMessage(_Data):
    """An event logged with Scheduler.log_event or Client.log_event (and distributed's own)."""

    topic: Annotated[str, _doc("The topic it was logged under.")]
    message: Annotated[Any, _doc("The message, made JSON-safe (unknown objects as text).")]


class Dropped(_Data):
    """Events were dropped: the queue had no room, the broker refused them, or
    the spool they were kept in was damaged.

    The dropped events had sequence numbers first_sequence to last_sequence;
    this event takes last_sequence itself, so the gap before it is explained
    by it.
    """

    count: Annotated[int, _doc("How many events were dropped.")]
    first_sequence: Annotated[int, _doc("Sequence number of the first dropped event.")]
    last_sequence: Annotated[int, _doc("Sequence number of the last dropped event.")]
    policy: Annotated[
        str,
        _doc(
            "Why: the overflow policy that dropped them (drop-oldest, drop-newest), "
            "error: a batch that could not be published at all (a bug; see the log), or "
            "refused: the broker refused them for good (an HTTP 4xx answer, say), or "
            "spool-corrupt: the spool on disk that held them was damaged."
        ),
    ]


class Oversized(_Data):
    """An event too large to publish, sent in its place.

    It keeps the replaced event's id, time, sequence and subject (cut to
    1,000 characters), so the sequence has no gap; its data says what was
    left out. Brokers refuse
    records over a size limit (Kafka's is 1 MB by default), and a refused
    event would be retried forever, holding back every event after it.
    """

    type: Annotated[str, _doc("The type of the event it replaces.")]
    size: Annotated[int, _doc("Size of that event's JSON, in bytes.")]
    limit: Annotated[int, _doc("eventbus.events.max-event-bytes when it was replaced.")]


class Probe(_Data):
    """Published by ``dask-eventbus check`` to test a backend, never by schedulers."""

    probe_id: Annotated[str, _doc("Random id of this check.")]
    host: Annotated[str, _doc("Host the check ran on.")]
    dask_eventbus: Annotated[str, _doc("dask-eventbus version of the check.")]


DATA_TYPES: dict[str, type[_Data]] = {
    TASK_TRANSITION: TaskTransition,
    GRAPH_UPDATED: GraphUpdated,
    WORKER_ADDED: WorkerInfo,
    WORKER_REMOVED: WorkerInfo,
    CLIENT_ADDED: ClientInfo,
    CLIENT_REMOVED: ClientInfo,
    SCHEDULER_STARTED: SchedulerInfo,
    SCHEDULER_CLOSING: SchedulerInfo,
    SCHEDULER_RESTARTED: SchedulerInfo,
    LOG: LogMessage,
    DROPPED: Dropped,
    OVERSIZED: Oversized,
    PROBE: Probe,
    GRAPH_TASKS: GraphTasks,
    SPAN: SpanInfo,
    WORKER_STATUS: WorkerStatus,
    WORKER_METRICS: WorkerMetrics,
}
EVENT_TYPES: tuple[str, ...] = tuple(DATA_TYPES)


# ---------------------------------------------------------------- JSON safety


def safe_text(obj: object) -> str:
    """``str(obj)``, falling back to its repr and then its type name."""
    for render in (str, repr):
        try:
            return render(obj)
        except Exception:
            pass
    return f"<unprintable {type(obj).__name__}>"


def key_to_str(key: object) -> str:
    """A stable string for any Dask key: str, bytes, int, float or nested tuples."""
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    if isinstance(key, list):
        key = _as_tuple(key)
    return safe_text(key)


def _as_tuple(key: list[Any]) -> tuple[Any, ...]:
    # Tuple keys arrive as lists from msgpack (process mode); Dask keys never
    # contain lists, so turning them back is exact.
    return tuple(_as_tuple(part) if isinstance(part, list) else part for part in key)


def _enc_hook(obj: object) -> object:
    item = getattr(obj, "item", None)
    if callable(item):  # numpy scalars and 0-d arrays
        try:
            value = item()
            if isinstance(value, (bool, int, float, str)):
                return value
        except Exception:
            pass
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {safe_text(obj)}"
    return safe_text(obj)


_json_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_json_decoder = msgspec.json.Decoder(Event)


def jsonable(obj: object, depth: int = 0) -> Any:
    """A JSON-native copy of ``obj``: the slow path when direct encoding fails."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if depth > 64:
        return "<nested too deep>"
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {key_to_str(k): jsonable(v, depth + 1) for k, v in list(obj.items())}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in list(obj)]
    if isinstance(obj, msgspec.Struct):
        return jsonable(msgspec.structs.asdict(obj), depth + 1)
    return _enc_hook(obj)


def _encode(event: Event) -> bytes:
    try:
        return _json_encoder.encode(event)
    except Exception:
        # A value msgspec cannot encode even through the hook (e.g. nesting
        # deeper than its recursion limit): walk it in Python instead.
        safe = msgspec.structs.replace(event, data=jsonable(event.data))
        try:
            return _json_encoder.encode(safe)
        except Exception as exc:
            unencodable = msgspec.structs.replace(
                event, data={"unencodable": safe_text(exc)[:1000]}
            )
            return _json_encoder.encode(unencodable)


def rfc3339(timestamp: float) -> str:
    """``time`` of an event seen at ``timestamp``, exactly as its JSON body has it."""
    return _json_encoder.encode(datetime.fromtimestamp(timestamp, timezone.utc))[1:-1].decode()


def encode_many(events: list[Event]) -> list[bytes]:
    """Encode each event to its own body; one C call for the common case."""
    try:
        lines = _json_encoder.encode_lines(events).split(b"\n")
    except Exception:
        return [_encode(event) for event in events]
    lines.pop()  # after the last newline
    return lines


def _decode_event(body: bytes | str) -> Event:
    return _json_decoder.decode(body)


# ------------------------------------------------------------------- schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every event type: envelope plus its ``data``.

    Generated from the structs that encode events; the copy shipped as
    ``event-schema.json`` is checked against this by the test suite.
    """
    names = list(DATA_TYPES)
    data_types: list[type[_Data]] = list(dict.fromkeys(DATA_TYPES.values()))
    (envelope, *data_refs), components = msgspec.json.schema_components(
        [Event, *data_types], ref_template="#/$defs/{name}"
    )
    ref_of = dict(zip(data_types, data_refs, strict=True))
    envelope_schema = components["Event"]
    properties = envelope_schema["properties"]
    properties["specversion"] |= {"const": SPECVERSION}
    properties["datacontenttype"] |= {"const": DATA_CONTENT_TYPE}
    properties["time"] |= {"type": "string", "format": "date-time"}
    properties["sequence"] |= {"type": "string", "pattern": f"^[0-9]{{{SEQUENCE_DIGITS}}}$"}
    one_of = [
        {
            "title": name,
            "allOf": [
                envelope,
                {
                    "properties": {
                        "type": {"const": name},
                        "data": ref_of[DATA_TYPES[name]],
                    },
                    "required": ["data"],
                },
            ],
        }
        for name in names
    ]
    return _with_clean_descriptions(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://dask-eventbus.readthedocs.io/en/latest/_static/event-schema.json",
            "title": "dask-eventbus events (CloudEvents 1.0, structured JSON mode)",
            "oneOf": one_of,
            "$defs": components,
        }
    )


def _with_clean_descriptions(node: Any) -> Any:
    """``node`` with every ``description`` dedented and stripped.

    msgspec turns docstrings into descriptions verbatim before 0.23 and
    dedented from 0.23 on; cleaning them here makes the schema the same on
    every release, so only a change to the events themselves changes it.
    """
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _with_clean_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_with_clean_descriptions(item) for item in node]
    return node


def load_shipped_schema() -> dict[str, Any]:
    """The JSON Schema file that ships inside the package."""
    import json

    with open(SCHEMA_FILE) as f:
        result: dict[str, Any] = json.load(f)
    return result
