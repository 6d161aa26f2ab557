"""Prometheus metrics on the scheduler's /metrics endpoint."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test
from helpers import inc
from prometheus_client.parser import text_string_to_metric_families

from dask_eventbus import EventBusPlugin

pytestmark = pytest.mark.timeout(60)


def scrape(url: str) -> dict[str, dict]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("dask_eventbus_"):
            families[family.name] = {
                (s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples
            }
    return families


@gen_test(timeout=60)
async def test_metrics_are_served_on_the_scheduler_dashboard(memory_store_name: str) -> None:
    plugin = EventBusPlugin("memory", name=memory_store_name)
    async with Scheduler(dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=1):
            async with Client(s.address, asynchronous=True) as c:
                await c.gather(c.map(inc, range(20)))
                while plugin.stats()["queued"]:
                    await asyncio.sleep(0.05)
                url = f"http://127.0.0.1:{s.http_server.port}/metrics"
                metrics = await asyncio.get_running_loop().run_in_executor(None, scrape, url)
                published_then = plugin.stats()["published"]
    label = (("backend", "memory"),)
    published = metrics["dask_eventbus_events_published"][
        ("dask_eventbus_events_published_total", label)
    ]
    assert published == published_then >= 20 * 4
    assert (
        metrics["dask_eventbus_events_dropped"][("dask_eventbus_events_dropped_total", label)] == 0
    )
    assert (
        metrics["dask_eventbus_backend_connected"][("dask_eventbus_backend_connected", label)] == 1
    )
    latency = metrics["dask_eventbus_delivery_latency_seconds"]
    count = latency[("dask_eventbus_delivery_latency_seconds_count", label)]
    assert count == published
    assert (
        latency[
            (
                "dask_eventbus_delivery_latency_seconds_bucket",
                (("backend", "memory"), ("le", "+Inf")),
            )
        ]
        == count
    )
    assert "dask_eventbus_publish_duration_seconds" in metrics
    assert "dask_eventbus_queue_events" in metrics
