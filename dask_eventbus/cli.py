"""The ``dask-eventbus`` command (also ``dask eventbus``): demo, tail, check, report,
config, spool."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
import dask.config
import yaml

from ._version import __version__
from .backends import Backend, Subscription, create_backend
from .backends.jsonl import JsonLinesBackend
from .config import ConfigError, load_settings, merge_defaults, redact_url, redact_value
from .events import PROBE, SCHEDULER_CLOSING, Event
from .messages import build_messages
from .normalize import Normalizer
from .preload import parse_option_pairs
from .records import ProbeRecord

if TYPE_CHECKING:
    from .consume.inputs import EventsInput

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(command: F) -> F:
    """Report failures as one clear line instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except click.ClickException:
            raise
        except Exception as exc:
            if os.environ.get("DASK_EVENTBUS_TRACEBACK"):
                raise
            raise click.ClickException(
                redact_url(f"{type(exc).__name__}: {exc}")
                + " (set DASK_EVENTBUS_TRACEBACK=1 for the traceback)"
            ) from None

    return wrapper  # type: ignore[return-value]


backend_option = click.option(
    "--backend", "-b", default=None, help="Backend name; default: eventbus.backend from config."
)
options_option = click.option(
    "--option",
    "-o",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Backend option, repeatable; overrides eventbus.backends.<name>.KEY.",
)


