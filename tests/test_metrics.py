"""Prometheus metrics on the scheduler's /metrics endpoint."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_test
from prometheus_client.parser import text_string_to_metric_families

from dask_eventbus import EventBusPlugin
from dask_eventbus.testing.workload import inc

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
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=1):
            async with Client(s.address, asynchronous=True) as c:
                await c.gather(c.map(inc, range(20)))
                await c.log_event("too-large", "x" * 1_000_000)
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
        metrics["dask_eventbus_events_oversized"][("dask_eventbus_events_oversized_total", label)]
        == 1
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


@gen_test(timeout=60)
async def test_two_schedulers_in_one_process_share_the_metrics() -> None:
    from dask_eventbus.backends.memory import drop_store

    plugins = [EventBusPlugin("memory", name=f"metrics-{i}") for i in range(2)]
    try:
        async with Scheduler(
            host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugins[0]]
        ) as a:
            async with Scheduler(
                host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugins[1]]
            ):
                while any(p.stats()["published"] < 1 for p in plugins):
                    await asyncio.sleep(0.05)
                url = f"http://127.0.0.1:{a.http_server.port}/metrics"
                metrics = await asyncio.get_running_loop().run_in_executor(None, scrape, url)
                total = sum(p.stats()["published"] for p in plugins)
    finally:
        for i in range(2):
            drop_store(f"metrics-{i}")
    label = (("backend", "memory"),)
    published = metrics["dask_eventbus_events_published"]
    assert published[("dask_eventbus_events_published_total", label)] == total >= 2
