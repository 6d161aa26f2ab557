"""HTTP requests: the CloudEvents HTTP binding and Standard Webhooks signatures.

Structured content mode: one request per event, its body the CloudEvent with
``Content-Type: application/cloudevents+json``. Batched content mode: one
request per batch, a JSON array of events with
``Content-Type: application/cloudevents-batch+json``. With a signing secret,
each request carries the ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` headers of the Standard Webhooks specification
(https://www.standardwebhooks.com): ``v1,`` and the base64 HMAC-SHA256 of
``<id>.<timestamp>.<body>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from ..backends.contract import BATCH_CONTENT_TYPE, Message, batch_body
from ..events import CONTENT_TYPE

SECRET_PREFIX = "whsec_"


class Request(NamedTuple):
    """One HTTP POST: the events it carries, its body and its headers."""

    messages: Sequence[Message]
    body: bytes
    headers: dict[str, str]


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_`` (optional) and
    base64, decoded as the Standard Webhooks libraries decode it."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "secret must be a Standard Webhooks secret: whsec_ followed by the base64 "
            "of the key (for example whsec_ + base64 of 24 random bytes)"
        ) from None
    if not key:
        raise ValueError("secret must not be empty")
    return key


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def webhook_id(messages: Sequence[Message]) -> str:
    """The id of a request, the same on every retry: the event's id, or the
    first and last ids of a batch (ids are unique per source)."""
    first, last = messages[0], messages[-1]
    return first.id if len(messages) == 1 else f"{first.id}..{last.id}"


def request(
    messages: Sequence[Message],
    *,
    batched: bool,
    key: bytes | None = None,
    now: float | None = None,
) -> Request:
    """The request for one event (structured) or a batch of them (batched),
    signed with ``key`` when given."""
    if batched:
        body, content_type = batch_body(messages), BATCH_CONTENT_TYPE
    else:
        (message,) = messages
        body, content_type = message.body, CONTENT_TYPE
    headers = {"content-type": content_type}
    if key is not None:
        ident = webhook_id(messages)
        timestamp = int(time.time() if now is None else now)
        headers["webhook-id"] = ident
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = signature(key, ident, timestamp, body)
    return Request(messages, body, headers)


def request_end(messages: Sequence[Message], start: int, *, batched: bool, max_bytes: int) -> int:
    """Where the events of the request starting at ``start`` end: one event
    (structured), or as many as fit a batch body of ``max_bytes`` (batched;
    an event larger than that goes alone)."""
    if not batched:
        return start + 1
    size, end = 2 + len(messages[start].body), start + 1  # the brackets
    while end < len(messages):
        size += 1 + len(messages[end].body)
        if size > max_bytes:
            break
        end += 1
    return end


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an
    HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retryable(status: int) -> bool:
    """Whether an answer asks to try again later (408, 429, 5xx) rather than
    refusing for good (any other 4xx)."""
    return status in (408, 429) or status >= 500
