"""The ``nats`` backend in the conformance suite, against a real NATS server
with JetStream.

The server is the shared one (``nats_url``: ``NATS_URL`` or 127.0.0.1:4222).
Every test gets a stream and a subject prefix of its own, deleted afterwards
(``STREAMS``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
import pytest
from helpers import ENDPOINTS, Place, Places
from nats.js.errors import NotFoundError

from dask_eventbus.testing import SECRET, Target, proxied_url, unique_name


def delete_streams(url: str, *streams: str) -> None:
    """Delete ``streams`` (and their consumers); missing ones are fine."""

    async def delete() -> None:
        client = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            for stream in streams:
                with contextlib.suppress(NotFoundError):
                    await client.jetstream().delete_stream(stream)
        finally:
            await client.close()

    asyncio.run(delete())


def new_stream(request: pytest.FixtureRequest) -> dict[str, Any]:
    name = unique_name("dask-eventbus-test")
    url = request.getfixturevalue("nats_url")
    return {"url": url, "stream": name, "subject-prefix": name, "deduplicate": True}


def remove_streams(place: Place) -> None:
    delete_streams(place["url"], place["stream"], *place.extra)


STREAMS = Places(make=new_stream, remove=remove_streams)


def nats_harness(request: pytest.FixtureRequest) -> Target:
    place = STREAMS.new(request)
    return Target(
        "nats",
        # The suite publishes the same synthetic events again on purpose,
        # where JetStream would drop them as the duplicates of a retry: it
        # publishes without message ids. The fault matrix (through the proxy)
        # sends them.
        {**place, "deduplicate": False},
        bad_options=[
            ({"url": "http://127.0.0.1:4222"}, "url must start with nats:// or tls:// (TLS)"),
            ({"url": "nats://s3cr3t-token@127.0.0.1:4222"}, "give a token as token"),
            ({"user": "alice"}, "user and password go together"),
            ({"token": "abcd", "creds-file": "/x.creds"}, "give one way to authenticate"),
            ({"subject-prefix": "events.>"}, "subject-prefix"),
            ({"stream": "a.b"}, "stream"),
            ({"publish-timeout": 0}, "publish-timeout"),
            ({"max-msgs": 0}, "max-msgs"),
            ({"duplicate-window": "soon"}, "duplicate-window"),
        ],
        cleanup=STREAMS.cleanup(place),
        proxied=proxied_url(
            place["url"],
            ENDPOINTS["nats"].port,
            {
                "stream": place["stream"],
                "subject-prefix": place["subject-prefix"],
                "deduplicate": True,
                "connect-timeout": "1s",
                "publish-timeout": "2s",
            },
        ),
        with_secret=lambda options: {**options, "user": "conformance", "password": SECRET},
    )


HARNESSES = {"nats": nats_harness}
