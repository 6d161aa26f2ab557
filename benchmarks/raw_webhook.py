"""Raw httpx baseline for the throughput benchmark (webhook backend).

The fastest idiomatic way to post pre-encoded CloudEvents with the same
guarantee as the backend: one keep-alive ``httpx.Client``, one ``POST`` per
event, or with ``--option webhook.content-mode=batched`` one per batch (a
JSON array of its events), each answer's status checked. The backend's
per-request work (signing when a secret is given, ``max-batch-bytes``, its
answer handling) is part of what the ratio measures. Start
``http_receiver.py`` first and give its url.
"""

from __future__ import annotations

from typing import Any

import httpx


def publish_raw(bodies: list[bytes], options: dict[str, Any], batch_size: int) -> None:
    url = options["url"]
    with httpx.Client() as client:
        if options.get("content-mode", "structured") == "structured":
            headers = {"content-type": "application/cloudevents+json"}
            for body in bodies:
                client.post(url, content=body, headers=headers).raise_for_status()
            return
        headers = {"content-type": "application/cloudevents-batch+json"}
        for i in range(0, len(bodies), batch_size):
            body = b"[" + b",".join(bodies[i : i + batch_size]) + b"]"
            client.post(url, content=body, headers=headers).raise_for_status()


RAW = {"webhook": publish_raw}
