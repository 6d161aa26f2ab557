"""The dask-eventbus command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cloudevents.core.formats.json import JSONFormat

pytestmark = pytest.mark.timeout(180)

BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout=120):
    return subprocess.run(
        [str(BIN / "dask-eventbus"), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where ``dask-eventbus demo`` ran once on the default backend."""
    path = tmp_path_factory.mktemp("demo")
    result = run("demo", cwd=path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return path


def test_demo_runs_a_workload_and_says_where_the_events_went(demo_dir: Path) -> None:
    events_file = demo_dir / "dask-events.jsonl"
    lines = events_file.read_text().splitlines()
    types = {json.loads(line)["type"] for line in lines}
    assert {"dask.task.transition", "dask.worker.added", "dask.scheduler.closing"} <= types
    result = run("demo", cwd=demo_dir)
    assert f"file {events_file}" in result.stdout
    assert "dask.task.transition" in result.stdout
    assert "A second worker joined" in result.stdout
    assert "dask-eventbus tail --from-beginning" in result.stdout
    erred = [json.loads(line) for line in lines if '"erred"' in line]
    assert erred and "fails on purpose" in erred[0]["data"]["exception"]


def test_tail_prints_readable_lines_and_raw_json(demo_dir: Path) -> None:
    result = run("tail", "--from-beginning", "--count", "5", cwd=demo_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert "dask.scheduler.started" in lines[0] and "#1 " in lines[0]

    result = run(
        "tail", "--from-beginning", "--json", "--type", "dask.worker.*", "--idle-timeout", "1",
        cwd=demo_dir,
    )  # fmt: skip
    bodies = result.stdout.splitlines()
    assert bodies and all(json.loads(b)["type"].startswith("dask.worker.") for b in bodies)
    JSONFormat().read(None, bodies[0].encode())


@pytest.mark.slow
def test_tail_follows_new_events_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    tail = subprocess.Popen(
        [str(BIN / "dask-eventbus"), "tail", "-b", "jsonl", "-o", f"path={path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)  # tail is waiting for a file that does not exist yet
        result = run("check", "-b", "jsonl", "-o", f"path={path}")
        assert result.returncode == 0, result.stdout + result.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and path.stat().st_size == 0:
            time.sleep(0.1)
        time.sleep(1.0)
        tail.send_signal(signal.SIGINT)
        out, err = tail.communicate(timeout=20)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    assert "Traceback" not in err
    assert "dask.eventbus.probe" in out


def test_check_reports_a_working_round_trip(tmp_path: Path) -> None:
    result = run("check", "--backend", "jsonl", "--option", f"path={tmp_path / 'x.jsonl'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "publishing a probe event ... ok" in result.stdout
    assert "reading it back ... ok" in result.stdout
    assert result.stdout.rstrip().endswith("can be read back.")


PUBLISH_ONLY = """
from dask_eventbus import Backend, BackendOptions


class DropOptions(BackendOptions):
    path: str = "drop.jsonl"


class DropBackend(Backend):
    name = "drop"
    Options = DropOptions

    def publish(self, messages):
        with open(self.options.path, "ab") as f:
            f.writelines(m.body + b"\\n" for m in messages)
"""


def test_check_publishes_to_a_publish_only_backend_and_says_it_cannot_read_back(
    tmp_path: Path,
) -> None:
    (tmp_path / "publish_only.py").write_text(PUBLISH_ONLY)
    dist = tmp_path / "publish_only-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: publish-only\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[dask_eventbus.backends]\ndrop = publish_only:DropBackend\n"
    )
    target = tmp_path / "dropped.jsonl"
    result = run("check", "-b", "drop", "-o", f"path={target}", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "publishing a probe event ... ok" in result.stdout
    assert "publish-only, so it was not read back" in result.stdout
    (probe,) = [json.loads(line) for line in target.read_text().splitlines()]
    assert probe["type"] == "dask.eventbus.probe"
    assert probe["subject"] in result.stdout

    env = {"PYTHONPATH": str(tmp_path)}
    for command in (["tail"], ["report", "--format", "json"]):
        refused = run(*command, "--backend", "drop", "--option", f"path={target}", env=env)
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert "'drop' event bus backend is publish-only" in refused.stderr


def test_check_diagnoses_a_backend_it_cannot_reach(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = run("check", "-b", "jsonl", "-o", f"path={blocker / 'events.jsonl'}")
    assert result.returncode == 1
    assert "... failed" in result.stdout
    error = result.stderr.strip()
    assert error.startswith("Error: ") and "\n" not in error
    assert f"cannot use the events file {blocker / 'events.jsonl'}: Not a directory" in error


def test_errors_are_one_line_not_a_traceback() -> None:
    result = run("tail", "--backend", "carrier-pigeon")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "Unknown event bus backend 'carrier-pigeon'" in result.stderr
    assert "jsonl" in result.stderr

    result = run("check", "-b", "jsonl", "-o", "fsync=maybe")
    assert result.returncode == 1
    assert "eventbus.backends.jsonl.fsync = 'maybe'" in result.stderr


def test_config_prints_the_effective_config_with_secrets_masked() -> None:
    env = {
        "DASK_EVENTBUS__BACKEND": "memory",
        "DASK_EVENTBUS__BACKENDS__REDIS__URL": "redis://admin:hunter2@cache:6379/0",
    }
    result = run("config", env=env)
    assert result.returncode == 0, result.stderr
    assert "backend: memory" in result.stdout
    assert "redis://admin:***@cache:6379/0" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
    as_json = json.loads(run("config", "--json", env=env).stdout)
    assert as_json["eventbus"]["queue"]["max-events"] == 100000

    bad = run("config", env={"DASK_EVENTBUS__QUEUE__OVERFLOW": "drop-everything"})
    assert bad.returncode == 1
    assert "eventbus.queue.overflow = 'drop-everything'" in bad.stderr


@pytest.mark.parametrize("command", [[], ["demo"], ["tail"], ["check"], ["report"], ["config"]])
def test_every_command_has_help_with_examples(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0
    assert "Examples:" in result.stdout


def test_dask_cli_reaches_the_same_command() -> None:
    result = subprocess.run(
        [str(BIN / "dask"), "eventbus", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout and "tail" in result.stdout


def test_tail_says_what_the_schema_1_1_events_are_about() -> None:
    from dask_eventbus.cli import format_event
    from dask_eventbus.events import Event
    from dask_eventbus.normalize import Normalizer
    from dask_eventbus.records import (
        GraphTasksRecord,
        SpanRecord,
        WorkerMetricsRecord,
        WorkerRemovedRecord,
        WorkerStatusRecord,
    )

    worker = "tcp://10.0.0.7:40331"
    records = [
        WorkerStatusRecord(1, 1e9, worker, "paused", "running", "worker-status-change-1"),
        WorkerMetricsRecord(
            2, 1e9, worker, "paused", 8 * 2**30, 3, (6 * 2**30, 5 * 2**30, 2**30, 2**29),
            {"cpu": 97.5, "task_counts": {"executing": 2, "ready": 7}},
        ),
        WorkerRemovedRecord(
            3, 1e9, {"address": worker, "name": "w0"}, "handle-worker-cleanup-1",
            {"expected": False, "processing": ["inc-1"], "processing_total": 1},
        ),
        GraphTasksRecord(
            4, 1e9, "Client-1", "update-graph-1", 2, 3, ["a", "b"], [0, 1], ["a"],
            ["span-1", "span-1"], {}, 5000, 0,
        ),
        SpanRecord(5, 1e9, "span-2", ["etl", "clean"], "span-1"),
    ]  # fmt: skip
    normalizer = Normalizer("dask://host/Scheduler-1", "run")
    # As tail gets them: read back from JSON.
    lines = [format_event(Event.from_json(normalizer.event(r).to_json())) for r in records]
    assert lines[0].endswith(f"{worker}  running -> paused")
    assert "memory 6.00 GiB of 8.00 GiB (512.00 MiB spilled), cpu 98%" in lines[1]
    assert "executing 2 ready 7, processing 3" in lines[1]
    assert lines[2].endswith("name=w0 nthreads=None  expected=False  was running 1: inc-1")
    assert lines[3].endswith("Client-1  chunk 2/3: 2 of 5000 tasks")
    assert lines[4].endswith("etl / clean  span-2 in span-1")
