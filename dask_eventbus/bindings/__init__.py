"""Pure mappings between a :class:`~dask_eventbus.backends.Message` and each
broker's record, and from a record back to events.

No I/O and no client library here: frozen values in, frozen values out, in
the manner of the CloudEvents SDK's protocol bindings, so the record shape
is tested in microseconds and a transport module holds only its connection
handling.
"""
