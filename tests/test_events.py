"""The event model: normalization of odd inputs, the codec, the shipped schema."""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
import time
from typing import Any

import msgspec
import pytest
from cloudevents.core.formats.json import JSONFormat
from dask.utils import key_split
from distributed.utils import key_split_group
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from dask_eventbus.events import (
    LOG,
    OVERSIZED,
    TASK_TRANSITION,
    Event,
    _with_clean_descriptions,
    json_schema,
    key_to_str,
    load_shipped_schema,
)
from dask_eventbus.normalize import Normalizer
from dask_eventbus.records import LogRecord, TransitionRecord

VALIDATOR = Draft202012Validator(load_shipped_schema(), format_checker=FormatChecker())
NORMALIZER = Normalizer("/tests/events", "run", max_text_length=100)


def transition(key: Any, extra: dict[str, Any] | None = None, finish: str = "erred") -> bytes:
    record = TransitionRecord(1, time.time(), key, "processing", finish, "s-1", extra=extra or {})
    return NORMALIZER.event(record).to_json()


def log(message: Any, topic: Any = "topic") -> bytes:
    return NORMALIZER.event(LogRecord(2, time.time(), topic, message)).to_json()


def assert_valid(body: bytes) -> dict[str, Any]:
    document = json.loads(body)
    errors = list(VALIDATOR.iter_errors(document))
    assert not errors, errors[0].message
    JSONFormat().read(None, body)
    return document


def test_the_shipped_schema_is_generated_from_the_event_types() -> None:
    assert load_shipped_schema() == json.loads(json.dumps(json_schema())), (
        "dask_eventbus/event-schema.json is stale: regenerate it with "
        "python -c 'import json, dask_eventbus.events as e; "
        "print(json.dumps(e.json_schema(), indent=2))' > dask_eventbus/event-schema.json"
    )


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("inc-0123456789abcdef0123456789abcdef", "inc-0123456789abcdef0123456789abcdef"),
        (("x-1", 3), "('x-1', 3)"),
        (("a", ("b", 1), 2.5), "('a', ('b', 1), 2.5)"),
        (b"bytes-key", "bytes-key"),
        (b"bytes-\xff", "bytes-\\xff"),
        (42, "42"),
        (1.5, "1.5"),
        ("ünïcødé-ключ-キー", "ünïcødé-ключ-キー"),
        ("('x-2', 1)", "('x-2', 1)"),
        ("<module.Klass object at 0x1>", "<module.Klass object at 0x1>"),
        ("0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
        ((), "()"),
        ("", ""),
    ],
)
def test_every_key_form_becomes_a_stable_string(key: Any, text: str) -> None:
    assert key_to_str(key) == text
    document = assert_valid(transition(key))
    data = document["data"]
    assert data["key"] == text
    assert document.get("subject") == (text or None)
    # The same task group and prefix names the scheduler gives the task.
    assert data["prefix"] == name_by(key_split, key)
    assert data["group"] == name_by(key_split_group, key)


def name_by(function: Any, key: Any) -> str:
    try:
        return str(function(key))
    except Exception:  # Dask cannot name it either
        return "Other"


def test_huge_tracebacks_are_truncated_and_can_be_turned_off() -> None:
    extra = {"exception_text": "E" * 10_000, "traceback_text": "T" * 1_000_000, "worker": "w"}
    data = assert_valid(transition("k", extra))["data"]
    assert len(data["exception"]) == 100 and data["exception"].endswith("...")
    assert len(data["traceback"]) == 100
    quiet = Normalizer("/tests/events", "run", include_tracebacks=False)
    record = TransitionRecord(1, time.time(), "k", "processing", "erred", "s", extra=extra)
    assert "exception" not in quiet.event(record).to_dict()["data"]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle")

    def __repr__(self) -> str:
        return "<Unpicklable>"


class BadException(Exception):
    def __str__(self) -> str:
        raise ValueError("str of the exception fails")


def test_log_messages_with_unencodable_values_are_made_json_safe() -> None:
    message = {
        "obj": Unpicklable(),
        "unprintable": Unprintable(),
        "exc": BadException(),
        "set": {3},
        "tuple-key": {("a", 1): "v"},
        "bytes": b"\x00\xff",
        "nan": float("nan"),
        "big": 2**80,
    }
    document = assert_valid(log(message, topic=Unprintable()))
    data = document["data"]
    assert data["topic"] == "<unprintable Unprintable>"
    assert data["message"]["obj"] == "<Unpicklable>"


