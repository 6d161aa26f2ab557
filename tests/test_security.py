"""Secrets stay secret; brokers that refuse or babble get clear logs and backoff."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dask
import pytest
from distributed import Client, Scheduler, Worker

from dask_eventbus import EventBusPlugin
from dask_eventbus.testing import Target, unique_name
from dask_eventbus.testing.workload import inc

pytestmark = pytest.mark.timeout(180)

SECRET = "s3cr3t-" + unique_name("token")
RUN_FOR = 4.0


class Everything(logging.Handler):
    """Every log record of the process, formatted as people would see it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter().format(record))


def with_secret(harness: Target) -> dict[str, Any]:
    """The harness's options with a wrong password the broker will refuse."""
    options = dict(harness.options)
    if harness.backend == "kafka":
        config = dict(options["config"])
        config.update(
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "dask",
                "sasl.password": SECRET,
            }
        )
        return {**options, "config": config, "timeout": "3s"}
    parsed = urlsplit(options["url"])
    host = parsed.netloc.rpartition("@")[2]
    if parsed.scheme.startswith("redis") or parsed.scheme == "nats":
        # redis-py ignores a password the (passwordless) test Redis does not
        # ask for, and so does a NATS server without authentication; a port
        # nobody listens on refuses the connection instead.
        # (tests/test_backend_redis.py and test_backend_nats.py refuse
        # passwords on a server of their own.)
        host = "127.0.0.1:1"
    if parsed.scheme.startswith("http"):
        # A 401 is a refusal for good, not retried (tests/test_backend_webhook.py
        # checks that it leaks nothing); here the token goes in a header too.
        host = "127.0.0.1:1"
        options["headers"] = {"Authorization": f"Bearer {SECRET}"}
    user = "guest" if parsed.scheme.startswith("amqp") else ""
    options["url"] = urlunsplit(parsed._replace(netloc=f"{user}:{SECRET}@{host}"))
    return options


async def run_briefly(plugin: EventBusPlugin) -> tuple[dict[str, Any], float]:
    """Compute for RUN_FOR seconds, and on until the first failed publish (a
    loaded machine may take longer to start a publisher process and time out
    its first attempt); the plugin's stats and the seconds it ran."""
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=1):
            async with Client(s.address, asynchronous=True) as c:
                started = time.monotonic()
                give_up = started + RUN_FOR + 30
                while time.monotonic() < started + RUN_FOR or (
                    not plugin.stats()["publish_errors"] and time.monotonic() < give_up
                ):
                    assert await c.submit(inc, 1, pure=False) == 2
                    await asyncio.sleep(0.2)
                return plugin.stats(), time.monotonic() - started


@pytest.mark.slow
@pytest.mark.networked
@pytest.mark.parametrize("mode", ["thread", "process"])
def test_refused_credentials_log_clearly_back_off_and_never_leak(
    harness: Target, mode: str
) -> None:
    assert harness.proxied is not None
    options = with_secret(harness)
    handler = Everything()
    for name in ("", "distributed"):
        logging.getLogger(name).addHandler(handler)
    config = {
        "eventbus.pipeline.mode": mode,
        "eventbus.close-timeout": "1s",
        "eventbus.retry.initial-backoff": "100ms",
        "eventbus.retry.max-backoff": "1s",
    }
    try:
        with dask.config.set(config):
            plugin = EventBusPlugin(harness.backend, **options)
            stats, ran_for = asyncio.run(run_briefly(plugin))
    finally:
        for name in ("", "distributed"):
            logging.getLogger(name).removeHandler(handler)
    seen = "\n".join([*handler.lines, repr(plugin), repr(plugin.backend), json.dumps(stats)])
    assert SECRET not in seen
    assert stats["published"] == 0 and stats["connected"] is False
    # Backoff, not a busy loop: from 100 ms doubling to 1 s, a few attempts a second.
    assert 1 <= stats["publish_errors"] <= 4 * ran_for
    assert stats["last_error"]
    errors = [line for line in handler.lines if "cannot publish" in line]
    assert len(errors) == 1, "the first failure is an error; repeats are summarised"


def test_command_line_output_never_shows_a_secret(tmp_path: Path) -> None:
    url = f"redis://default:{SECRET}@127.0.0.1:1/0"
    bin_dir = Path(sys.executable).parent
    env = {"DASK_EVENTBUS__BACKENDS__REDIS__URL": url, "DASK_EVENTBUS__BACKEND": "redis"}
    import os

    for args in (["config"], ["config", "--json"], ["check", "--timeout", "2"]):
        result = subprocess.run(
            [str(bin_dir / "dask-eventbus"), *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert SECRET not in result.stdout + result.stderr, args
    assert result.returncode == 1 and "cannot connect" in result.stderr.lower()


def test_events_carry_no_task_data_and_tracebacks_can_be_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"

    def leak(value: str) -> str:
        raise ValueError(f"failed on {value}")

    async def run() -> None:
        with dask.config.set({"eventbus.events.include-tracebacks": False}):
            plugin = EventBusPlugin("jsonl", path=str(path))
        async with Scheduler(
            host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]
        ) as s:
            async with Worker(s.address, nthreads=1):
                async with Client(s.address, asynchronous=True) as c:
                    assert await c.submit(str.upper, SECRET) == SECRET.upper()
                    with pytest.raises(ValueError):
                        await c.submit(leak, SECRET)

    asyncio.run(run())
    text = path.read_text()
    assert "dask.task.transition" in text and '"erred"' in text
    assert SECRET not in text and SECRET.upper() not in text


def test_options_reprs_mask_secrets_through_the_one_base_repr() -> None:
    from dask_eventbus.backends.kafka import KafkaBackend
    from dask_eventbus.backends.redis import RedisBackend
    from dask_eventbus.backends.webhook import WebhookBackend

    backends = [
        RedisBackend(url="redis://user:hunter2@h:6379/0"),
        RedisBackend(url="redis://h:6379/0", password="hunter3"),
        WebhookBackend(url="http://u:hunter4@h/x", secret="whsec_hunter5",
                       headers={"Authorization": "Bearer hunter6"}),
        KafkaBackend(topic="t", config={"bootstrap.servers": "h:9092",
                                        "sasl.password": "hunter7"}),
    ]  # fmt: skip
    for backend in backends:
        shown = f"{backend.options!r} {backend!r} {backend.destination()}"
        assert "hunter" not in shown, shown
        # Every option is shown (the base repr), not a hand-picked few.
        assert "content-mode" in repr(backend.options)


def test_destination_masks_what_a_careless_describe_would_show() -> None:
    from dask_eventbus import Backend, BackendOptions

    class CarelessOptions(BackendOptions):
        url: str = "https://user:hunter8@h/in"
        token: str = "hunter9"

    class Careless(Backend):
        name = "careless"
        Options = CarelessOptions

        def publish(self, messages: Any) -> None:
            pass

        def describe(self) -> str:
            return f"{self.options.url} with token {self.options.token}"

    backend = Careless()
    assert backend.destination() == "https://user:***@h/in with token ***"
    assert "hunter" not in repr(backend)