def _chosen_backend(backend: str | None, options: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    return backend or load_settings().backend, parse_option_pairs(options)


@click.group(name="eventbus", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dask-eventbus")
def main() -> None:
    """Stream Dask scheduler events to message brokers as CloudEvents.

    The backend and its options come from Dask config (eventbus.*, e.g.
    DASK_EVENTBUS__BACKEND=redis) unless --backend/--option say otherwise.

    \b
    Examples:
      dask-eventbus demo
      dask-eventbus tail --from-beginning
      dask-eventbus check --backend redis -o url=redis://localhost:6379/0
      dask-eventbus report dask-events.jsonl -o report.html
      dask-eventbus config
    """


# ------------------------------------------------------------------ demo


def _inc(x: int) -> int:
    return x + 1


def _add(x: int, y: int) -> int:
    return x + y


def _fail(x: int) -> int:
    raise ValueError(f"this task fails on purpose (input {x})")


@main.command()
@backend_option
@options_option
@_one_line_errors
def demo(backend: str | None, options: tuple[str, ...]) -> None:
    """Run a small real workload on a LocalCluster with the event bus.

    Starts a LocalCluster whose scheduler publishes through the configured
    backend (a dask-events.jsonl file here when nothing is configured), runs
    a graph with dependencies and one failing task, adds a second worker,
    shuts down, and summarises what was published and how to read it back.

    \b
    Examples:
      dask-eventbus demo
      dask-eventbus demo --backend redis -o url=redis://localhost:6379/0
    """
    from distributed import Client, LocalCluster

    from .plugin import EventBusPlugin

    name, backend_options = _chosen_backend(backend, options)
    plugin = EventBusPlugin(name, **backend_options)
    destination = plugin.backend.destination()
    click.echo(f"Publishing to: {name} ({destination})")
    for noisy in ("distributed", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    with _subscribe(name, backend_options) as events:
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=2,
                processes=False,
                dashboard_address=None,
                scheduler_kwargs={"plugins": [plugin]},
            ) as cluster,
            Client(cluster) as client,
        ):
            a = client.submit(_inc, 1, key="demo-a")
            b = client.submit(_inc, a, key="demo-b")
            total = client.submit(_add, a, b, key="demo-total")
            failing = client.submit(_fail, total, key="demo-fails-on-purpose")
            click.echo(f"Computed demo-total = {total.result()}")
            click.echo(f"A task failed on purpose: {failing.exception()}")
            cluster.scale(2)
            client.wait_for_workers(2)
            results = client.gather(
                client.map(_inc, range(10), key=[f"demo-map-{i}" for i in range(10)])
            )
            click.echo(f"A second worker joined; ran 10 more tasks: {results}")
            del a, b, total, failing
        received = _read_until_closing(events, timeout=30.0)

    stats = plugin.stats()
    click.echo(
        f"\nThe scheduler published {stats['published']} events "
        f"({stats['dropped']} dropped, {stats['undelivered']} undelivered) to {destination}:"
    )
    for type_, count in sorted(Counter(e.type for e in received).items()):
        click.echo(f"  {count:6d}  {type_}")
    hint = " ".join(f"-o {pair}" for pair in options)
    backend_flag = f" --backend {name}" if backend else ""
    click.echo(
        "\nRead them back:\n"
        f"  dask-eventbus tail --from-beginning{backend_flag}{' ' + hint if hint else ''}"
    )
    if isinstance(plugin.backend, JsonLinesBackend):
        click.echo(f"  jq -c '{{type, subject, data}}' {plugin.backend.options.path}")


def _subscribe(name: str, options: dict[str, Any]) -> Subscription:
    from . import subscribe

    return subscribe(name, **options)


def _read_until_closing(events: Subscription, timeout: float) -> list[Event]:
    received: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = events.poll(timeout=0.5)
        if event is not None:
            received.append(event)
            if event.type == SCHEDULER_CLOSING:
                break
    return received


# ------------------------------------------------------------------ tail


def _worker_numbers(data: dict[str, Any]) -> str:
    from dask.utils import format_bytes

    parts = []
    if data.get("memory_process") is not None:
        memory = f"memory {format_bytes(data['memory_process'])}"
        if data.get("memory_limit"):
            memory += f" of {format_bytes(data['memory_limit'])}"
        if data.get("memory_spilled"):
            memory += f" ({format_bytes(data['memory_spilled'])} spilled)"
        parts.append(memory)
    if data.get("cpu") is not None:
        parts.append(f"cpu {data['cpu']:.0f}%")
    parts.append(f"executing {data.get('executing')} ready {data.get('ready')}")
    parts.append(f"processing {data.get('processing')}")
    return ", ".join(parts)


def format_event(event: Event) -> str:
    """One readable line for an event."""
    data = event.data if isinstance(event.data, dict) else {}
    clock = event.time.strftime("%H:%M:%S.%f")[:-3]
    head = f"{clock} #{event.sequence_number:<6d} {event.type:<26}"
    if event.type == "dask.task.transition":
        text = f"{data.get('key')}  {data.get('start')} -> {data.get('finish')}"
        if data.get("worker"):
            text += f"  on {data['worker']}"
        if data.get("nbytes") is not None:
            text += f"  ({data['nbytes']} bytes {data.get('typename', '')})".rstrip()
        if data.get("exception"):
            text += f"  {data['exception'].splitlines()[0][:200]}"
    elif event.type in ("dask.worker.added", "dask.worker.removed"):
        text = f"{data.get('address')}  name={data.get('name')} nthreads={data.get('nthreads')}"
        if data.get("expected") is not None:
            text += f"  expected={data['expected']}"
        if data.get("processing_total"):
            text += f"  was running {data['processing_total']}: {', '.join(data['processing'][:3])}"
    elif event.type == "dask.worker.status":
        text = f"{data.get('address')}  {data.get('previous')} -> {data.get('status')}"
    elif event.type == "dask.worker.metrics":
        text = f"{data.get('address')}  {data.get('status')}  {_worker_numbers(data)}"
    elif event.type == "dask.graph.tasks":
        text = (
            f"{data.get('client')}  chunk {data.get('chunk')}/{data.get('chunks')}: "
            f"{len(data.get('tasks') or [])} of {data.get('tasks_total')} tasks"
        )
    elif event.type == "dask.span":
        name = " / ".join(str(part) for part in data.get("name") or [])
        text = f"{name}  {data.get('span_id')}"
        text += f" in {data['parent_id']}" if data.get("parent_id") else ""
    elif event.type == "dask.graph.updated":
        keys = ", ".join(data.get("keys", [])[:3])
        more = data.get("keys_total", 0) - min(3, len(data.get("keys", [])))
        text = f"{data.get('tasks')} tasks from {data.get('client')}: {keys}"
        text += f" (+{more} more)" if more > 0 else ""
    elif event.type == "dask.log":
        message = json.dumps(data.get("message"), default=str)
        text = f"{data.get('topic')}: {message[:200]}"
    elif event.type == "dask.eventbus.dropped":
        text = (
            f"{data.get('count')} events dropped (sequence {data.get('first_sequence')}"
            f"..{data.get('last_sequence')}, {data.get('policy')})"
        )
    else:
        text = event.subject or ""
    return f"{head} {text}"


@main.command()
@backend_option
@options_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw CloudEvents JSON.")
@click.option(
    "--type", "-t", "types", multiple=True, metavar="PATTERN", help="Only these types (glob)."
)
@click.option("--from-beginning", is_flag=True, help="Replay what the backend still holds.")
@click.option("--count", "-n", type=int, default=None, help="Stop after this many events.")
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Stop when no event arrived for this long.",
)
@_one_line_errors
def tail(
    backend: str | None,
    options: tuple[str, ...],
    as_json: bool,
    types: tuple[str, ...],
    from_beginning: bool,
    count: int | None,
    idle_timeout: float | None,
) -> None:
    """Print events as they arrive, one line each. Ctrl-C stops.

    \b
    Examples:
      dask-eventbus tail
      dask-eventbus tail --from-beginning --type 'dask.task.*'
      dask-eventbus tail --json --type dask.worker.added | jq .data
      dask-eventbus tail -b kafka -o config.bootstrap.servers=broker:9092 --from-beginning
    """
    from . import subscribe

    name, backend_options = _chosen_backend(backend, options)
    shown = 0
    try:
        with subscribe(
            name, from_beginning=from_beginning, types=list(types) or None, **backend_options
        ) as events:
            while count is None or shown < count:
                event = events.poll(timeout=idle_timeout)
                if event is None:
                    break
                line = event.to_json().decode() if as_json else format_event(event)
                click.echo(line)
                shown += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # piped into head and the reader went away
        sys.stderr.close()


