"""Shared pieces of the benchmarks: clusters, configurations, tables.

Every benchmark measures its configurations side by side in one process and
one run, alternating them, and prints a markdown table of medians and ratios
plus the command that made it. Wall-clock numbers on a shared 2-core machine
are noisy; the ratios are what to compare.

Plugin configurations are named on the command line:

* ``none``: no plugin; ``noop``: a plugin whose hooks do nothing;
* ``eventbus:<backend>``: EventBusPlugin on that backend with its options
  from ``--option <backend>.<key>=<value>`` (or Dask config);
  ``eventbus:<backend>+spool``: the same through a spool in a temporary
  directory (removed at exit);
* any baseline from a ``baseline_<name>.py`` module beside this file, whose
  ``BASELINES`` dict maps a configuration name to ``(backend, factory)``:
  the factory takes that backend's ``--option`` dict and returns a
  scheduler plugin (e.g. the seed document's synchronous pika plugin).
"""

from __future__ import annotations

import atexit
import importlib
import os
import pathlib
import shlex
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

sys.path.insert(0, str(pathlib.Path(__file__).parent))


class NoopPlugin(SchedulerPlugin):
    """Hooks that do nothing: the floor for any plugin."""

    name = "noop"

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        pass


Baseline = tuple[str, Callable[[dict[str, Any]], SchedulerPlugin]]


def _baselines() -> dict[str, Baseline]:
    found: dict[str, Baseline] = {}
    for path in sorted(pathlib.Path(__file__).parent.glob("baseline_*.py")):
        found.update(importlib.import_module(path.stem).BASELINES)
    return found


def parse_options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["redis.url=redis://x", "kafka.config={...}"]`` to per-backend dicts."""
    import yaml

    result: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        backend, _, key = name.partition(".")
        result.setdefault(backend, {})[key] = yaml.safe_load(value)
    return result


def default_jsonl_path(options: dict[str, dict[str, Any]]) -> None:
    """Unless the options name one, the jsonl backend writes to a folder of its
    own, removed when the benchmark exits."""
    workdir = tempfile.mkdtemp(prefix="dask-eventbus-bench-")
    atexit.register(shutil.rmtree, workdir, True)
    options.setdefault("jsonl", {}).setdefault("path", os.path.join(workdir, "events.jsonl"))


def make_plugin(config: str, options: dict[str, dict[str, Any]]) -> SchedulerPlugin | None:
    """The scheduler plugin a configuration name stands for (None: no plugin)."""
    if config == "none":
        return None
    if config == "noop":
        return NoopPlugin()
    if config.startswith("eventbus:"):
        from dask_eventbus import EventBusPlugin

        backend = config.split(":", 1)[1]
        if backend.endswith("+spool"):
            import dask.config

            backend = backend.removesuffix("+spool")
            spool = tempfile.mkdtemp(prefix="dask-eventbus-spool-")
            atexit.register(shutil.rmtree, spool, True)
            with dask.config.set({"eventbus.spool.path": spool}):
                return EventBusPlugin(backend, **options.get(backend, {}))
        return EventBusPlugin(backend, **options.get(backend, {}))
    baselines = _baselines()
    if config in baselines:
        backend, factory = baselines[config]
        return factory(options.get(backend, {}))
    known = ["none", "noop", "eventbus:<backend>[+spool]", *baselines]
    raise SystemExit(f"unknown configuration {config!r}; known: {', '.join(known)}")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)
