"""OpenTelemetry: real workloads as traces at a real OTLP/HTTP receiver (decoded
with opentelemetry-proto), the SDK's own exporter against the same receiver,
and delivery through 503, 400, partial success and an outage."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import pytest
from dask import delayed
from distributed import Client, Scheduler, Worker, span
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from otlp_receiver import OtlpReceiver, attribute_dict, partial_success

from dask_eventbus import EventBusPlugin
from dask_eventbus.backends import Backend, Message, create_backend
from dask_eventbus.backends.memory import drop_store, get_store
from dask_eventbus.config import load_settings
from dask_eventbus.events import Event
from dask_eventbus.normalize import Normalizer
from dask_eventbus.otel.export import settings_from_environment
from dask_eventbus.otel.mapping import span_id
from dask_eventbus.otel.pipeline import OtelExport
from dask_eventbus.publisher import Publisher
from dask_eventbus.testing import FaultProxy, unique_name
from dask_eventbus.testing.workload import add, inc

pytestmark = pytest.mark.timeout(180)

BIN = Path(sys.executable).parent


def boom(x: int) -> int:
    raise ValueError(f"bad block {x}")


def total(values: list[int]) -> int:
    return sum(values)


# -------------------------------------------------------------- a real run


async def _workload(store: str, traceparent: str) -> None:
    plugin = EventBusPlugin("memory", name=store)
    async with Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s:
        async with Worker(s.address, nthreads=2), Worker(s.address, nthreads=2):
            async with Client(s.address, asynchronous=True) as client:
                incs = [delayed(inc, pure=False)(i, dask_key_name=f"inc-{i}") for i in range(8)]
                adds = [
                    delayed(add)(a, b, dask_key_name=f"add-{i}")
                    for i, (a, b) in enumerate(zip(incs[::2], incs[1::2], strict=True))
                ]
                await client.compute(delayed(total)(adds, dask_key_name="total-0"))
                with span("outer"), span("inner"):
                    nested = [delayed(inc)(i, dask_key_name=f"nested-{i}") for i in range(3)]
                    await client.compute(delayed(total)(nested, dask_key_name="total-1"))
                failing = delayed(boom)(1, dask_key_name="boom-0")
                after = delayed(inc)(failing, dask_key_name="after-0")
                with pytest.raises(ValueError):
                    await client.compute(after)
                with dask.annotate(traceparent=traceparent):
                    joined = [delayed(inc)(i, dask_key_name=f"joined-{i}") for i in range(2)]
                    await client.compute(delayed(total)(joined, dask_key_name="total-2"))


@pytest.fixture(scope="module")
def sdk_tracing() -> Iterator[tuple[TracerProvider, list[Any]]]:
    """An OTel SDK tracer provider; its finished spans are kept in a list."""
    provider = TracerProvider()
    finished: list[Any] = []

    class Keep:
        def export(self, spans: Any) -> Any:
            finished.extend(spans)
            from opentelemetry.sdk.trace.export import SpanExportResult

            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 0) -> bool:
            return True

    provider.add_span_processor(SimpleSpanProcessor(Keep()))  # type: ignore[arg-type]
    yield provider, finished
    provider.shutdown()


@pytest.fixture(scope="module")
def real_run(sdk_tracing: tuple[TracerProvider, list[Any]]) -> tuple[list[Event], Any]:
    """Events of a real run, and the SDK span (a web request, say) that ran one
    computation under ``dask.annotate(traceparent=...)``."""
    provider, _ = sdk_tracing
    tracer = provider.get_tracer("a-web-service")
    store = unique_name()
    try:
        with tracer.start_as_current_span("handle-request") as outer:
            carrier: dict[str, str] = {}
            inject(carrier)
            asyncio.run(_workload(store, carrier["traceparent"]))
        events = get_store(store).events()
    finally:
        drop_store(store)
    return events, outer.get_span_context()


def replay(events: list[Event], endpoint: str, **settings: Any) -> OtelExport:
    export = OtelExport(settings_from_environment(endpoint=endpoint, **settings))
    for event in events:
        export.take(event.to_json())
    export.finish()
    export.flush()
    export.close()
    return export


def task_runs(events: list[Event]) -> dict[str, dict[str, Any]]:
    """Per key, the transition that ended its run on a worker."""
    return {
        e.data["key"]: e.data
        for e in events
        if e.type == "dask.task.transition"
        and e.data["start"] == "processing"
        and e.data["finish"] in ("memory", "erred")
        and e.data.get("startstops")
    }


def test_every_run_is_a_trace_and_every_task_run_a_span_as_the_events_say(
    real_run: tuple[list[Event], Any],
) -> None:
    events, _ = real_run
    with OtlpReceiver() as receiver:
        export = replay(events, receiver.endpoint)
    spans = [s for _, s in receiver.spans()]
    submissions = [e for e in events if e.type == "dask.graph.updated"]
    roots = [s for s in spans if s.name.startswith("dask.graph")]
    assert len(roots) == len({s.trace_id for s in spans}) == len(submissions) == 4
    assert export.counts.refused_requests == 0 and export.counts.rejected_spans == 0

    runs = task_runs(events)
    by_key = {attribute_dict(s.attributes).get("dask.key"): s for s in spans}
    ids = {s.span_id: s for s in spans}
    dependencies = {
        t["key"]: t["dependencies"]
        for e in events
        if e.type == "dask.graph.tasks"
        for t in e.data["tasks"]
    }
    source, run = events[0].source, events[0].id.rpartition("-")[0]
    for key, transition in runs.items():
        task_span = by_key[key]
        starts = [a["start"] for a in transition["startstops"]]
        stops = [a["stop"] for a in transition["startstops"]]
        assert task_span.start_time_unix_nano == int(min(starts) * 1e9)
        assert task_span.end_time_unix_nano == int(max(stops) * 1e9)
        assert task_span.name == transition["prefix"]
        attributes = attribute_dict(task_span.attributes)
        assert attributes["dask.worker"] == transition["worker"]
        assert attributes["dask.attempt"] == 1
        parent = ids[task_span.parent_span_id]
        assert parent.trace_id == task_span.trace_id
        # Its Dask span ("default" outside any `with span(...)`), else the root.
        assert parent.name.startswith("dask.graph") or "dask.span_id" in attribute_dict(
            parent.attributes
        )
        linked = {link.span_id for link in task_span.links}
        assert linked == {span_id(source, run, d, "1") for d in dependencies[key]}
        assert all(link.span_id in ids for link in task_span.links)  # targets were sent
    # One span per task run, no more.
    keyed = Counter(attribute_dict(s.attributes).get("dask.key") for s in spans)
    del keyed[None]
    assert keyed == Counter(list(runs))

    failed = by_key["boom-0"]
    assert failed.status.code == 2  # ERROR
    (exception,) = [e for e in failed.events if e.name == "exception"]
    assert attribute_dict(exception.attributes)["exception.type"] == "ValueError"
    assert "bad block 1" in attribute_dict(exception.attributes)["exception.message"]
    assert "boom" in attribute_dict(exception.attributes)["exception.stacktrace"]
    (failed_root,) = [r for r in roots if r.trace_id == failed.trace_id]
    assert failed_root.status.code == 2
    assert attribute_dict(failed_root.attributes)["dask.tasks_erred"] == 2  # and after-0

    compute = [e for e in by_key["inc-0"].events if e.name == "compute"]
    assert len(compute) == 1 and attribute_dict(compute[0].attributes)["dask.duration_seconds"] >= 0


def test_dask_spans_nest_and_a_traceparent_joins_the_callers_trace(
    real_run: tuple[list[Event], Any], sdk_tracing: tuple[TracerProvider, list[Any]]
) -> None:
    events, outer = real_run
    with OtlpReceiver() as receiver:
        replay(events, receiver.endpoint)
        # The caller's own span, sent by the SDK's exporter to the same receiver.
        _, finished = sdk_tracing
        exporter = OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces")
        exporter.export(finished)
        exporter.shutdown()
    spans = [s for _, s in receiver.spans()]
    by_name = {s.name: s for s in spans}
    inner, outer_span = by_name["outer/inner"], by_name["outer"]
    assert inner.parent_span_id == outer_span.span_id
    nested = [s for s in spans if attribute_dict(s.attributes).get("dask.prefix") == "nested"]
    assert len(nested) == 3 and all(s.parent_span_id == inner.span_id for s in nested)
    assert spans_by_id(spans)[outer_span.parent_span_id].name.startswith("dask.graph")

    caller = by_name["handle-request"]
    assert caller.trace_id == outer.trace_id.to_bytes(16, "big")
    joined = [s for s in spans if s.trace_id == caller.trace_id and s is not caller]
    (root,) = [s for s in joined if s.name.startswith("dask.graph")]
    assert root.parent_span_id == caller.span_id
    assert {attribute_dict(s.attributes).get("dask.key") for s in joined} >= {
        "joined-0",
        "joined-1",
        "total-2",
    }


def spans_by_id(spans: list[Any]) -> dict[bytes, Any]:
    return {s.span_id: s for s in spans}


def test_the_sdk_exporter_and_ours_send_the_same_kind_of_request(
    real_run: tuple[list[Event], Any], sdk_tracing: tuple[TracerProvider, list[Any]]
) -> None:
    events, _ = real_run
    _, finished = sdk_tracing
    with OtlpReceiver() as receiver:
        exporter = OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces")
        exporter.export(finished)
        exporter.shutdown()
        replay(events[:40], receiver.endpoint, compression="none")
    sdk, ours = receiver.received[0], receiver.received[1]
    assert sdk.path == ours.path == "/v1/traces"
    assert sdk.headers["content-type"] == ours.headers["content-type"] == "application/x-protobuf"
    for request in (sdk, ours):
        (resource_spans,) = request.message.resource_spans
        assert resource_spans.scope_spans[0].spans
        assert attribute_dict(resource_spans.resource.attributes)["service.name"]
    ours_resource = attribute_dict(ours.message.resource_spans[0].resource.attributes)
    assert ours_resource["service.name"] == "dask"
    assert ours_resource["service.instance.id"] == events[0].source
    assert ours_resource["dask.scheduler.address"].startswith("tcp://")
    assert ours_resource["dask_eventbus.version"]


def test_the_json_encoding_writes_hex_ids_and_says_the_same(
    real_run: tuple[list[Event], Any],
) -> None:
    events, _ = real_run
    with OtlpReceiver() as as_protobuf, OtlpReceiver() as as_json:
        replay(events, as_protobuf.endpoint)
        replay(events, as_json.endpoint, protocol="http/json")
    assert all(r.headers["content-type"] == "application/json" for r in as_json.received)
    assert all(r.headers["content-encoding"] == "gzip" for r in as_json.received)
    written = [i for r in as_json.received for i in r.json_ids]
    assert written and all(len(i) in (16, 32) and int(i, 16) >= 0 for i in written)
    assert sorted(s.SerializeToString() for _, s in as_json.spans()) == sorted(
        s.SerializeToString() for _, s in as_protobuf.spans()
    )


def test_replaying_a_file_with_the_command(
    real_run: tuple[list[Event], Any], tmp_path: Path
) -> None:
    events, _ = real_run
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    with OtlpReceiver() as receiver:
        done = subprocess.run(
            [str(BIN / "dask-eventbus"), "otel", str(path), "--endpoint", receiver.endpoint],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    runs = len(task_runs(events))
    assert f"({runs:,} task runs)" in done.stderr
    assert len({s.trace_id for _, s in receiver.spans()}) == 4


def test_a_huge_graph_keeps_its_errors_and_slowest_within_the_budget() -> None:
    from dask_eventbus.messages import build_messages
    from dask_eventbus.records import GraphRecord, TransitionRecord

    normalizer = Normalizer("dask://huge", "run1")
    work = [f"work-{i}" for i in range(2000)]
    records: list[Any] = [GraphRecord(1, 100.0, "client-1", work, work, 2000, "update-graph-1")]
    for i in range(2000):
        key = f"work-{i}"
        records.append(TransitionRecord(len(records) + 1, 100.0, key, "released", "waiting"))
    for i in range(2000):
        key, erred = f"work-{i}", i in (7, 1500)
        duration = 5.0 if i % 500 == 0 else 0.01  # the four slowest
        extra = {
            "worker": "tcp://w:1",
            "startstops": [{"action": "compute", "start": 101.0 + i, "stop": 101.0 + i + duration}],
        }
        if erred:
            extra |= {"exception": f"ValueError('bad {i}')", "traceback": "...", "cause": key}
        records.append(
            TransitionRecord(
                len(records) + 1,
                110.0 + i,
                key,
                "processing",
                "erred" if erred else "memory",
                worker="tcp://w:1",
                extra=extra,
                group="work",
                prefix="work",
            )
        )
    messages = build_messages(normalizer, records)
    with OtlpReceiver() as receiver:
        export = OtelExport(settings_from_environment(endpoint=receiver.endpoint))
        export.trace_settings = type(export.trace_settings)(max_spans_per_trace=100)
        for message in messages:
            export.take(message.body)
        export.finish()
        export.flush()
        export.close()
    spans = [s for _, s in receiver.spans()]
    # The budget, and work-1500: it erred after the budget was spent, and erred
    # tasks are kept past it.
    assert len(spans) == 101
    keys = {attribute_dict(s.attributes).get("dask.key") for s in spans}
    assert {"work-7", "work-1500"} <= keys  # erred: always kept
    assert {"work-0", "work-500", "work-1000"} <= keys  # the slowest of the prefix
    (summary,) = [s for s in spans if attribute_dict(s.attributes).get("dask.summary")]
    (root,) = [s for s in spans if s.name.startswith("dask.graph")]
    assert root.name == "dask.graph work"
    root_attributes = attribute_dict(root.attributes)
    kept = root_attributes["dask.task_spans_kept"]
    assert root_attributes["dask.task_runs"] == 2000
    assert kept + attribute_dict(summary.attributes)["dask.tasks"] == 2000
    assert summary.start_time_unix_nano >= int(101e9)


# ------------------------------------------------------------------ delivery


def messages_of(events: list[Event]) -> list[Message]:
    return [
        Message(
            body=e.to_json(),
            id=e.id,
            type=e.type,
            subject=e.subject,
            sequence=int(e.sequence),
            time=e.time.timestamp(),
            routing_key=e.type,
            source=e.source,
        )
        for e in events
    ]


@pytest.fixture
def publisher() -> Iterator[Callable[[Backend], Publisher]]:
    settings = load_settings({"retry": {"initial-backoff": "50ms", "max-backoff": "300ms"}})
    made: list[Publisher] = []

    def make(backend: Backend) -> Publisher:
        made.append(Publisher(backend, Normalizer("/tests/otlp", "otlp-test"), settings))
        return made[-1]

    yield make
    for each in made:
        each.finish()


def test_503_with_retry_after_is_waited_out_and_nothing_is_lost(
    real_run: tuple[list[Event], Any], publisher: Callable[[Backend], Publisher]
) -> None:
    events, _ = real_run
    with OtlpReceiver() as clean:
        replay(events, clean.endpoint)
    with OtlpReceiver() as receiver:
        receiver.answer_next(503, {"Retry-After": "1"}, b"busy")
        sending = publisher(create_backend("otlp", {"endpoint": receiver.endpoint}))
        assert sending.deliver(messages_of(events))
        sending.finish()
        (first_at, first), (second_at, second) = receiver.answered[:2]
        assert (first, second) == (503, 200)
        assert second_at - first_at >= 0.95  # the backoff alone would be 50 ms
        assert sending.stats.retries == 1 and sending.stats.refused == 0
    assert sorted(s.SerializeToString() for _, s in receiver.spans()) == sorted(
        s.SerializeToString() for _, s in clean.spans()
    )


def test_400_is_refused_announced_and_not_retried(
    real_run: tuple[list[Event], Any],
    publisher: Callable[[Backend], Publisher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    events, _ = real_run
    with OtlpReceiver() as receiver:
        receiver.answer_next(400, {}, b'{"message": "bad span"}')
        options = {"endpoint": receiver.endpoint, "headers": {"x-api-key": "s3cret"}}
        backend = create_backend("otlp", options)
        sending = publisher(backend)
        with caplog.at_level(logging.WARNING, logger="distributed.eventbus"):
            assert sending.deliver(messages_of(events))
        statuses = [status for _, status in receiver.answered]
        assert statuses.count(400) == 1 and sending.stats.retries == 0
        assert sending.stats.refused == len(events)
        assert "HTTP 400" in caplog.text and "bad span" in caplog.text
        assert "s3cret" not in caplog.text + repr(backend) + repr(backend.options)
        # The refusal is announced where the traces go, as a log record.
        (announced,) = [
            r
            for r in receiver.log_records()
            if attribute_dict(r.attributes).get("event.name") == "dask.eventbus.dropped"
        ]
        said = attribute_dict(announced.attributes)
        assert (said["count"], said["policy"]) == (len(events), "refused")
        assert announced.severity_text == "WARN"


def test_a_partial_success_is_counted_and_logged(
    real_run: tuple[list[Event], Any], caplog: pytest.LogCaptureFixture
) -> None:
    events, _ = real_run
    with OtlpReceiver() as receiver:
        receiver.answer_next(
            200, {"content-type": "application/x-protobuf"}, partial_success(3, "too old")
        )
        with caplog.at_level(logging.WARNING, logger="distributed.eventbus"):
            export = replay(events, receiver.endpoint)
    assert export.counts.rejected_spans == 3
    assert "rejected 3 spans: too old" in caplog.text


@pytest.mark.slow
def test_a_receiver_down_for_30_seconds_loses_nothing_with_the_spool(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver, FaultProxy(("127.0.0.1", receiver.port)) as proxy:
        endpoint = f"http://127.0.0.1:{proxy.port}"
        config = {
            "eventbus.spool.path": str(tmp_path / "spool"),
            "eventbus.backends.otlp.endpoint": endpoint,
            "eventbus.backends.otlp.timeout": "1s",
            "eventbus.retry.max-backoff": "1s",
        }
        with dask.config.set(config):
            plugin = EventBusPlugin("otlp")

        async def run() -> int:
            async with (
                Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s,
                Worker(s.address, nthreads=2),
                Client(s.address, asynchronous=True) as c,
            ):
                await c.gather(c.map(inc, range(20), key=[f"first-{i}" for i in range(20)]))
                proxy.set_mode("refuse")
                proxy.cut()
                down = time.monotonic()
                await c.gather(c.map(inc, range(20), key=[f"during-{i}" for i in range(20)]))
                while time.monotonic() - down < 30:
                    await asyncio.sleep(0.5)
                proxy.set_mode("pass")
                await c.gather(c.map(inc, range(20), key=[f"after-{i}" for i in range(20)]))
                return 60

        expected = asyncio.run(run())
    keys = {attribute_dict(s.attributes).get("dask.key") for _, s in receiver.spans()}
    assert len([k for k in keys if k and k.split("-")[0] in ("first", "during", "after")]) == (
        expected
    )


def test_the_otlp_backend_under_a_scheduler_sends_its_traces() -> None:
    with OtlpReceiver() as receiver:
        with dask.config.set({"eventbus.backends.otlp.endpoint": receiver.endpoint}):
            plugin = EventBusPlugin("otlp")

        async def run() -> None:
            async with (
                Scheduler(host="127.0.0.1", dashboard_address="127.0.0.1:0", plugins=[plugin]) as s,
                Worker(s.address, nthreads=2),
                Client(s.address, asynchronous=True) as c,
            ):
                await c.gather(c.map(inc, range(10), key=[f"inc-{i}" for i in range(10)]))
                await c.submit(add, 1, 2, key="add-0")

        asyncio.run(run())
        deadline = time.monotonic() + 10
        while len(receiver.spans()) < 13 and time.monotonic() < deadline:
            time.sleep(0.05)
    spans = [s for _, s in receiver.spans()]
    assert len([s for s in spans if s.name.startswith("dask.graph")]) == 2
    assert {attribute_dict(s.attributes).get("dask.key") for s in spans} >= {
        *(f"inc-{i}" for i in range(10)),
        "add-0",
    }


def test_logs_and_status_changes_become_log_records_with_their_tasks_ids() -> None:
    from dask_eventbus.messages import build_messages
    from dask_eventbus.records import (
        GraphRecord,
        LogRecord,
        TransitionRecord,
        WorkerStatusRecord,
    )

    startstops = [{"action": "compute", "start": 101.0, "stop": 102.0}]
    records: list[Any] = [
        GraphRecord(1, 100.0, "client-1", ["k-1"], ["k-1"], 1, "update-graph-1"),
        TransitionRecord(2, 100.0, "k-1", "released", "waiting"),
        TransitionRecord(3, 100.5, "k-1", "waiting", "processing", worker="tcp://w:1"),
        LogRecord(4, 101.5, "progress", {"key": "k-1", "done": 0.5}),
        LogRecord(5, 101.6, "progress", {"note": "no task named"}),
        WorkerStatusRecord(6, 101.7, "tcp://w:1", "paused", "running", "worker-status-change"),
        TransitionRecord(
            7,
            102.5,
            "k-1",
            "processing",
            "memory",
            worker="tcp://w:1",
            extra={"worker": "tcp://w:1", "startstops": startstops, "nbytes": 8},
        ),
    ]
    messages = build_messages(Normalizer("dask://logs", "run1"), records)
    with OtlpReceiver() as receiver:
        export = OtelExport(settings_from_environment(endpoint=receiver.endpoint))
        for message in messages:
            export.take(message.body)
        export.finish()
        export.flush()
        export.close()
    (task_span,) = [
        s for _, s in receiver.spans() if attribute_dict(s.attributes).get("dask.key") == "k-1"
    ]
    named, unnamed, status = receiver.log_records()
    assert json.loads(named.body.string_value) == {"key": "k-1", "done": 0.5}
    assert (named.trace_id, named.span_id) == (task_span.trace_id, task_span.span_id)
    assert attribute_dict(named.attributes) == {"event.name": "dask.log", "dask.topic": "progress"}
    assert named.time_unix_nano == int(101.5e9)
    assert (unnamed.trace_id, unnamed.span_id) == (b"", b"")
    assert status.severity_text == "WARN" and "running -> paused" in status.body.string_value
    assert attribute_dict(status.attributes)["dask.status"] == "paused"
    assert export.counts.logs == 3


def test_without_the_otlp_extra_the_command_says_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("")
    hide = "import sys; sys.modules['opentelemetry.proto'] = None; "
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            hide + "from dask_eventbus.cli import main; main()",
            "otel",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "needs opentelemetry.proto: pip install 'dask-eventbus[otlp]'" in done.stderr


def test_without_opentelemetry_proto_the_backend_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dask_eventbus import ConfigError

    monkeypatch.setitem(sys.modules, "opentelemetry.proto", None)
    with pytest.raises(ConfigError, match=r"pip install 'dask-eventbus\[otlp\]'"):
        EventBusPlugin("otlp")