# ------------------------------------------------------------------ check


class CheckFailed(click.ClickException):
    exit_code = 1


def _step(what: str, action: Callable[[], Any], backend: Backend) -> Any:
    click.echo(f"  {what} ... ", nl=False)
    started = time.perf_counter()
    try:
        result = action()
    except Exception as exc:
        click.echo("failed")
        raise CheckFailed(backend.explain(exc)) from None
    click.echo(f"ok ({(time.perf_counter() - started) * 1000:.0f} ms)")
    return result


@main.command()
@backend_option
@options_option
@click.option("--timeout", type=float, default=15.0, show_default=True, metavar="SECONDS")
@_one_line_errors
def check(backend: str | None, options: tuple[str, ...], timeout: float) -> None:
    """Publish a probe event through the backend and read it back.

    Exits 0 only when the round trip worked (for a publish-only backend: when
    the probe was acknowledged); otherwise says what failed and how to fix it.

    \b
    Examples:
      dask-eventbus check
      dask-eventbus check --backend rabbitmq -o url=amqp://guest:guest@localhost:5672/
    """
    name, backend_options = _chosen_backend(backend, options)
    settings = load_settings()
    instance = create_backend(name, backend_options, settings.backends)
    click.echo(f"Checking the {name} backend: {instance.destination()}")
    probe_id = f"probe-{uuid.uuid4().hex[:12]}"
    host = socket.gethostname()
    normalizer = Normalizer(f"dask-eventbus-check://{host}", probe_id)
    messages = build_messages(
        normalizer, [ProbeRecord(1, time.time(), probe_id, host, __version__)]
    )

    if not instance.readable:
        try:
            _step("connecting", instance.open, instance)
            _step("publishing a probe event", lambda: instance.send(messages), instance)
        finally:
            instance.close()
        click.echo(
            f"OK: the probe was published to {name} and acknowledged. The {name} backend "
            "is publish-only, so it was not read back: look for the probe "
            f"(type {PROBE}, subject {probe_id}) where the backend delivers."
        )
        return
    subscription: Subscription = _step("subscribing", lambda: instance.subscribe(), instance)
    subscription.set_types([PROBE])
    try:
        _step("connecting", instance.open, instance)
        _step("publishing a probe event", lambda: instance.send(messages), instance)

        def read_back() -> Event:
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                event = subscription.poll(timeout=remaining)
                if event is not None and event.subject == probe_id:
                    return event
            raise TimeoutError(f"the probe was published but not read back within {timeout:g}s")

        _step("reading it back", read_back, instance)
    finally:
        subscription.close()
        instance.close()
    click.echo(f"OK: events published to {name} can be read back.")


