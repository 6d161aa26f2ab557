"""One TLS option block, ``tls``, for every network backend.

Each backend maps it to its client library: an ``ssl.SSLContext`` (pika,
nats-py, httpx), redis-py's ``ssl_*`` arguments (the redis backend and
Kombu's redis transport, mapped once here), py-amqp's ``ssl`` dict (Kombu),
librdkafka's ``ssl.*`` properties (Kafka). The keys mean the same everywhere; a key a
client library cannot honour is refused when the options are read, naming
the library.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import ssl


class TLSOptions(msgspec.Struct, kw_only=True, rename="kebab", forbid_unknown_fields=True):
    """The ``tls`` block: verification against the system CAs unless told otherwise."""

    ca_file: str | None = None
    """CA bundle (PEM) that verifies the server; null: the system's CAs."""
    cert_file: str | None = None
    """Client certificate (PEM) for mutual TLS."""
    key_file: str | None = None
    """Its private key (PEM); null: the key is in cert-file."""
    key_password: str | None = None
    """Password of an encrypted key-file."""
    verify: bool = True
    """Verify the server's certificate and host name; false only for tests."""
    server_hostname: str | None = None
    """The name to verify (and send as SNI) when it differs from the URL's host."""

    def __post_init__(self) -> None:
        if self.key_file and not self.cert_file:
            raise ValueError("tls key-file needs tls cert-file (the client certificate)")

    def context(self) -> ssl.SSLContext:
        """A client-side SSL context made from these options."""
        import ssl  # here: a publisher process without TLS need not load it

        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file, self.key_password)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def redis_py(self) -> dict[str, Any]:
        """redis-py's ``ssl_*`` arguments: for the redis backend, and for
        Kombu's redis transport, which hands them to redis-py."""
        import ssl

        return {
            "ssl_ca_certs": self.ca_file,
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
            "ssl_password": self.key_password,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if self.verify else ssl.CERT_NONE,
            "ssl_check_hostname": self.verify,
        }

    def refuse(self, library: str, *keys: str) -> None:
        """Raise if any of ``keys`` is set: ``library`` cannot honour them."""
        given = [key for key in keys if getattr(self, key.replace("-", "_")) is not None]
        if given:
            raise ValueError(f"tls {', '.join(given)} cannot be used with {library}")


def deprecated(old: str, backend: str) -> None:
    """Warn that option ``old`` of ``backend`` is replaced by the ``tls`` block."""
    warnings.warn(
        f"eventbus.backends.{backend}.{old} is deprecated: use the tls block "
        f"(eventbus.backends.{backend}.tls: ca-file, cert-file, key-file, key-password, "
        "verify, server-hostname), the same for every backend",
        FutureWarning,
        stacklevel=3,
    )
