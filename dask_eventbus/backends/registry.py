"""Finding backends by name: registered in this process, or entry points.

First those registered with :func:`register_backend`, then entry points in
the group ``dask_eventbus.backends``: the built-in backends, declared by this
package, then those of every other installed package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..config import ConfigError
from .contract import Backend

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "dask_eventbus.backends"
DISTRIBUTION = "dask-eventbus"

# The pip extra that installs each built-in backend's client library.
BUILTIN_EXTRAS = {
    "kafka": "kafka",
    "rabbitmq": "rabbitmq",
    "kombu": "kombu",
    "redis": "redis",
    "nats": "nats",
    "webhook": "webhook",
    "otlp": "otlp",
}

_registered: dict[str, type[Backend]] = {}


def register_backend(name: str, cls: type[Backend]) -> None:
    """Make ``cls`` available as backend ``name`` in this process."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{cls!r} is not a subclass of dask_eventbus.Backend")
    _registered[name] = cls


def available_backends() -> list[str]:
    """Names of every backend registered or declared as an entry point."""
    from importlib.metadata import entry_points  # not needed where backends arrive pickled

    names = set(_registered)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def _declared(name: str) -> Iterator[EntryPoint]:
    """Entry points that may declare backend ``name``: this package's own
    first, whose metadata alone is read in well under a millisecond, rather
    than every installed package's (10 ms and more, on each plugin made)."""
    from importlib.metadata import PackageNotFoundError, distribution, entry_points

    with contextlib.suppress(PackageNotFoundError):
        yield from distribution(DISTRIBUTION).entry_points.select(
            group=ENTRY_POINT_GROUP, name=name
        )
    yield from entry_points(group=ENTRY_POINT_GROUP, name=name)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name``."""
    if name in _registered:
        return _registered[name]
    for ep in _declared(name):
        try:
            cls = ep.load()
        except ImportError as exc:
            extra = BUILTIN_EXTRAS.get(name)
            install = (
                f"pip install 'dask-eventbus[{extra}]'"
                if extra
                else f"install the package that provides {ep.value}"
            )
            raise ConfigError(
                f"The {name!r} event bus backend cannot be loaded: {exc}. To fix this: {install}"
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise ConfigError(
                f"Entry point {name!r} = {ep.value} in group {ENTRY_POINT_GROUP!r} "
                "is not a dask_eventbus.Backend subclass"
            )
        return cls
    raise ConfigError(
        f"Unknown event bus backend {name!r}. Available backends: {', '.join(available_backends())}"
    )


def create_backend(
    backend: str | Backend,
    options: Mapping[str, Any] | None = None,
    configured: Mapping[str, Mapping[str, Any]] | None = None,
) -> Backend:
    """A backend instance from a name (or an instance, returned as is), checked
    with :meth:`Backend.check`.

    ``configured`` holds the ``eventbus.backends`` config; its options for the
    named backend are the defaults that ``options`` override.
    """
    if isinstance(backend, Backend):
        if options:
            raise TypeError(
                "Backend options cannot be given together with a Backend instance; "
                "pass them to the backend's constructor instead"
            )
        backend.check()
        return backend
    if not isinstance(backend, str):
        raise ConfigError(
            f"Invalid event bus backend {backend!r}: expected a backend name "
            "or a dask_eventbus.Backend instance"
        )
    cls = get_backend(backend)
    merged: dict[str, Any] = {}
    for source in ((configured or {}).get(backend) or {}, options or {}):
        merged.update({key.replace("_", "-"): value for key, value in source.items()})
    made = cls(**merged)
    made.check()
    return made