# ------------------------------------------------------------------ report


class Moment(click.ParamType):
    """An ISO 8601 date and time; UTC unless it has an offset."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        text = value.strip()
        try:
            # Python 3.10's fromisoformat does not take "Z".
            return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            self.fail(
                f"{value!r} is not an ISO 8601 time; e.g. 2026-12-01T14:30:00Z "
                "or '2026-12-01 15:30+01:00' (UTC unless an offset is given)",
                param,
                ctx,
            )


# Options every consumer command (report, archive, otel, top) spells alike.
source_option = click.option(
    "--source", "source", default=None, help="Only this scheduler's events (its source)."
)
since_option = click.option(
    "--since", type=Moment(), default=None, help="Only events at or after this time."
)
until_option = click.option(
    "--until", type=Moment(), default=None, help="Only events at or before this time."
)
idle_timeout_option = click.option(
    "--idle-timeout",
    type=float,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Reading a backend: the end of the events is when none arrived for this long.",
)


def _events_input(
    input_file: str | None,
    backend: str | None,
    options: tuple[str, ...],
    *,
    follow: bool = False,
    from_beginning: bool = True,
    idle_timeout: float | None = None,
    window: dict[str, Any] | None = None,
) -> tuple[EventsInput, str | None]:
    """Where a consumer command reads: SOURCE (a file, '-', or with ``window``
    a history database), else the configured or given backend (a ``jsonl``
    backend as its file). Returns the input and the file or URL read, if any."""
    from .consume.inputs import BackendInput, FileInput
    from .history.database import is_database_url
    from .history.queries import HistoryInput

    if input_file is not None and (backend or options):
        raise click.UsageError("give either SOURCE or --backend/--option, not both")
    if input_file is None:
        name, backend_options = _chosen_backend(backend, options)
        instance = create_backend(name, backend_options, load_settings().backends)
        if not isinstance(instance, JsonLinesBackend):
            reading = BackendInput(
                instance, from_beginning=from_beginning, idle_timeout=idle_timeout
            )
            return reading, None
        input_file = instance.path
    if is_database_url(input_file):
        if window is None:
            raise click.UsageError("SOURCE must be an events file here, not a database")
        return HistoryInput(input_file, **window), input_file
    if input_file != "-" and not os.path.isfile(input_file):
        raise click.ClickException(f"no such events file: {input_file}")
    return FileInput(input_file, follow=follow), input_file


@main.command()
@click.argument("input_file", metavar="[SOURCE]", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--output",
    "-o",
    default=None,
    metavar="PATH",
    help="Where to write the report ('-': standard output). "
    "Default: report.html, or standard output for --format json.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["html", "json"]),
    default="html",
    show_default=True,
    help="A self-contained HTML page, or the JSON summary.",
)
@source_option
@since_option
@until_option
@backend_option
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Backend option, repeatable, as for tail (no short form here: -o is the output).",
)
@idle_timeout_option
@_one_line_errors
def report(
    input_file: str | None,
    output: str | None,
    output_format: str,
    source: str | None,
    since: datetime | None,
    until: datetime | None,
    backend: str | None,
    options: tuple[str, ...],
    idle_timeout: float,
) -> None:
    """Make a report of what happened on a cluster from its events.

    SOURCE is a JSON Lines file of events (gzipped or not; '-' reads standard
    input) or a history database that `dask-eventbus archive` wrote
    (postgresql://... or sqlite:///PATH); without it the events are read
    from the beginning of the configured backend (or --backend with
    --option, as for tail) until it has no more. Bad lines are counted and
    skipped. Several schedulers in one input give one report each, with a
    chooser; --source picks one.

    \b
    Examples:
      dask-eventbus report dask-events.jsonl
      dask-eventbus report events-2026-12-01.jsonl.gz -o run.html --since 2026-12-01T14:00Z
      dask-eventbus report dask-events.jsonl --format json | jq .tasks
      cat monday.jsonl.gz tuesday.jsonl.gz | dask-eventbus report - -o week.html
      dask-eventbus report -b redis --option url=redis://localhost:6379/0 -o run.html
      dask-eventbus report sqlite:///history.db --source tcp://10.0.0.5:8786 -o run.html
    """
    from .consume.inputs import FileInput, bodies, describe_size
    from .report import ReportBuilder
    from .report.progress import Progress

    if output_format == "html":
        from .report.html import require_bokeh

        try:
            require_bokeh()
        except ImportError as exc:
            raise click.ClickException(str(exc)) from None
    events_input, read = _events_input(
        input_file,
        backend,
        options,
        idle_timeout=idle_timeout,
        window={"since": since, "until": until, "source": source},
    )
    size = describe_size(read) if read is not None and isinstance(events_input, FileInput) else None

    def warn(message: str) -> None:
        # Over the progress line, which is redrawn below it.
        click.echo(("\r\x1b[K" if progress.enabled else "") + f"Warning: {message}", err=True)

    builder = ReportBuilder(source=source, since=since, until=until, warn=warn)
    progress = Progress(
        sys.stderr,
        lambda: builder.read,
        lambda: (events_input.position or 0) / size if size else None,
    )
    try:
        with contextlib.closing(events_input):  # the file or subscription, even on Ctrl-C
            for body in bodies(events_input):
                if body.strip():
                    builder.add_json(body)
                progress.update()
    finally:
        progress.close()
    try:
        made = builder.report()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None

    if output is None:
        output = "-" if output_format == "json" else "report.html"
    if output_format == "json":
        text = json.dumps(made.summary(), indent=2) + "\n"
    else:
        text = made.to_html()
    if output == "-":
        click.echo(text, nl=False)
        return
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    click.echo(
        f"Wrote {output}: {sum(len(a.tasks) for a in made.aggregates):,} tasks, "
        f"{sum(a.events for a in made.aggregates):,} events from "
        f"{len(made.aggregates)} scheduler(s)",
        err=True,
    )


# ------------------------------------------------------------------ archive and history


@main.command()
@click.argument("input_file", metavar="[SOURCE]", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--to",
    "url",
    required=True,
    metavar="URL",
    help="The history database: postgresql://USER@HOST:PORT/DATABASE or sqlite:///PATH.",
)
@backend_option
@options_option
@click.option("--follow", "-f", is_flag=True, help="SOURCE file: wait for lines appended to it.")
@click.option("--from-beginning", is_flag=True, help="A backend: start with what it still holds.")
@source_option
@click.option(
    "--stale-after",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Mark a scheduler run that sent nothing for this long, and never said it "
    "closed, as crashed (its unfinished tasks too).",
)
@_one_line_errors
def archive(
    input_file: str | None,
    url: str,
    backend: str | None,
    options: tuple[str, ...],
    follow: bool,
    from_beginning: bool,
    source: str | None,
    stale_after: float | None,
) -> None:
    """Write events into a history database, each exactly once.

    SOURCE is a JSON Lines file of events (gzipped or not; '-' reads standard
    input), read to its end (with --follow: then waiting for more); without
    it, the configured backend (or --backend/--option, as for tail) is
    followed until interrupted. The database's schema is created or
    upgraded on start. Stopped or killed at any moment, archive started
    again carries on where its last transaction ended: no event is lost or
    stored twice. One archive per database; it reads any number of clusters.

    \b
    Examples:
      dask-eventbus archive dask-events.jsonl --to sqlite:///history.db
      dask-eventbus archive --to postgresql://dask@db:5432/history -b redis --from-beginning
      gunzip -c monday.jsonl.gz | dask-eventbus archive - --to sqlite:///history.db
    """
    from .history.archiver import Archiver, input_name
    from .history.database import ArchiveLocked, DatabaseRefused, connect

    events_input, read = _events_input(
        input_file, backend, options, follow=follow, from_beginning=from_beginning
    )
    name = None if read is None else input_name(read)

    def warn(message: str) -> None:
        click.echo(f"Warning: {message}", err=True)

    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.WARNING)
    try:
        archiver = Archiver(
            lambda: connect(url),
            events_input,
            input_name=name,
            source=source,
            stale_after=stale_after,
            warn=warn,
        )
        counts = archiver.run()
    except (ArchiveLocked, DatabaseRefused) as exc:
        events_input.close()
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        return
    click.echo(
        f"Archived {counts.archived:,} new events of {counts.read:,} read into "
        f"{redact_url(url)} in {counts.transactions:,} transactions",
        err=True,
    )


@main.command()
@click.argument("url", metavar="URL")
@click.argument("question", type=click.Choice(["runs", "failures", "prefixes", "workers"]))
@click.option("--since", type=Moment(), default=None, help="Only from this time on.")
@click.option("--until", type=Moment(), default=None, help="Only up to this time.")
@click.option("--source", "source", default=None, help="Only this scheduler's (its source).")
@click.option("--limit", type=int, default=50, show_default=True, help="Rows at most.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@_one_line_errors
def history(
    url: str,
    question: str,
    since: datetime | None,
    until: datetime | None,
    source: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Answer a question about past runs from a history database.

    \b
    QUESTION is one of:
      runs      scheduler runs: when, how they ended, tasks, erred, workers
      failures  tasks whose last outcome was an error: exception and cause
      prefixes  per task prefix: tasks, in memory, erred, compute seconds
      workers   workers that joined or left: when, why, what they were running

    \b
    Examples:
      dask-eventbus history sqlite:///history.db runs
      dask-eventbus history postgresql://dask@db/history failures --since 2026-12-01
      dask-eventbus history sqlite:///history.db prefixes --json | jq '.[0]'
    """
    from .history.database import connect
    from .history.queries import ANSWERS

    database = connect(url, migrate=False)
    try:
        rows = ANSWERS[question](
            database,
            since.timestamp() if since else None,
            until.timestamp() if until else None,
            source,
            limit,
        )
    finally:
        database.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no {question} in the history" + (" in that window" if since or until else ""))
        return
    columns = [c for c in rows[0] if c not in ("processing", "run")]
    table = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [min(60, max(len(c), *(len(r[i]) for r in table))) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for cells in table:
        click.echo("  ".join(v[:w].ljust(w) for v, w in zip(cells, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("\n", " ")


# ------------------------------------------------------------------ otel


@main.command()
@click.argument("input_file", metavar="[SOURCE]", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--endpoint",
    default=None,
    metavar="URL",
    help="OTLP/HTTP base URL (/v1/traces, /v1/logs appended); "
    "default: OTEL_EXPORTER_OTLP_ENDPOINT, then http://localhost:4318.",
)
@click.option(
    "--protocol", type=click.Choice(["http/protobuf", "http/json"]), default=None, help="Encoding."
)
@click.option("--service-name", default=None, help="service.name (default: dask).")
@source_option
@since_option
@until_option
@click.option(
    "--max-spans-per-trace", type=click.IntRange(min=10), default=10_000, show_default=True
)
@backend_option
@options_option
@idle_timeout_option
@_one_line_errors
def otel(
    input_file: str | None,
    endpoint: str | None,
    protocol: str | None,
    service_name: str | None,
    source: str | None,
    since: datetime | None,
    until: datetime | None,
    max_spans_per_trace: int,
    backend: str | None,
    options: tuple[str, ...],
    idle_timeout: float,
) -> None:
    """Send the traces of runs that already happened to an OpenTelemetry receiver.

    SOURCE is a JSON Lines file of events (gzipped or not; '-' reads standard
    input) or a history database (postgresql://... or sqlite:///PATH);
    without it the events are read from the beginning of the configured
    backend (or --backend/--option, as for tail) until it has no more. The
    mapping is the otlp backend's (see the OpenTelemetry page of the docs);
    OTEL_EXPORTER_OTLP_* variables set what the options do not.

    \b
    Examples:
      dask-eventbus otel dask-events.jsonl --endpoint http://collector:4318
      dask-eventbus otel events.jsonl.gz --since 2026-12-01T14:00Z --source tcp://10.0.0.5:8786
      OTEL_EXPORTER_OTLP_HEADERS=x-honeycomb-team=KEY dask-eventbus otel dask-events.jsonl \\
          --endpoint https://api.honeycomb.io
    """
    try:
        import httpx  # noqa: F401
        import opentelemetry.proto  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            f"dask-eventbus otel needs {exc.name}: pip install 'dask-eventbus[otlp]'"
        ) from None
    from .consume.inputs import bodies
    from .consume.reader import EventReader
    from .otel.export import OtlpRetry, settings_from_environment
    from .otel.mapping import TraceSettings
    from .otel.pipeline import OtelExport
    from .pacing import Backoff

    events_input, _ = _events_input(
        input_file,
        backend,
        options,
        idle_timeout=idle_timeout,
        window={"since": since, "until": until, "source": source},
    )

    def warn(message: str) -> None:
        click.echo(f"Warning: {message}", err=True)

    logging.basicConfig(format="%(levelname)s %(message)s", level=logging.WARNING)
    export = OtelExport(
        settings_from_environment(endpoint=endpoint, protocol=protocol),
        trace_settings=TraceSettings(max_spans_per_trace=max_spans_per_trace),
        service_name=service_name,
        reader=EventReader(
            source=source, since=since, until=until, warn=warn, consumer="the OTLP export"
        ),
    )
    backoff = Backoff(0.5, 30.0)

    def flush() -> None:
        while True:
            try:
                export.flush()
                backoff.reset()
                return
            except (OtlpRetry, httpx_errors()) as exc:
                wait = max(getattr(exc, "retry_after", None) or 0.0, backoff.next_delay())
                warn(f"{exc}; sending again in {wait:.1f}s")
                time.sleep(wait)

    try:
        with contextlib.closing(events_input):
            for count, body in enumerate(bodies(events_input), start=1):
                if body.strip():
                    export.take(body)
                if not count % 10_000:
                    export.collect()
                    flush()
        export.finish()
        flush()
    finally:
        export.close()
    counts = export.counts
    click.echo(
        f"Sent {counts.spans:,} spans ({counts.task_runs:,} task runs) and {counts.logs:,} "
        f"log records in {counts.requests:,} requests"
        + (f"; {counts.refused_requests} requests refused" if counts.refused_requests else "")
        + (
            f"; the receiver rejected {counts.rejected_spans:,} spans"
            if counts.rejected_spans
            else ""
        ),
        err=True,
    )
    if counts.refused_requests:
        raise click.ClickException(f"the receiver refused requests: {counts.refusals[-1]}")


def httpx_errors() -> type[Exception]:
    import httpx

    return httpx.TransportError


# ------------------------------------------------------------------ config


@main.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@_one_line_errors
def show_config(as_json: bool) -> None:
    """Print the effective eventbus config, secrets masked, and validate it.

    \b
    Examples:
      dask-eventbus config
      DASK_EVENTBUS__BACKEND=redis dask-eventbus config --json
    """
    merge_defaults()
    effective = redact_value("eventbus", dask.config.get("eventbus", default={}))
    if as_json:
        click.echo(json.dumps({"eventbus": effective}, indent=2, default=str))
    else:
        click.echo(yaml.safe_dump({"eventbus": effective}, sort_keys=False).rstrip())
    load_settings()


# ------------------------------------------------------------------ spool


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="milliseconds")


@main.command("spool")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--verify", is_flag=True, help="Read every record and check its checksums.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@_one_line_errors
def spool(path: str, verify: bool, as_json: bool) -> None:
    """Show what the spool directory PATH holds (eventbus.spool.path).

    Per source: the undelivered events' sequence ranges, count, bytes, oldest
    and newest event time; then damaged records, a torn write at the end (cut
    on the next start) and the quarantined parts. Safe to run while a
    scheduler uses the spool. Exits with status 1 when --verify finds a
    corrupt record.

    \b
    Examples:
      dask-eventbus spool /var/spool/dask-eventbus
      dask-eventbus spool /var/spool/dask-eventbus --verify --json
    """
    from .spool import inspect_spool

    found = inspect_spool(path, verify=verify)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        click.echo(
            f"{found['path']}: {found['events']} undelivered events, {found['bytes']} bytes "
            f"in {found['segments']} segments"
            + (f", in use by {found['owner']}" if found["owner"] else "")
        )
        for source, info in found["sources"].items():
            ranges = ", ".join(f"{a}-{b}" for a, b in info["ranges"])
            click.echo(
                f"  {source}: {info['events']} events, {info['bytes']} bytes, sequences "
                f"{ranges}, {_when(info['oldest'])} to {_when(info['newest'])}"
            )
        for item in found["damaged"]:
            known = (
                f", sequences {item['first_sequence']}-{item['last_sequence']} of {item['source']}"
                if "source" in item
                else ""
            )
            click.echo(
                f"  DAMAGED: segment {item['segment']} at {item['offset']}: "
                f"{item['reason']} ({item['bytes']} bytes{known})"
            )
        if found["torn"]:
            torn = found["torn"]
            click.echo(
                f"  torn write: {torn['bytes']} bytes at the end of segment {torn['segment']} "
                "(cut on the next start)"
            )
        for part in found["quarantined"]:
            click.echo(f"  quarantined: {part['file']} ({part['bytes']} bytes)")
        if verify:
            click.echo("verify: " + ("CORRUPT" if found["damaged"] else "every record checks out"))
    if verify and found["damaged"]:
        sys.exit(1)


# ------------------------------------------------------------------ top


@main.command()
@click.argument("input_file", metavar="[SOURCE]", required=False, type=click.Path(dir_okay=False))
@source_option
@click.option(
    "--speed",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="N",
    help="Replaying a file: N times as fast as it happened; 0 reads it at once.",
)
@click.option(
    "--follow", is_flag=True, help="Replaying a file: keep reading what is appended to it."
)
@backend_option
@options_option
@click.option(
    "--from-beginning", is_flag=True, help="Reading a backend: start with what it still holds."
)
@_one_line_errors
def top(
    input_file: str | None,
    source: str | None,
    speed: float,
    follow: bool,
    backend: str | None,
    options: tuple[str, ...],
    from_beginning: bool,
) -> None:
    """A live view of every cluster on the bus, in the terminal.

    SOURCE is a JSON Lines file of events, replayed (--speed paces it, space
    pauses, n steps); without it the configured backend (or --backend with
    --option, as for tail) is read live. Views: 1 Clusters, 2 Computations,
    3 Workers, 4 Failures, 5 Log; arrows or j/k move, Enter drills in, /
    filters, ? lists the keys, q quits.

    \b
    Examples:
      dask-eventbus top dask-events.jsonl --speed 10
      dask-eventbus top -b redis -o url=redis://localhost:6379/0
      dask-eventbus top --source dask://host/Scheduler-1234
    """
    try:
        import textual  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "dask-eventbus top needs Textual: pip install 'dask-eventbus[top]'"
        ) from None
    from .consume.inputs import BackendInput, FileInput
    from .top.app import TopApp
    from .top.ingest import Ingest
    from .top.model import TopModel

    if input_file is not None and (backend or options):
        raise click.UsageError("give either SOURCE or --backend/--option, not both")
    if input_file == "-":
        raise click.UsageError("top reads its keys from standard input: give the events as a file")
    live = input_file is None
    events_input: FileInput | BackendInput
    if input_file is None:
        name, backend_options = _chosen_backend(backend, options)
        instance = create_backend(name, backend_options, load_settings().backends)
        if isinstance(instance, JsonLinesBackend):
            if not os.path.isfile(instance.path):
                raise click.ClickException(
                    f"no events file yet: {instance.path} (start a scheduler with the plugin, "
                    "or give --backend)"
                )
            events_input = FileInput(instance.path, follow=True)
            describe = f"live from {instance.path}"
        else:
            events_input = BackendInput(instance, from_beginning=from_beginning, idle_timeout=None)
            describe = f"live from {instance.destination()}"
    else:
        if input_file != "-" and not os.path.isfile(input_file):
            raise click.ClickException(f"no such events file: {input_file}")
        events_input = FileInput(input_file, follow=follow)
        live = follow
        describe = input_file
    warnings: list[str] = []
    model = TopModel(source=source, live=live, warn=warnings.append)
    ingest = Ingest(model, events_input, speed=0.0 if live else speed)
    TopApp(model, ingest, describe=describe).run()
    for message in warnings:
        click.echo(f"Warning: {message}", err=True)