def test_events_round_trip_through_from_json() -> None:
    body = transition(("x", 1), {"nbytes": 8, "typename": "int", "worker": "tcp://w:1"}, "memory")
    event = Event.from_json(body)
    assert event.type == TASK_TRANSITION and event.subject == "('x', 1)"
    assert event.sequence == "00000000000000000001" and event.sequence_number == 1
    assert event.to_json() == body
    with pytest.raises(msgspec.ValidationError):
        Event.from_json(b'{"specversion": "1.0"}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.integers(), children, max_size=5)
        | st.tuples(children, children)
    ),
    max_leaves=30,
)
dask_keys = st.recursive(
    st.text() | st.binary() | st.integers() | st.floats(allow_nan=False),
    lambda children: st.tuples(children, children) | st.tuples(children),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=dask_keys, message=json_values, text=st.text())
def test_any_key_and_payload_encode_to_valid_cloudevents(key: Any, message: Any, text: str) -> None:
    extra = {"exception_text": text, "traceback_text": text * 3}
    assert_valid(transition(key, extra))
    assert_valid(log(message, topic=key))


DEEP_NESTING = """
import json, time
from dask_eventbus.normalize import Normalizer
from dask_eventbus.records import LogRecord
nested = cursor = []
for _ in range(5000):
    cursor.append([])
    cursor = cursor[0]
event = Normalizer("/tests/events", "run").event(LogRecord(1, time.time(), "t", {"deep": nested}))
print(json.loads(event.to_json())["data"]["message"]["deep"][0][0][0] is not None)
"""


def test_nesting_deeper_than_the_encoder_allows_still_encodes() -> None:
    # In a process of its own: the RecursionError msgspec raises on the way
    # trips a CPython 3.11 bug that later breaks pytest's traceback display.
    result = subprocess.run(
        [sys.executable, "-c", DEEP_NESTING], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_an_event_over_max_event_bytes_is_replaced_in_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dask_eventbus.messages import build_messages

    normalizer = Normalizer("/tests/events", "run", max_event_bytes=4096)
    now = time.time()
    records = [
        TransitionRecord(1, now, "before", "processing", "memory", "s-1"),
        LogRecord(2, now, "huge-topic", {"blob": "x" * 10_000}),
        TransitionRecord(3, now, "after", "processing", "memory", "s-3"),
    ]
    with caplog.at_level(logging.WARNING, logger="distributed.eventbus"):
        messages = build_messages(normalizer, records)
    assert [m.type for m in messages] == [TASK_TRANSITION, OVERSIZED, TASK_TRANSITION]
    assert all(len(m.body) <= 4096 for m in messages)
    assert_valid(messages[1].body)
    replaced = Event.from_json(messages[1].body)
    original = normalizer.event(records[1])
    assert (replaced.id, replaced.sequence, replaced.subject, replaced.time) == (
        original.id,
        original.sequence,
        "huge-topic",
        original.time,
    )
    assert replaced.data == {"type": LOG, "size": len(original.to_json()), "limit": 4096}
    assert messages[1].routing_key == OVERSIZED and messages[1].sequence == 2
    assert "over eventbus.events.max-event-bytes (4096)" in caplog.text
    assert f"{original.id} (dask.log, subject 'huge-topic')" in caplog.text


def test_an_oversized_event_cuts_a_subject_that_is_itself_too_large() -> None:
    from dask_eventbus.messages import build_messages

    normalizer = Normalizer("/tests/events", "run", max_event_bytes=4096)
    huge_key = "k" * 10_000
    (message,) = build_messages(
        normalizer, [TransitionRecord(1, time.time(), huge_key, "released", "waiting")]
    )
    assert_valid(message.body)
    event = Event.from_json(message.body)
    assert event.type == OVERSIZED and len(message.body) <= 4096
    assert event.subject == huge_key[:997] + "..."
    assert event.data["type"] == TASK_TRANSITION


def test_schema_descriptions_are_the_same_whatever_msgspec_does_with_docstrings() -> None:
    class Indented(msgspec.Struct):
        """First line.

        Second paragraph, indented as in source.
        """

    as_older_msgspec = {"description": Indented.__doc__, "items": [{"description": " x\n"}]}
    as_newer_msgspec = {
        "description": inspect.cleandoc(Indented.__doc__ or ""),
        "items": [{"description": "x"}],
    }
    assert _with_clean_descriptions(as_older_msgspec) == _with_clean_descriptions(as_newer_msgspec)
    assert _with_clean_descriptions(as_older_msgspec)["description"] == (
        "First line.\n\nSecond paragraph, indented as in source."
    )
