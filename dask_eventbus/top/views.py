"""What each view shows, as plain rows: computed from the model under its lock.

Kept apart from the widgets so that the rows are quick to build while the
ingest thread waits, and readable without a terminal.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.text import Text

from ..consume.state import WorkerSpell
from .model import Computation, FailureView, LogLine, TopModel, TopSource, worker_status

Row = tuple[str, tuple[Any, ...]]
"""A row's key and its cells."""

DONE, ERRED, RUNNING, LEFT = "█", "×", "▒", "·"  # noqa: RUF001


def short_source(source: str) -> str:
    """``dask://host/Scheduler-1234...`` -> ``host/Scheduler-1234...``, at most 24 characters."""
    text = source.removeprefix("dask://")
    return text if len(text) <= 24 else text[:11] + "…" + text[-12:]


def size(value: int | float | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(when))


def bar(done: int, erred: int, running: int, total: int, width: int) -> Text:
    """A progress bar that reads without colour: █ done, × erred, ▒ running, · left."""  # noqa: RUF002
    text = Text()
    if total <= 0:
        return text.append(LEFT * width, "dim")
    parts = []
    used = 0
    for count, glyph, style in (
        (done, DONE, "green"),
        (erred, ERRED, "bold red"),
        (running, RUNNING, "yellow"),
    ):
        cells = min(width - used, round(width * count / total))
        if count and not cells and used < width:
            cells = 1  # a failure is never rounded away
        parts.append((glyph * cells, style))
        used += cells
    for part in parts:
        text.append(*part)
    text.append(LEFT * (width - used), "dim")
    return text


def clusters(model: TopModel, now: float) -> list[Row]:
    rows = []
    for state in model.sources.values():
        status = state.status(now)
        style = {"running": "green", "closed": "dim", "silent": "yellow"}[status]
        health = []
        if state.gaps():
            health.append(f"{state.gaps()} lost")
        if state.dropped:
            health.append(f"{state.dropped} dropped")
        rows.append(
            (
                state.source,
                (
                    short_source(state.source),
                    Text(status, style),
                    len(state.live_workers()),
                    state.states["processing"],
                    state.states["memory"],
                    Text(str(state.states["erred"]), "bold red" if state.states["erred"] else ""),
                    f"{state.rate(now):,.0f}",
                    Text(", ".join(health) or "ok", "bold red" if health else "green"),
                ),
            )
        )
    return rows


CLUSTER_COLUMNS = ("cluster", "state", "workers", "running", "memory", "erred", "ev/s", "bus")


def _sources(model: TopModel, cluster: str | None) -> list[TopSource]:
    return [s for s in model.sources.values() if cluster is None or s.source == cluster]


def computations(model: TopModel, now: float, cluster: str | None) -> list[Row]:
    rows = []
    for state in _sources(model, cluster):
        for c in state.computations:
            rows.append((c, state))
    rows.sort(key=lambda item: item[0].submitted, reverse=True)
    result = []
    for c, _state in rows:
        prefixes = ", ".join(sorted(c.prefixes, key=lambda p: -c.prefixes[p].total))
        result.append(
            (
                computation_key(c),
                (
                    short_source(c.source),
                    prefixes[:18] or "-",
                    bar(c.done, c.erred, c.processing, c.total, 12),
                    f"{c.done + c.erred}/{c.total}",
                    Text(str(c.erred), "bold red") if c.erred else "",
                    duration(c.elapsed(now)),
                    _left(c, now),
                ),
            )
        )
    for state in _sources(model, cluster):
        folded = state.folded
        if folded.computations:
            # Finished computations no longer kept one by one, as totals.
            result.append(
                (
                    f"folded|{state.source}",
                    (
                        short_source(state.source),
                        f"{folded.computations:,} earlier",
                        bar(folded.done, folded.erred, 0, folded.tasks, 12),
                        f"{folded.done + folded.erred:,}/{folded.tasks:,}",
                        Text(f"{folded.erred:,}", "bold red") if folded.erred else "",
                        "",
                        "done",
                    ),
                )
            )
    return result


