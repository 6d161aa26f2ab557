"""What client libraries log about a backend's connections, kept quiet.

The pipeline reports each failure once, explained, and summarises repeats.
Client libraries say the same again in their own words, often many times
(librdkafka every few seconds while a broker is down, pika half a dozen
ERROR records with tracebacks per failed attempt). Both helpers here keep
that at DEBUG, with the options' secrets masked, and leave visible only what
the library marks as the user's business:

- :class:`ClientLog` for libraries that hand their lines to a callback
  (librdkafka's ``logger``, nats-py's ``error_cb``);
- :class:`QuietLibrary` for libraries that log with :mod:`logging` (pika):
  what they log while the backend is calling them.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])


class ClientLog:
    """Takes a client library's log lines into ``log``: masked, at DEBUG
    unless ``visible(level, args)`` says the user must see it (then WARNING)."""

    def __init__(
        self,
        log: logging.Logger,
        library: str,
        mask: Callable[[str], str],
        visible: Callable[[int, tuple[Any, ...]], bool] = lambda level, args: False,
    ) -> None:
        self._log = log
        self._library = library
        self._mask = mask
        self._visible = visible

    def log(self, level: int, msg: str, *args: Any) -> None:
        """One line, as :meth:`logging.Logger.log` takes it (librdkafka calls this)."""
        try:
            text = self._mask(msg % args if args else msg)
        except Exception:
            return
        shown = level >= logging.WARNING and self._visible(level, args)
        self._log.log(logging.WARNING if shown else logging.DEBUG, "%s: %s", self._library, text)


class QuietLibrary(logging.Filter):
    """Keeps what the library ``name`` logs while a backend calls it at DEBUG.

    Use it as a decorator of the backend's methods, or a ``with`` block.
    Records the library emits on the calling thread meanwhile are dropped, or
    relabelled DEBUG when its logger is enabled for DEBUG; the library used
    elsewhere is untouched.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self._library = name
        self._inside = threading.local()
        for logger_name in list(logging.root.manager.loggerDict):
            if logger_name == name or logger_name.startswith(name + "."):
                logging.getLogger(logger_name).addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(self._inside, "depth", 0) or record.levelno <= logging.DEBUG:
            return True
        if not logging.getLogger(self._library).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True

    def __enter__(self) -> None:
        self._inside.depth = getattr(self._inside, "depth", 0) + 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._inside.depth -= 1

    def __call__(self, method: _F) -> _F:
        @functools.wraps(method)
        def quietly(*args: Any, **kwargs: Any) -> Any:
            with self:
                return method(*args, **kwargs)

        return quietly  # type: ignore[return-value]
