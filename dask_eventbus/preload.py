"""``dask scheduler --preload dask_eventbus``: install the plugin from config.

``dask_setup`` is a click command, so preload arguments work::

    dask scheduler --preload dask_eventbus --eventbus-backend redis \\
        --eventbus-option url=redis://broker:6379/0 --eventbus-option stream=prod-events

Listing ``dask_eventbus`` under ``distributed.scheduler.preload`` installs it
on every scheduler that config reaches, ``LocalCluster`` included.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import click
import yaml
from distributed import Scheduler
from distributed.diagnostics.plugin import SchedulerPlugin

from .config import ConfigError
from .plugin import EventBusPlugin

logger = logging.getLogger("distributed.eventbus")


def parse_option_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``["url=redis://x", "maxlen=0", "config.linger.ms=5"]`` to backend options.

    Values stay strings (the backend's option types convert ``"0"`` or
    ``"true"``), so a password is never reinterpreted; a value written as a
    YAML list or mapping (``bindings=[a, b]``) is read as one. A dotted name
    sets one key of a mapping option: ``config.linger.ms=5`` sets
    ``config["linger.ms"]``.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"Invalid event bus option {name or '(empty)'!r}: expected KEY=VALUE")
        value: Any = text
        if text[:1] in ("[", "{"):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ConfigError(
                    f"Invalid event bus option {name!r}: its value is not a valid "
                    "YAML list or mapping"
                ) from None
        option, dot, key = name.partition(".")
        if dot:
            options.setdefault(option, {})[key] = value
        else:
            options[option] = value
    return options


class _Misconfigured(SchedulerPlugin):
    """Stands in for a plugin that could not be built, failing the scheduler's start.

    distributed logs and ignores exceptions raised by preloads, but not those
    raised by a plugin's ``start``: this is how a bad config stops the scheduler.
    """

    name = "eventbus"

    def __init__(self, error: ConfigError) -> None:
        self.error = error

    async def start(self, scheduler: Scheduler) -> None:
        raise self.error


@click.command(context_settings={"ignore_unknown_options": False})
@click.option(
    "--eventbus-backend",
    default=None,
    help="Backend name (overrides eventbus.backend).",
)
@click.option(
    "--eventbus-option",
    "eventbus_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Backend option, repeatable (overrides eventbus.backends.<name>.KEY).",
)
def dask_setup(
    server: Any, eventbus_backend: str | None, eventbus_options: tuple[str, ...]
) -> None:
    """Install EventBusPlugin on the scheduler this module is preloaded into."""
    if not isinstance(server, Scheduler):
        logger.warning(
            "dask_eventbus is a scheduler preload; ignoring it on %s",
            type(server).__name__,
        )
        return
    plugin: SchedulerPlugin
    try:
        plugin = EventBusPlugin(eventbus_backend, **parse_option_pairs(eventbus_options))
    except ConfigError as error:
        logger.error("dask-eventbus: %s", error)
        plugin = _Misconfigured(error)
    server.add_plugin(plugin)