def _left(c: Computation, now: float) -> str:
    if c.finished is None:
        return duration(c.estimate(now))
    return "cancelled" if c.cancelled and not c.done and not c.erred else "done"


COMPUTATION_COLUMNS = ("cluster", "prefixes", "progress", "tasks", "err", "elapsed", "left")


def computation_key(c: Computation) -> str:
    return f"{c.source}#{c.number}"


def find_computation(model: TopModel, key: str) -> Computation | None:
    source, _, number = key.rpartition("#")
    state = model.sources.get(source)
    if state is None:
        return None
    return next((c for c in state.computations if str(c.number) == number), None)


def prefix_bars(c: Computation, now: float, width: int = 24) -> Text:
    """The computation's progress by prefix, one line each, like Dask's progress bar."""
    text = Text()
    text.append(
        f"{short_source(c.source)} #{c.number}  submitted {clock(c.submitted)}  "
        f"elapsed {duration(c.elapsed(now))}  "
        + ("finished" if c.finished is not None else f"left ~{duration(c.estimate(now))}")
        + "\n"
    )
    for prefix, p in sorted(c.prefixes.items(), key=lambda item: -item[1].total):
        text.append(f"{prefix[:16]:<16} ")
        text.append_text(bar(p.done, p.erred, p.processing, p.total, width))
        text.append(f" {p.done + p.erred:>5}/{p.total:<5}")
        if p.processing:
            text.append(f" {p.processing} running")
        if p.erred:
            text.append(f" {p.erred} erred", "bold red")
        text.append("\n")
    return text


def _executing(metrics: dict[str, Any] | None) -> Any:
    if not metrics:
        return "-"
    return metrics.get("executing", metrics.get("processing", "-"))


def workers(model: TopModel, cluster: str | None) -> list[Row]:
    rows = []
    for state in _sources(model, cluster):
        live = state.live_workers()
        departed = [w for w in state.workers if w.removed is not None]
        for spell in [*live, *reversed(departed)]:
            metrics = state.metrics.get(spell.address) if spell.removed is None else None
            status = worker_status(spell)
            style = {
                "running": "green",
                "paused": "bold yellow",
                "died": "bold red",
            }.get(status, "dim" if spell.removed is not None else "yellow")
            limit = (metrics or {}).get("memory_limit") or spell.memory_limit
            process = (metrics or {}).get("memory_process")
            memory = size(process) if process is not None else "-"
            if process is not None and limit:
                memory += f" {100 * process / limit:.0f}%"
            rows.append(
                (
                    f"{state.source}|{spell.address}|{spell.added}",
                    (
                        short_source(state.source),
                        _worker_name(spell),
                        Text(status, style),
                        memory,
                        size((metrics or {}).get("memory_spilled")) if metrics else "-",
                        _executing(metrics)
                        if spell.removed is None
                        else f"lost {spell.processing_total}",
                        spell.tasks,
                    ),
                )
            )
    return rows


WORKER_COLUMNS = ("cluster", "worker", "status", "memory", "spilled", "running", "done")


def _worker_name(spell: WorkerSpell) -> str:
    address = spell.address.split("://", 1)[-1]
    name = str(spell.name) if spell.name is not None else ""
    text = f"{name} {address}" if name and name not in address else address
    return text[:26]


def find_worker(model: TopModel, key: str) -> tuple[TopSource, WorkerSpell] | None:
    source, address, added = key.split("|")
    state = model.sources.get(source)
    if state is None:
        return None
    for spell in state.workers:
        if spell.address == address and str(spell.added) == added:
            return state, spell
    return None


