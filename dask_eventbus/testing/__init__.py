"""Testing a backend: the conformance suite, a fault proxy, a real workload.

Subclass :class:`BackendConformance` in a test module of your own package
and run it with plain pytest; the built-in backends run the very same suite::

    from dask_eventbus.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend = "mybroker"
        options = {"url": "mybroker://127.0.0.1:7000"}

Needs pytest, and the ``test`` extra's jsonschema and cloudevents.
"""

from .broker import BrokerProcess, free_port
from .conformance import SECRET, BackendConformance, Target
from .faultproxy import FaultProxy, proxied_url
from .reading import publish_batches, read_events, read_raw, synthetic_messages, unique_name
from .workload import is_closing, run_workload

__all__ = [
    "SECRET",
    "BackendConformance",
    "BrokerProcess",
    "FaultProxy",
    "Target",
    "free_port",
    "is_closing",
    "proxied_url",
    "publish_batches",
    "read_events",
    "read_raw",
    "run_workload",
    "synthetic_messages",
    "unique_name",
]
