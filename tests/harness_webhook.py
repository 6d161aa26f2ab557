"""The ``webhook`` backend in the conformance suite, against a real HTTP
receiver on loopback (``webhook_receiver.py``).

Every test gets a receiver of its own; what it accepted is read back from
its memory store (the backend is publish-only), so the read-back tests and
the fault matrix check webhook deliveries too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from webhook_receiver import WebhookReceiver

from dask_eventbus.testing import SECRET, Target, proxied_url


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A started receiver, stopped afterwards."""
    with WebhookReceiver() as receiver:
        yield receiver


def webhook_harness(request: pytest.FixtureRequest) -> Target:
    receiver: WebhookReceiver = request.getfixturevalue("webhook_receiver")
    return Target(
        "webhook",
        {"url": receiver.url},
        bad_options=[
            ({"url": "ftp://127.0.0.1/x"}, "url must start with http:// or https:// (TLS)"),
            ({"publish-timeout": 0}, "publish-timeout"),
            ({"max-batch-bytes": 0}, "max-batch-bytes"),
            ({"secret": "whsec_not base64!"}, "secret must be a Standard Webhooks secret"),
            ({"headers": {"Content-Type": "text/plain"}}, "headers may not set Content-Type"),
            ({"tls": {"ca-file": "/tmp/ca.pem"}}, "tls needs an https:// url"),
        ],
        proxied=proxied_url(receiver.url, 80, {"connect-timeout": "2s", "publish-timeout": "2s"}),
        read_back=receiver.subscribe,
        with_secret=lambda options: {**options, "headers": {"Authorization": f"Bearer {SECRET}"}},
    )


READ_ELSEWHERE = {"webhook"}  # publish-only: read back from the test receiver
HARNESSES = {"webhook": webhook_harness}
