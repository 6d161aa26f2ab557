"""What went wrong on the network, in words a person can act on.

Every network backend meets the same operating-system errors under its
client library's own: a refused connection, a name that does not resolve, a
failed TLS handshake, a timeout. :func:`explain_network` words them once;
each backend's ``explain`` handles what is particular to its broker and
falls back on it.
"""

from __future__ import annotations

import socket
import ssl


def explain_network(cause: BaseException, where: str, timeouts: str = "") -> str | None:
    """The diagnosis of an OS-level error reaching ``where`` (e.g. "RabbitMQ at
    amqp://user@host:5672/%2F"), or None when ``cause`` is not one.
    ``timeouts`` names the options that bound the wait, for a timeout."""
    if isinstance(cause, ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused; is the broker running there?"
    if isinstance(cause, socket.gaierror):
        return f"cannot connect to {where}: the host name does not resolve ({cause})"
    if isinstance(cause, ssl.SSLError | ssl.CertificateError):
        return (
            f"TLS with {where} failed: {cause}; check that the port speaks TLS and the "
            "tls options (ca-file, cert-file, verify, server-hostname)"
        )
    if isinstance(cause, TimeoutError | socket.timeout):
        bound = f" ({timeouts})" if timeouts else ""
        return f"cannot connect to {where}: no answer in time{bound}"
    if isinstance(cause, OSError):
        return f"cannot connect to {where}: {type(cause).__name__}: {cause}"
    return None
