"""Process mode: publishing from a supervised child process.

Normalizing, encoding and above all the broker client cost CPU, and a thread
of the scheduler's process takes that CPU (and the GIL) from the scheduler.
In process mode the pipeline thread only packs batches of captured records
with msgpack and writes them to a child process (running
:func:`dask_eventbus.process.child.main`),
which runs the same :class:`~dask_eventbus.publisher.Publisher` and
acknowledges each batch once the broker has.

The parent keeps every batch until it is acknowledged. When the child dies
it starts a new one and sends the unacknowledged batches again, in order, so
delivery stays at least once across a crash. Batches leave the buffer as
soon as they are packed (compact bytes the garbage collector need not scan,
unlike the captured tuples), up to ``queue.max-events`` unacknowledged events;
beyond that the pipeline stops taking records, the buffer fills, and the
overflow policy applies as in thread mode.

One module a job: :mod:`.frames` what travels between the two processes
(the frame protocol, and delivery statistics in and out of frames),
:mod:`.supervisor` the parent's side (:class:`ProcessSink`), :mod:`.child`
the publisher process.

The names below are loaded on first use (PEP 562): the publisher process
imports this package on its way to :mod:`.child` and needs nothing of
:mod:`.supervisor`, the parent's side, nor of ``subprocess``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from .frames import read_frame, write_frame
    from .supervisor import PUBLISHER_COMMAND, ProcessSink, publisher_environment

_LAZY = {
    "PUBLISHER_COMMAND": "supervisor",
    "ProcessSink": "supervisor",
    "publisher_environment": "supervisor",
    "read_frame": "frames",
    "write_frame": "frames",
}

__all__ = [
    "PUBLISHER_COMMAND",
    "ProcessSink",
    "publisher_environment",
    "read_frame",
    "write_frame",
]


__getattr__ = lazy_names(__name__, _LAZY)
