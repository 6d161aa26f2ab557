"""Backends: the contract, reading back, the registry, and one module per broker.

``contract`` holds what a backend implements (:class:`Backend`,
:class:`BackendOptions`) and what it receives (:class:`Message`);
``subscription`` the runtime for reading events back; ``registry`` finds
backends by name; ``tls`` the TLS block the network backends share;
``diagnosis`` the problems ``explain`` words for every backend.

The names below are loaded on first use (PEP 562): a publisher process
imports this package on its way to its backend's module and needs only what
that module imports (not the registry, say).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from .contract import (
        BATCH_CONTENT_TYPE,
        BATCH_ROUTING_KEY,
        Backend,
        BackendOptions,
        ContentMode,
        Message,
        NetworkOptions,
        Refused,
        SubscribeOptionError,
        SubscribeOptions,
        batch_body,
        in_content_mode,
    )
    from .diagnosis import Problem, ProblemKind
    from .registry import (
        BUILTIN_EXTRAS,
        ENTRY_POINT_GROUP,
        available_backends,
        create_backend,
        get_backend,
        register_backend,
    )
    from .subscription import (
        Delivery,
        ReconnectingSubscription,
        Subscription,
        decode_body,
        decode_delivery,
    )

# Public name -> the module that defines it.
_LAZY = {
    "BATCH_CONTENT_TYPE": "contract",
    "BATCH_ROUTING_KEY": "contract",
    "Backend": "contract",
    "BackendOptions": "contract",
    "ContentMode": "contract",
    "Message": "contract",
    "NetworkOptions": "contract",
    "Refused": "contract",
    "SubscribeOptionError": "contract",
    "SubscribeOptions": "contract",
    "batch_body": "contract",
    "in_content_mode": "contract",
    "Problem": "diagnosis",
    "ProblemKind": "diagnosis",
    "BUILTIN_EXTRAS": "registry",
    "ENTRY_POINT_GROUP": "registry",
    "available_backends": "registry",
    "create_backend": "registry",
    "get_backend": "registry",
    "register_backend": "registry",
    "Delivery": "subscription",
    "ReconnectingSubscription": "subscription",
    "Subscription": "subscription",
    "decode_body": "subscription",
    "decode_delivery": "subscription",
}

__all__ = [
    "BATCH_CONTENT_TYPE",
    "BATCH_ROUTING_KEY",
    "BUILTIN_EXTRAS",
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendOptions",
    "ContentMode",
    "Delivery",
    "Message",
    "NetworkOptions",
    "Problem",
    "ProblemKind",
    "ReconnectingSubscription",
    "Refused",
    "SubscribeOptionError",
    "SubscribeOptions",
    "Subscription",
    "available_backends",
    "batch_body",
    "create_backend",
    "decode_body",
    "decode_delivery",
    "get_backend",
    "in_content_mode",
    "register_backend",
]


__getattr__ = lazy_names(__name__, _LAZY)
