"""The eventbus config namespace: defaults, sources, validation messages."""

from __future__ import annotations

import sys
import textwrap
from typing import Any

import dask
import pytest

from dask_eventbus import ConfigError, EventBusPlugin, get_backend, load_settings
from dask_eventbus.config import DEFAULTS, redact_value


def test_defaults_are_merged_into_dask_config() -> None:
    assert dask.config.get("eventbus.backend") == "jsonl"
    settings = load_settings()
    assert settings.queue.flush_interval == 0.05
    assert settings.queue.overflow == "drop-oldest"
    assert settings.close_timeout == 10.0
    assert settings.backends["jsonl"]["path"] == "dask-events.jsonl"


def test_environment_variables_configure_the_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_EVENTBUS__BACKEND", "memory")
    monkeypatch.setenv("DASK_EVENTBUS__QUEUE__MAX_EVENTS", "5000")
    monkeypatch.setenv("DASK_EVENTBUS__QUEUE__FLUSH_INTERVAL", "2s")
    monkeypatch.setenv("DASK_EVENTBUS__BACKENDS__MEMORY__NAME", "from-env")
    try:
        dask.config.refresh()
        settings = load_settings()
        assert settings.backend == "memory"
        assert settings.queue.max_events == 5000
        assert settings.queue.flush_interval == 2.0
        plugin = EventBusPlugin()
        assert plugin.backend.options.name == "from-env"
    finally:
        monkeypatch.undo()
        dask.config.refresh()
    assert load_settings().backend == "jsonl"


@pytest.mark.parametrize(
    ("key", "value", "fragments"),
    [
        ("queue.max-events", 0, ["eventbus.queue.max-events = 0", ">= 1"]),
        ("queue.max-events", "lots", ["eventbus.queue.max-events = 'lots'", "Expected `int`"]),
        ("queue.batch-size", -3, ["eventbus.queue.batch-size = -3", ">= 1"]),
        ("queue.batch-size", 200_000, ["eventbus.queue", "must not exceed max-events"]),
        ("queue.overflow", "drop-random", ["eventbus.queue.overflow = 'drop-random'", "enum"]),
        ("queue.flush-interval", "soon", ["eventbus.queue.flush-interval = 'soon'", "duration"]),
        ("queue.flush-interval", 0, ["eventbus.queue.flush-interval = 0: must be greater than 0"]),
        ("retry.initial-backoff", True, ["eventbus.retry.initial-backoff = True", "duration"]),
        ("retry.max-backoff", "1ms", ["max-backoff (0.001s) must be at least initial-backoff"]),
        ("close-timeout", -5, ["eventbus.close-timeout = -5", "must not be negative"]),
        ("events.include", "dask.*", ["eventbus.events.include = 'dask.*'", "Expected `array`"]),
        ("events.max-text-length", 3, ["eventbus.events.max-text-length = 3", ">= 16"]),
        ("transitions.exclude", [1], ["eventbus.transitions.exclude[0] = 1", "Expected `str`"]),
        ("backend", "", ["backend must name a backend"]),
        ("queue.bogus", 1, ["eventbus.queue", "unknown field `bogus`"]),
        ("backends", ["redis"], ["eventbus.backends = ['redis']", "Expected `object`"]),
    ],
)
def test_invalid_values_are_refused_with_key_value_and_rule(
    key: str, value: Any, fragments: list[str]
) -> None:
    with dask.config.set({f"eventbus.{key}": value}), pytest.raises(ConfigError) as info:
        EventBusPlugin("memory")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unknown_backend_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as info:
        EventBusPlugin("carrier-pigeon")
    message = str(info.value)
    assert "'carrier-pigeon'" in message
    assert "jsonl" in message and "memory" in message


def test_unknown_backend_option_is_named() -> None:
    with pytest.raises(ConfigError, match=r"eventbus\.backends\.jsonl.*unknown field `colour`"):
        EventBusPlugin("jsonl", colour="blue")


def test_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"queue": {"max-event": 5}})
    assert "unknown field `max-event`; known: batch-size, flush-interval, max-events" in str(
        info.value
    )


# Every older option name, its value, and what it must set.
ALIASES = [
    ("kafka", "timeout", "3s", {"connect_timeout": 3.0, "publish_timeout": 3.0}),
    ("kafka", "create-topic", False, {"create_missing": False}),
    ("nats", "create-stream", False, {"create_missing": False}),
    ("rabbitmq", "declare", False, {"create_missing": False}),
    ("redis", "socket-timeout", "2s", {"publish_timeout": 2.0}),
    ("webhook", "timeout", "2s", {"connect_timeout": 2.0, "publish_timeout": 2.0}),
]


