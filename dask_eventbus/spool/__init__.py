"""The durable spool: encoded messages on disk between the publisher and the broker.

A spool is a directory (``eventbus.spool.path``) of *segment* files, each a
magic line followed by *records*; one record is one batch of messages as the
publisher built them (body, id, sequence, source, ... unchanged), so what is
delivered from disk is exactly what would have been published directly.
Beside the segments: ``checkpoint`` (how far everything was delivered),
``spool.lock`` (``flock``-ed by the owner, holding its pid and host) and
``quarantine/`` (damaged parts, moved aside).

One module a job: :mod:`.format` the segment and record format and the scan
over records; :mod:`.lock` the owner's lock; :mod:`.live` the spool a
publisher appends to and drains from (one writer, one reader, a sync thread
that ``fsync``-s the segment being written at least every
``sync-interval``); :mod:`.inspection` reading a directory without taking
it over (``dask-eventbus spool``).
"""

from .format import SEGMENT_MAGIC, Head, list_segments, read_head, segment_name
from .inspection import inspect_spool
from .live import Batch, Damage, Spool
from .lock import check_free

__all__ = [
    "SEGMENT_MAGIC",
    "Batch",
    "Damage",
    "Head",
    "Spool",
    "check_free",
    "inspect_spool",
    "list_segments",
    "read_head",
    "segment_name",
]