def worker_detail(state: TopSource, spell: WorkerSpell) -> str:
    lines = [
        f"{spell.address}  ({short_source(state.source)})",
        f"name {spell.name}  threads {spell.nthreads}  memory limit {size(spell.memory_limit)}",
        f"status {worker_status(spell)}  tasks done {spell.tasks}  "
        f"compute {duration(spell.compute_seconds)}",
    ]
    if spell.added is not None:
        lines.append(f"joined {clock(spell.added)}")
    for when, previous, status in spell.statuses:
        lines.append(f"  {clock(when)}  {previous} -> {status}")
    metrics = state.metrics.get(spell.address)
    if metrics:
        lines.append(
            "memory: process {}, managed {}, unmanaged {}, spilled {}".format(
                *(
                    size(metrics.get(k))
                    for k in (
                        "memory_process",
                        "memory_managed",
                        "memory_unmanaged",
                        "memory_spilled",
                    )
                )
            )
        )
        lines.append(
            f"cpu {metrics.get('cpu', '-')}%  executing {metrics.get('executing', '-')}  "
            f"ready {metrics.get('ready', '-')}"
        )
    if spell.removed is not None:
        how = {True: "expected", False: "unexpectedly", None: ""}[spell.expected]
        lines.append(f"left {clock(spell.removed)} {how} ({spell.reason})")
        lines.append(
            f"was running {spell.processing_total} task(s): {', '.join(spell.processing[:20])}"
        )
        lines.append(f"results lost with it: {spell.lost_total}")
    return "\n".join(lines)


def failures(model: TopModel, cluster: str | None) -> list[Row]:
    rows = []
    for f in model.failures():
        if cluster is not None and f.source != cluster:
            continue
        rows.append(
            (
                failure_key(f),
                (
                    clock(f.time),
                    short_source(f.source),
                    f.key[:24],
                    "" if f.cause is None else f"← {f.cause}"[:20],
                    Text((f.exception or "?").splitlines()[0][:100], "red"),
                ),
            )
        )
    return rows


FAILURE_COLUMNS = ("time", "cluster", "task", "cause", "exception")


def failure_key(f: FailureView) -> str:
    return f"{f.source}|{f.key}|{f.time}"


def find_failure(model: TopModel, key: str) -> tuple[TopSource, FailureView] | None:
    source = key.partition("|")[0]
    state = model.sources.get(source)
    if state is None:
        return None
    for f in state.recent_failures:
        if failure_key(f) == key:
            return state, f
    return None


def failure_detail(state: TopSource, f: FailureView) -> str:
    lines = [
        f"{f.key}  failed at {clock(f.time)}"
        + (f" on {f.worker}" if f.worker else "")
        + f"  ({short_source(f.source)})",
        "",
        f.exception or "(no exception text)",
        "",
        f.traceback or "(no traceback in the event)",
    ]
    if f.cause is not None:
        lines += ["", f"failed because {f.cause} failed"]
    dependents = state.dependents(f.key)
    if dependents:
        lines += ["", f"{len(dependents)} dependent(s) failed with it:"]
        lines += [f"  {d.key}" for d in dependents[:50]]
    return "\n".join(lines)


def log_message(line: LogLine) -> str:
    message = line.message
    if isinstance(message, str):
        return message
    try:
        return json.dumps(message, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(message)


def log(model: TopModel, cluster: str | None, limit: int = 500) -> list[Row]:
    rows = []
    lines = list(model.log)[-limit:]
    for number, line in enumerate(reversed(lines)):
        if cluster is not None and line.source != cluster:
            continue
        rows.append(
            (
                f"{model.log_count - number}",
                (
                    clock(line.time),
                    short_source(line.source),
                    line.topic[:20],
                    log_message(line)[:200],
                ),
            )
        )
    return rows


LOG_COLUMNS = ("time", "cluster", "topic", "message")


def find_log(model: TopModel, key: str) -> LogLine | None:
    back = model.log_count - int(key)
    lines = model.log
    if 0 <= back < len(lines):
        return lines[len(lines) - 1 - back]
    return None


def matches(cells: tuple[Any, ...], needle: str) -> bool:
    """Whether any cell contains ``needle`` (case-insensitive)."""
    return any(needle in (c.plain if isinstance(c, Text) else str(c)).lower() for c in cells)
