"""Generates the configuration and event reference pages from the package itself.

The configuration table is read from ``eventbus.yaml`` (each key's comment is
its documentation) and the event reference from the structs that encode
events (each field's description), so the docs cannot drift from either.
Both are written to ``docs/generated/`` when Sphinx starts.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from pathlib import Path
from typing import Any

from dask_eventbus import config as eventbus_config
from dask_eventbus import events as ev
from dask_eventbus import records as rec
from dask_eventbus.messages import build_messages
from dask_eventbus.normalize import Normalizer

_YAML_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[\w-]+):\s*(?P<rest>.*)$")


def config_entries(path: str = eventbus_config.DEFAULTS_FILE) -> list[tuple[str, str, str]]:
    """``(dotted key, default, meaning)`` for every leaf of the defaults file."""
    # A comment block describes the keys right below it, up to a blank line.
    entries: list[tuple[str, str, str]] = []
    stack: list[str] = []
    comment: list[str] = []
    after_key = False
    for line in Path(path).read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if after_key:
                comment, after_key = [], False
            comment.append(stripped.lstrip("#").strip())
            continue
        if not stripped:
            comment, after_key = [], False
            continue
        match = _YAML_KEY.match(line)
        if match is None:
            continue
        depth = len(match["indent"]) // 2
        stack[depth:] = [match["key"]]
        value, _, inline = match["rest"].partition("  #")
        if value.strip():
            meaning = " ".join([*comment, inline.strip().lstrip("#").strip()]).strip()
            entries.append((".".join(stack), value.strip(), meaning))
            after_key = True
        else:
            comment, after_key = [], False
    return entries


def env_var(key: str) -> str:
    return "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split("."))


def _table(header: list[str], rows: list[list[str]], widths: str) -> str:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return "\n".join(lines) + "\n"


def config_reference() -> str:
    rows = [
        [f"``{key}``", f"``{default}``", f"{meaning or '(undocumented)'} (``{env_var(key)}``)"]
        for key, default, meaning in config_entries()
    ]
    return _table(["key", "default", "meaning (environment variable)"], rows, "30 15 55")


def _json_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        kinds = [_json_type(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(kinds)
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_json_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"object of {_json_type(schema['additionalProperties'])}"
    return str(kind or "any JSON")


def _fields_table(name: str, components: dict[str, Any]) -> str:
    schema = components[name]
    required = set(schema.get("required", []))
    rows = [
        [
            f"``{field}``",
            _json_type(spec),
            "always" if field in required else "when known",
            spec.get("description", "")
            or components.get(_json_type(spec), {}).get("description", ""),
        ]
        for field, spec in schema["properties"].items()
    ]
    return _table(["field", "type", "present", "meaning"], rows, "18 17 12 53")


EXAMPLE_TIME = 1795881814.9434078
_WORKER = "tcp://10.0.0.7:40331"
_CLIENT = "Client-43de44fa-eb45-11f1-9a73-02fc00000001"
_SCHEDULER = ("Scheduler-44a28577-5c09-4d00-b24a-08f9857895ec", "tcp://10.0.0.5:8786")
_VERSIONS = {
    "dask": "2026.8.0", "distributed": "2026.8.0", "dask_eventbus": "0.2.0", "event_schema": "1.1"
}  # fmt: skip
_KEY = "inc-8d48339083dd3174d12d8a943eb0532e"
_SPAN = "5e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"
EXAMPLES: dict[str, tuple[Any, ...]] = {
    ev.TASK_TRANSITION: (
        _KEY, "processing", "memory", "task-finished-1795881814.9434078", None,
        {"worker": _WORKER, "nbytes": 28, "typename": "int",
         "startstops": [{"action": "compute", "start": 1795881814.9382, "stop": 1795881814.9383}]},
        None,
    ),
    ev.GRAPH_UPDATED: (_CLIENT, [_KEY, "sum-1f0b"], ["sum-1f0b"], 1, "update-graph-1795881814.40"),
    ev.WORKER_ADDED: (
        {"address": _WORKER, "name": "worker-0", "host": "10.0.0.7", "nthreads": 4,
         "memory_limit": 8589934592, "resources": {"GPU": 1.0}},
        None,
    ),
    ev.WORKER_REMOVED: (
        {"address": _WORKER, "name": "worker-0"}, "handle-worker-cleanup-17958",
        {"expected": False, "processing": [_KEY], "processing_total": 1,
         "lost": ["sum-1f0b"], "lost_total": 1, "lost_scattered": [], "lost_scattered_total": 0},
    ),
    ev.CLIENT_ADDED: (_CLIENT,),
    ev.CLIENT_REMOVED: (_CLIENT,),
    ev.SCHEDULER_STARTED: (*_SCHEDULER, _VERSIONS, 0),
    ev.SCHEDULER_CLOSING: (*_SCHEDULER, _VERSIONS, 2),
    ev.SCHEDULER_RESTARTED: (*_SCHEDULER, _VERSIONS, 2),
    ev.LOG: ("all", {"action": "add-worker", "worker": _WORKER}),
    ev.DROPPED: (5000, 1201, 6200, "drop-oldest"),
    # A dask.log event whose payload is over max-event-bytes.
    ev.OVERSIZED: ("debug-dump", {"table": "x" * 1_200_000}),
    ev.PROBE: ("probe-5f71c8d7175a", "ops-laptop", "0.2.0"),
    ev.GRAPH_TASKS: (
        _CLIENT, "update-graph-1795881814.40", 1, 1,
        [_KEY, "sum-1f0b"], [0, 1], [_KEY], [_SPAN, _SPAN], {0: {"retries": 2, "priority": 5}},
        2, 0,
    ),
    ev.SPAN: (_SPAN, ["etl", "clean"], "9b0c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"),
    ev.WORKER_STATUS: (_WORKER, "paused", "running", "worker-status-change-1795881815.1"),
    ev.WORKER_METRICS: (
        _WORKER, "running", 8589934592, 4, (2147483648, 1610612736, 536870912, 0),
        {"time": 1795881814.5, "cpu": 312.5, "task_counts": {"executing": 4, "ready": 12},
         "transfer": {"incoming_count": 1, "incoming_bytes": 8388608,
                      "outgoing_count": 0, "outgoing_bytes": 0},
         "event_loop_interval": 0.021},
    ),
}  # fmt: skip


def example(type_: str, sequence: int = 42) -> dict[str, Any]:
    """A realistic event of ``type_``, encoded by the real encoder."""
    fields = EXAMPLES[type_]
    if type_ == ev.TASK_TRANSITION:
        key, start, finish, stimulus, worker, extra, group = fields
        record = rec.TransitionRecord(
            sequence,
            EXAMPLE_TIME,
            key,
            start,
            finish,
            stimulus,
            worker=worker,
            extra=extra,
            group=group,
        )  # fmt: skip
    elif type_ == ev.OVERSIZED:
        record = rec.LogRecord(sequence, EXAMPLE_TIME, *fields)
    else:
        record = rec.RECORD_TYPES[type_](sequence, EXAMPLE_TIME, *fields)
    normalizer = Normalizer(f"dask://scheduler-host/{_SCHEDULER[0]}", "5f71c8d7175a")
    (message,) = build_messages(normalizer, [record])
    result: dict[str, Any] = json.loads(message.body)
    return result


def events_reference() -> str:
    types = list(dict.fromkeys(ev.DATA_TYPES.values()))
    # The shipped schema's definitions, whose descriptions are cleaned the same
    # way on every msgspec release, so the tables do not depend on it either.
    components = ev.json_schema()["$defs"]
    parts = ["Envelope\n--------\n", _fields_table("Event", components), ""]
    for cls in types:
        names = [t for t, c in ev.DATA_TYPES.items() if c is cls]
        title = ", ".join(f"``{n}``" for n in names)
        parts += [title, "-" * len(title), "", inspect.cleandoc(cls.__doc__ or ""), ""]
        parts += [_fields_table(cls.__name__, components), ""]
        body = json.dumps(example(names[0]), indent=2)
        parts += [".. code-block:: json", "", *("   " + line for line in body.splitlines()), ""]
    parts += [
        "Nested objects",
        "--------------",
        "",
        "``StartStop`` (in ``startstops``)",
        "",
        _fields_table("StartStop", components),
        "",
        "``Versions`` (in ``versions``)",
        "",
        _fields_table("Versions", components),
        "",
        "``GraphTask`` (in ``dask.graph.tasks``'s ``tasks``)",
        "",
        _fields_table("GraphTask", components),
    ]
    return "\n".join(parts) + "\n"


def write_generated(docs_dir: Path) -> None:
    out = docs_dir / "generated"
    out.mkdir(exist_ok=True)
    (out / "config-reference.rst").write_text(config_reference())
    (out / "events-reference.rst").write_text(events_reference())


if __name__ == "__main__":  # pragma: no cover - manual use
    write_generated(Path(__file__).resolve().parent.parent)
    print("written", time.ctime())
