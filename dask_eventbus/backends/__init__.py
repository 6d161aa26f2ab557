"""Backends: the contract, reading back, the registry, and one module per broker.

``contract`` holds what a backend implements (:class:`Backend`,
:class:`BackendOptions`) and what it receives (:class:`Message`);
``subscription`` the runtime for reading events back; ``registry`` finds
backends by name; ``tls`` the TLS block the network backends share;
``diagnosis`` the problems ``explain`` words for every backend.
"""

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