@pytest.mark.parametrize("name, alias, value, expected", ALIASES)
def test_older_option_names_are_accepted_as_aliases(
    name: str, alias: str, value: Any, expected: dict[str, Any]
) -> None:
    new_names = [field.replace("_", "-") for field in expected]
    for spelled in (alias, alias.replace("-", "_")):
        with dask.config.set({f"eventbus.backends.{name}.{spelled}": value}):
            made = EventBusPlugin(name).backend  # under the shipped defaults of the new names
        assert {f: getattr(made.options, f) for f in expected} == expected
    # The new name given too: the same value or its default is fine, another is refused.
    same = get_backend(name)(**{alias: value, new_names[0]: value})
    assert {f: getattr(same.options, f) for f in expected} == expected
    if isinstance(value, bool):  # no third value to disagree with
        assert made.provisioning_option == "create-missing"
        return
    with pytest.raises(ConfigError) as info:
        get_backend(name)(**{alias: value, new_names[0]: "17s"})
    message = str(info.value)
    assert f"eventbus.backends.{name}.{alias} = {value!r}" in message
    assert f"Set only {new_names[0]}" in message
    # A bad value is named as written; explanations name the new options.
    with pytest.raises(ConfigError, match=f"eventbus.backends.{name}.{alias} = 0"):
        get_backend(name)(**{alias: 0})
    assert set(made.timeout_options) == {"connect-timeout", "publish-timeout"}


def test_a_backend_whose_library_is_missing_says_what_to_install(tmp_path, monkeypatch) -> None:
    dist = tmp_path / "dask_eventbus_broken_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dask-eventbus-broken-backend\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [dask_eventbus.backends]
            pigeon = pigeon_post_client_not_installed:PigeonBackend
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        get_backend("pigeon")
    message = str(info.value)
    assert "No module named 'pigeon_post_client_not_installed'" in message
    assert "install the package that provides" in message
    assert "pigeon_post_client_not_installed" not in sys.modules


def test_built_in_backends_are_found_without_reading_every_package(monkeypatch) -> None:
    import importlib.metadata

    from dask_eventbus.backends.jsonl import JsonLinesBackend

    def every_package(**selection: Any) -> Any:
        raise AssertionError(f"read every installed package's entry points for {selection}")

    monkeypatch.setattr(importlib.metadata, "entry_points", every_package)
    assert get_backend("jsonl") is JsonLinesBackend


def test_the_defaults_file_is_valid_and_complete() -> None:
    settings = load_settings()
    assert set(DEFAULTS["eventbus"]) == {
        "backend",
        "source",
        "events",
        "transitions",
        "queue",
        "pipeline",
        "retry",
        "spool",
        "close-timeout",
        "backends",
    }
    assert settings == load_settings({})


def test_secrets_are_masked() -> None:
    masked = redact_value(
        "eventbus",
        {
            "backends": {
                "redis": {"url": "redis://user:hunter2@localhost:6379/0"},
                "other": {"url": "redis://localhost/0?db=1&password=hunter2&x=1"},
                "kafka": {"config": {"sasl.password": "hunter2", "sasl.username": "bob"}},
                "rabbitmq": {"password": "hunter2", "url": "amqps://bob:hunter2@mq/vhost"},
            }
        },
    )
    text = repr(masked)
    assert "hunter2" not in text
    assert "redis://user:***@localhost:6379/0" in text
    assert "redis://localhost/0?db=1&password=***&x=1" in text
    assert "'sasl.username': 'bob'" in text


def test_one_masker_finds_secrets_by_key_and_in_urls() -> None:
    from dask_eventbus.config import mask_secrets, secret_values

    options = {
        "url": "amqp://ops:p%40ss-w0rd@mq-1:5672//;amqp://ops:p%40ss-w0rd@mq-2:5672//",
        "password": "hunter22",
        "config": {"sasl.password": "kafka-secret", "linger.ms": 5},
        "user": "guest",
        "same": "redis://guest:guest@cache:6379/0",
    }
    secrets = secret_values("", options)
    assert secrets == {"p%40ss-w0rd", "p@ss-w0rd", "hunter22", "kafka-secret"}
    text = "auth failed for p@ss-w0rd, hunter22 and kafka-secret at amqp://ops:p%40ss-w0rd@mq-1"
    masked = mask_secrets(text, secrets)
    assert masked == "auth failed for ***, *** and *** at amqp://ops:***@mq-1"
    # Short secrets are left to the URL patterns, which still catch them in URLs.
    assert mask_secrets("pw abc in redis://u:abc@h?password=abc", {"abc"}) == (
        "pw abc in redis://u:***@h?password=***"
    )
