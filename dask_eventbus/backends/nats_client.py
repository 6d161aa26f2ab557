"""The ``nats`` backend's connections through nats-py, on an event loop in a
thread of its own (:class:`~dask_eventbus.backends.loop.LoopThread`).

Publishing uses them where the publisher's own connection
(:class:`dask_eventbus.backends.nats._Connection`) does not reach: TLS (a
``tls://`` url or the tls block), a creds-file and an nkey-seed-file.
Subscribers (:mod:`.nats_reader`) always do. Apart from :mod:`.nats`, so
that a publisher process that needs none of it does not import nats-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client as NATSClient
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from ..bindings.nats import to_record
from .clientlog import ClientLog
from .loop import LoopThread
from .tls import TLSOptions

if TYPE_CHECKING:
    from .contract import Message
    from .nats import NatsBackend

logger = logging.getLogger("distributed.eventbus")


def connect_bound(backend: NatsBackend) -> float:
    """How long :func:`connect` may take: nats-py tries each server twice,
    each within connect-timeout."""
    return 2 * len(backend.options.servers()) * backend.options.connect_timeout + 1


async def connect(
    backend: NatsBackend, role: str
) -> tuple[NATSClient, asyncio.Future[BaseException | None]]:
    """A connection that does not reconnect by itself, and a future set
    when it closed (to the error that closed it, if any)."""
    options = backend.options
    gone: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    errors: list[BaseException] = []
    client = _TLSOnlyClient() if options.wants_tls() else NATSClient()

    client_log = ClientLog(logger, "nats-py", backend.mask)

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)
        client_log.log(logging.ERROR, repr(exc))

    async def closed_cb() -> None:
        if not gone.done():
            gone.set_result(client.last_error)

    kwargs: dict[str, Any] = {
        "servers": options.servers(),
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.1,
        "connect_timeout": options.connect_timeout,
        "error_cb": error_cb,
        "closed_cb": closed_cb,
        "dont_randomize": True,
    }
    if options.connection_name:
        kwargs["name"] = options.connection_name + role
    if options.user is not None:
        kwargs.update(user=options.user, password=options.password)
    if options.token is not None:
        kwargs["token"] = options.token
    if options.creds_file is not None:
        kwargs["user_credentials"] = options.creds_file
    if options.nkey_seed_file is not None:
        kwargs["nkeys_seed"] = options.nkey_seed_file
    if options.wants_tls():
        tls = options.tls or TLSOptions()
        kwargs["tls"] = tls.context()
        if tls.server_hostname:
            kwargs["tls_hostname"] = tls.server_hostname
    try:
        await client.connect(**kwargs)
    except BaseException as exc:
        # nats-py leaves the socket of a failed attempt open; closing it
        # after a failed TLS handshake may wait for the peer.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 1.0)
        if isinstance(exc, nats.errors.NoServersError):
            raise exc from (errors[-1] if errors else None)
        raise
    return client, gone


async def ensure_stream(backend: NatsBackend, js: JetStreamContext) -> None:
    """Make the backend's stream if it is missing (and create-missing is on)."""
    from .nats import STREAM_NAME_IN_USE

    options = backend.options
    try:
        await js.stream_info(options.stream)
        return
    except NotFoundError:
        if not options.create_missing:
            raise
    config = api.StreamConfig(
        name=options.stream,
        subjects=[f"{options.subject_prefix}.>"],
        storage=api.StorageType.FILE,
        max_age=options.max_age,
        max_bytes=options.max_bytes,
        max_msgs=options.max_msgs,
        duplicate_window=options.duplicate_window,
    )
    try:
        await js.add_stream(config)
    except APIError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:  # made meanwhile by another scheduler
            raise


class _TLSOnlyClient(NATSClient):
    """A nats-py client that refuses a server without TLS before it sends
    anything (credentials): nats-py itself only upgrades a connection to TLS
    when the server requires it, even for a ``tls://`` URL."""

    def _connect_command(self) -> bytes:
        if not self._server_info.get("tls_required"):
            raise nats.errors.SecureConnWantedError()
        command: bytes = super()._connect_command()
        return command


class ThroughNatsPy:
    """Publishing with nats-py's asynchronous JetStream client: each batch
    published as a whole, returning once JetStream acknowledged every
    message."""

    def __init__(self, backend: NatsBackend) -> None:
        self._backend = backend
        self._options = backend.options
        self._loop: LoopThread | None = None
        self._client: NATSClient | None = None
        self._js: JetStreamContext | None = None
        self._gone: asyncio.Future[BaseException | None] | None = None

    def open(self) -> None:
        loop = self._loop = LoopThread("dask-eventbus-nats")
        self._client, self._gone = loop.run(
            connect(self._backend, ""), connect_bound(self._backend)
        )
        self._js = self._client.jetstream(timeout=self._options.publish_timeout)
        loop.run(ensure_stream(self._backend, self._js), self._options.publish_timeout + 1)

    def publish(self, messages: Sequence[Message]) -> None:
        if self._loop is None or self._js is None or self._gone is None:
            raise RuntimeError("nats backend is not open")
        timeout = self._options.publish_timeout
        self._loop.run(
            asyncio.wait_for(self._publish(self._js, self._gone, messages), timeout), timeout + 1
        )

    async def _publish(
        self,
        js: JetStreamContext,
        gone: asyncio.Future[BaseException | None],
        messages: Sequence[Message],
    ) -> None:
        prefix, deduplicate = self._options.subject_prefix, self._options.deduplicate
        acks: list[asyncio.Future[api.PubAck]] = []
        try:
            for message in messages:
                subject, payload, headers = to_record(message, prefix, deduplicate)
                acks.append(await js.publish_async(subject, payload, headers=headers))
            every = asyncio.gather(*acks, return_exceptions=True)
            either: list[asyncio.Future[Any]] = [every, gone]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not every.done():
                every.cancel()
                # Closed before every acknowledgement came: by what closed it.
                raise nats.errors.ConnectionClosedError() from gone.result()
            failures = [r for r in every.result() if isinstance(r, BaseException)]
        finally:
            for ack in acks:
                if not ack.done():
                    ack.cancel()
        if failures:
            raise failures[0]

    def abort(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.cancel()

    def close(self) -> None:
        loop, client = self._loop, self._client
        self._loop = self._client = self._js = self._gone = None
        if loop is None:
            return
        if client is not None:
            try:
                timeout = self._options.connect_timeout
                loop.run(asyncio.wait_for(client.close(), timeout), timeout + 1)
            except BaseException:
                logger.debug("dask-eventbus: closing the NATS connection failed", exc_info=True)
        loop.stop()
