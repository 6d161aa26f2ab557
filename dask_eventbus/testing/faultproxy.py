"""A loopback TCP proxy that tests can make misbehave like a broken network.

Modes:

* ``pass``: forward bytes both ways;
* ``refuse``: stop listening, so new connections are refused (open ones live on);
  the port stays reserved meanwhile, so no other test process can take it;
* ``cut``: close every open connection at once (call :meth:`cut`; the mode
  stays what it was, so reconnecting works unless it is ``refuse``);
* ``stall``: accept bytes from clients and never answer or forward them,
  like a broker that hangs;
* ``garbage``: answer every client with bytes no broker would send.

Given an SSL context, the proxy terminates TLS: clients speak TLS to it, and
it speaks plain TCP to the broker, so TLS options can be tested against a
broker that has no TLS listener.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

GARBAGE = b"\x00\xffHTTP/1.1 418 I'm a teapot\r\n\r\n" + bytes(range(256)) * 4


class FaultProxy:
    """A loopback TCP proxy to ``upstream`` whose faults tests switch on."""

    def __init__(self, upstream: tuple[str, int], tls: ssl.SSLContext | None = None) -> None:
        self.upstream = upstream
        self.tls = tls
        self.mode = "pass"
        self._lock = threading.Lock()
        self._connections: list[tuple[socket.socket, socket.socket | None]] = []
        # Counts cuts: a connection accepted before a cut and set up after it
        # is closed as soon as it would be tracked, never left open.
        self._cuts = 0
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self.port = 0
        self.accepted = 0
        self._listen()
        # A bound socket that never listens keeps the port ours while in
        # ``refuse`` mode: connections to it are refused, as with no listener
        # at all, but a scheduler or client starting meanwhile cannot get the
        # port from the kernel and receive the broker's clients.
        self._reservation = _shared_port_socket()
        self._reservation.bind(self.address)
        # One accepting thread for the proxy's life: tests that check for
        # leaked threads see none appear when refuse mode ends.
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    # ---- control

    def set_mode(self, mode: str) -> None:
        """Switch to ``pass``, ``refuse``, ``stall`` or ``garbage`` (see above)."""
        assert mode in ("pass", "refuse", "stall", "garbage"), mode
        previous, self.mode = self.mode, mode
        if mode == "refuse" and previous != "refuse":
            self._close_listener()
        elif mode != "refuse" and previous == "refuse":
            self._listen()

    def cut(self) -> int:
        """Close every open connection; returns how many were cut."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._cuts += 1
        for pair in connections:
            for sock in pair:
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
        return len(connections)

    def close(self) -> None:
        self._stopped.set()
        self._close_listener()
        self._reservation.close()
        self.cut()
        self._acceptor.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- machinery

    def _listen(self) -> None:
        listener = _shared_port_socket()
        listener.bind(self.address)
        listener.listen(64)
        listener.settimeout(0.1)  # the accepting thread notices mode changes
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            listener = self._listener
            if listener is None:  # refusing
                time.sleep(0.05)
                continue
            try:
                client, _ = listener.accept()
            except OSError:  # a timeout, or the listener closed for refuse mode
                continue
            client.settimeout(None)
            self.accepted += 1
            threading.Thread(target=self._serve, args=(client, self._cuts), daemon=True).start()

    def _serve(self, client: socket.socket, cuts: int) -> None:
        if self.tls is not None:
            try:
                client.settimeout(5)
                client = self.tls.wrap_socket(client, server_side=True)
            except OSError:
                client.close()
                return
        if self.mode == "garbage":
            with contextlib.suppress(OSError):
                client.sendall(GARBAGE)
        if self.mode in ("garbage", "stall"):
            if self._track(client, None, cuts):
                self._drain(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        if self._track(client, upstream, cuts):
            self._relay(client, upstream)

    def _track(self, client: socket.socket, upstream: socket.socket | None, cuts: int) -> bool:
        """Keep the connection for :meth:`cut`; False (and closed) if a cut
        or refuse mode came since it was accepted."""
        # The proxy relays each chunk as it reads it. With Nagle's algorithm
        # on its sockets, a request written in parts (an HTTP client's head
        # and body, a Kafka client's small frames) would wait for the peer's
        # delayed ACK, about 40 ms on loopback, at every request: a delay no
        # real network path adds to every exchange and no fault here needs.
        for sock in (client, upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if cuts == self._cuts and self.mode != "refuse":
                self._connections.append((client, upstream))
                return True
        for sock in (client, upstream):
            if sock is not None:
                sock.close()
        return False

    def _drain(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        # One thread for both directions: an SSL socket must not be read and
        # written from two threads at once.
        peers = {client: upstream, upstream: client}
        for sock in peers:
            sock.settimeout(5)
        try:
            while not self._stopped.is_set():
                if self.mode == "stall":
                    # Read nothing further: both sides see a silent peer.
                    time.sleep(0.05)
                    continue
                ready: list[socket.socket] = [
                    s for s in peers if isinstance(s, ssl.SSLSocket) and s.pending()
                ]
                if not ready:
                    ready, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            pass  # cut, or closed by the other side
        finally:
            for sock in peers:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _shared_port_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def proxied_url(
    url: str, default_port: int, options: dict[str, Any]
) -> Callable[[], AbstractContextManager[tuple[FaultProxy, dict[str, Any]]]]:
    """For :attr:`Target.proxied`: a fault proxy in front of the broker at
    ``url``, and ``options`` plus that url rewritten to go through it."""
    parsed = urlsplit(url)
    auth = parsed.netloc.rpartition("@")[0]
    upstream = (parsed.hostname or "127.0.0.1", parsed.port or default_port)

    @contextlib.contextmanager
    def proxied() -> Iterator[tuple[FaultProxy, dict[str, Any]]]:
        with FaultProxy(upstream) as proxy:
            host = f"127.0.0.1:{proxy.port}"
            netloc = f"{auth}@{host}" if auth else host
            yield proxy, {"url": urlunsplit(parsed._replace(netloc=netloc)), **options}

    return proxied
