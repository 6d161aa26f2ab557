"""What went wrong with a broker, in words a person can act on.

A backend sorts its client library's errors into the few kinds of problem
every broker has (:class:`Problem`): refused credentials, missing
permission, a failed TLS handshake, no connection, no answer in time, a
missing topic/stream/exchange, an event too large, a lost connection, a
request the broker refused. :func:`word` says each kind the same way for
every backend, naming the broker, the options that bound the wait and the
option that creates what is missing. Operating-system errors under the
client's own (a refused connection, a name that does not resolve, a
certificate the peer did not accept, a timeout) are recognised here once,
whichever client raised them: :func:`network_problem`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple

ProblemKind = Literal[
    "authentication",
    "permission",
    "tls",
    "connect",
    "timeout",
    "missing",
    "too-large",
    "lost",
    "refused",
    "said",
]
"""The kinds of problem :func:`word` words; ``said`` is a text the backend
wrote itself (the message of its own exception), shown as it is."""


class Problem(NamedTuple):
    """One error, classified by a backend for the framework to word."""

    kind: ProblemKind
    detail: str = ""
    """What the client library or the broker said (masked before it is shown)."""
    about: str = ""
    """What the problem concerns: ``user 'x'`` (authentication, permission),
    ``topic 'x'`` (missing), ``the request`` (refused)."""
    fix: str = ""
    """What to do about it, where only the backend knows; replaces the
    general advice of its kind."""


class Wording(NamedTuple):
    """What :func:`word` needs to know of the backend that met the problem."""

    where: str
    """The broker, for people: ``Redis at host:6379``."""
    backend: str
    """The backend's name, to name its options (``eventbus.backends.<name>``)."""
    timeouts: str
    """The options that bound the wait and their values: ``timeout 30s``."""
    provisioning: str | None
    """The option that creates what is missing (``create-topic``), if any."""


def word(problem: Problem, wording: Wording) -> str:
    """``problem`` in one line: where, what happened, what to do."""
    where, detail, about, fix = wording.where, problem.detail, problem.about, problem.fix
    said = f" ({detail})" if detail else ""
    kind = problem.kind
    if kind == "authentication":
        who = f" for {about}" if about else ""
        return f"{where} refused authentication{who}: {fix or 'check the credentials'}{said}"
    if kind == "permission":
        who = f" for {about}" if about else ""
        return f"{where} denied permission{who}: {fix or 'grant the permissions it needs'}{said}"
    if kind == "tls":
        advice = fix or "check the url's scheme and the tls options (ca-file, cert-file, verify)"
        return f"TLS with {where} failed: {detail or 'the handshake failed'}; {advice}"
    if kind == "connect":
        advice = fix or "is it running there, and the url right?"
        return f"cannot connect to {where}: {detail or 'no connection'}; {advice}"
    if kind == "timeout":
        bound = f" ({wording.timeouts})" if wording.timeouts else ""
        advice = fix or "is it overloaded or stalled?"
        return f"{where} did not answer in time{bound}: {advice}{said}"
    if kind == "missing":
        if not fix:
            option = wording.provisioning
            fix = "create it"
            if option:
                fix += f", or set eventbus.backends.{wording.backend}.{option}: true"
        return f"{where}: {about or 'what events go to'} does not exist; {fix}{said}"
    if kind == "too-large":
        advice = fix or "lower eventbus.events.max-event-bytes below what it accepts"
        return f"{where} refused an event as too large: {advice}{said}"
    if kind == "lost":
        return f"lost the connection to {where}{f': {detail}' if detail else ''}"
    if kind == "refused":
        advice = f"; {fix}" if fix else ""
        return f"{where} refused {about or 'the request'}: {detail or 'no reason given'}{advice}"
    return detail


def network_problem(exc: BaseException) -> Problem | None:
    """The operating-system error found under ``exc`` (its causes and
    contexts), classified; None when there is none."""
    # Here, not at the top: a publisher process that meets no error (and
    # whose client does not load them) need not load ssl and socket.
    import socket
    import ssl

    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return Problem("connect", "connection refused")
        if isinstance(cause, socket.gaierror):
            return Problem("connect", f"the host name does not resolve ({cause})")
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return Problem("tls", str(cause))
        if isinstance(cause, TimeoutError | socket.timeout):
            return Problem("timeout")
        if isinstance(cause, OSError) and cause.errno is not None:
            return Problem("connect", f"{type(cause).__name__}: {cause}")
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from, while handling, or wraps (as its
    first argument, where client libraries keep it), a few deep."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            current = current.__context__
        elif current.args and isinstance(current.args[0], BaseException):
            current = current.args[0]
        else:
            current = None
