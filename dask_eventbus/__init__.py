"""dask-eventbus: stream Dask scheduler events to message brokers as CloudEvents.

The public names are loaded on first use (PEP 562), not at import: the
publisher process imports ``dask_eventbus.process``, and with it this
package, and must not pay for ``distributed``, the plugin or the command
line. ``dask scheduler --preload dask_eventbus`` finds ``dask_setup`` all the
same, by attribute. Importing the package still merges the ``eventbus``
defaults into Dask's config, except in the publisher process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import config  # noqa: F401  (its import merges the defaults into Dask's config)
from ._lazy import lazy_names
from ._version import __version__

if TYPE_CHECKING:
    from .backends import (
        Backend,
        BackendOptions,
        Message,
        Subscription,
        available_backends,
        create_backend,
        get_backend,
        register_backend,
    )
    from .config import ConfigError, load_settings
    from .events import Event
    from .plugin import EventBusPlugin
    from .preload import dask_setup

# Public name -> the module that defines it.
_LAZY = {
    "Backend": "backends",
    "BackendOptions": "backends",
    "Message": "backends",
    "NetworkOptions": "backends",
    "SubscribeOptions": "backends",
    "SubscribeOptionError": "backends",
    "Subscription": "backends",
    "available_backends": "backends",
    "create_backend": "backends",
    "get_backend": "backends",
    "register_backend": "backends",
    "ConfigError": "config",
    "load_settings": "config",
    "Event": "events",
    "EventBusPlugin": "plugin",
    "dask_setup": "preload",
}

__all__ = [
    "Backend",
    "BackendOptions",
    "ConfigError",
    "Event",
    "EventBusPlugin",
    "Message",
    "NetworkOptions",
    "SubscribeOptionError",
    "SubscribeOptions",
    "Subscription",
    "__version__",
    "available_backends",
    "create_backend",
    "dask_setup",
    "get_backend",
    "load_settings",
    "register_backend",
    "subscribe",
]


__getattr__ = lazy_names(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def subscribe(
    backend: str | Backend | None = None,
    *,
    from_beginning: bool = False,
    types: Sequence[str] | None = None,
    **options: Any,
) -> Subscription:
    """Read events back from a backend, as :class:`Event` objects.

    ``backend`` and ``options`` work as for :class:`EventBusPlugin`: by
    default the configured backend with its configured options. Options of
    the backend's :attr:`~Backend.SubscribeOptions` go to its subscribe (for
    example ``group=`` for Redis consumer groups, ``bindings=`` for
    RabbitMQ), the rest are backend options. ``types`` keeps only events
    whose type matches one of these glob patterns.

    >>> with subscribe("jsonl", path="events.jsonl", from_beginning=True) as events:
    ...     for event in events:  # doctest: +SKIP
    ...         print(event.type, event.subject)
    """
    from .backends import Backend, create_backend, get_backend
    from .config import load_settings

    settings = load_settings()
    chosen = settings.backend if backend is None else backend
    if isinstance(chosen, Backend):
        instance, params = chosen, options
        accepted = _subscribe_option_names(type(chosen))
    else:
        accepted = _subscribe_option_names(get_backend(chosen))
        params = {k: v for k, v in options.items() if k.replace("_", "-") in accepted}
        backend_options = {k: v for k, v in options.items() if k not in params}
        instance = create_backend(chosen, backend_options, settings.backends)
    if types and "types" in accepted:
        params = {**params, "types": types}  # the backend filters on the broker, too
    subscription = instance.subscribe(from_beginning=from_beginning, **params)
    subscription.set_types(types)
    return subscription


def _subscribe_option_names(cls: type[Backend]) -> set[str]:
    """The subscribe options ``cls`` takes, as users write them."""
    import inspect

    import msgspec

    from .backends import Backend

    if cls.subscribe is not Backend.subscribe:  # written before SubscribeOptions
        parameters = inspect.signature(cls.subscribe).parameters
        return {name.replace("_", "-") for name in parameters if name != "self"}
    return {field.encode_name for field in msgspec.structs.fields(cls.SubscribeOptions)}
