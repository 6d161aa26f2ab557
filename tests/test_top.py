"""dask-eventbus top: the model over a recorded run, the screens, the keys, the bounds.

The screens are compared with text snapshots in tests/data/top-snapshots/
that were read and checked by eye when they were made; after a deliberate
change to a view, look at the new screen and write it with
``TOP_UPDATE_SNAPSHOTS=1 pytest -n 0 tests/test_top.py``.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from dask_eventbus.cli import main
from dask_eventbus.consume.inputs import FileInput
from dask_eventbus.consume.state import MAX_SHARED_TEXTS
from dask_eventbus.events import GRAPH_UPDATED, LOG, TASK_TRANSITION
from dask_eventbus.messages import build_messages
from dask_eventbus.normalize import Normalizer
from dask_eventbus.records import DroppedRecord, TransitionRecord
from dask_eventbus.top import model as top_model
from dask_eventbus.top import views
from dask_eventbus.top.app import TopApp
from dask_eventbus.top.ingest import Ingest
from dask_eventbus.top.model import TopModel, TopSource, worker_status
from dask_eventbus.top.views import ERRED, bar

pytestmark = pytest.mark.timeout(60)

DATA = Path(__file__).parent / "data"
RECORDED = DATA / "top-two-clusters.jsonl.gz"
SNAPSHOTS = DATA / "top-snapshots"
ETL, ML = "dask://etl-host/etl", "dask://ml-host/ml"
# While the etl cluster's first worker was paused (see tests/record_top.py).
DURING_PAUSE = datetime(2026, 12, 6, 18, 41, 54, tzinfo=timezone.utc)


def replayed(**reader: Any) -> TopModel:
    model = TopModel(**reader)
    source = FileInput(RECORDED)
    try:
        while (bodies := source.read(1000)) is not None:
            for body in bodies:
                model.feed(body)
    finally:
        source.close()
    return model


def screen_text(app: TopApp) -> str:
    """The screen as plain text, the way export_screenshot renders it."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    console.print(update)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


async def drive(
    keys: Sequence[str],
    *,
    size: tuple[int, int] = (80, 24),
    svg: Path | None = None,
    **reader: Any,
) -> str:
    """Replay the recording at once, press ``keys``, return the screen."""
    model = TopModel(**reader)
    ingest = Ingest(model, FileInput(RECORDED))
    app = TopApp(model, ingest, refresh_seconds=60)
    async with app.run_test(size=size) as pilot:
        assert ingest.wait(10), "the replay did not end"
        app.refresh_view()
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
            app.refresh_view()
            await pilot.pause()
        if svg is not None:
            app.save_screenshot(svg.name, str(svg.parent))
        return screen_text(app)


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("TOP_UPDATE_SNAPSHOTS"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text + "\n")
        return
    assert path.exists(), f"no snapshot {path.name}: look at the screen and write it"
    expected = path.read_text().rstrip("\n")
    if text != expected:
        diff = "\n".join(
            difflib.unified_diff(expected.splitlines(), text.splitlines(), "snapshot", "screen")
        )
        pytest.fail(f"the {name} screen differs from its snapshot:\n{diff}")


# ---------------------------------------------------------------- the model


def test_the_recorded_run_folds_into_its_known_numbers() -> None:
    model = replayed()
    assert set(model.sources) == {ETL, ML}
    assert model.applied == 2352
    etl, ml = model.sources[ETL], model.sources[ML]
    now = model.now()
    assert etl.status(now) == "closed" and ml.status(now) == "running"

    progress = {
        tuple(c.prefixes): (c.total, c.done, c.erred, c.cancelled) for c in etl.computations
    }
    assert progress == {
        ("load",): (120, 120, 0, 0),
        ("clean",): (60, 60, 0, 0),
        ("parse",): (2, 0, 2, 0),
        ("merge",): (1, 0, 1, 0),
        ("publish",): (1, 0, 1, 0),
        ("slow",): (1, 0, 0, 1),
    }
    assert all(c.finished is not None for c in etl.computations)
    # Every task was forgotten when the client went: nothing held for them.
    assert etl.tasks == {} and etl._of_task == {} and sum(etl.states.values()) == 0

    fit, score = ml.computations
    assert (fit.total, fit.done, fit.finished is not None) == (90, 90, True)
    assert score.total == 60 and 0 < score.done < 60 and score.finished is None
    assert score.processing == ml.states["processing"] > 0
    estimate = score.estimate(now)
    assert estimate is not None and estimate > 0
    assert len(ml.live_workers()) == 3

    statuses = sorted(worker_status(w) for w in etl.workers)
    assert statuses == ["closed", "closed", "died"]
    (died,) = [w for w in etl.workers if worker_status(w) == "died"]
    assert died.processing == ["slow-0"]

    failures = {f.key: f for f in model.failures()}
    assert set(failures) == {"parse-0", "parse-1", "merge-0", "publish-0"}
    assert sorted(d.key for d in etl.dependents("parse-0")) == ["merge-0", "publish-0"]
    assert failures["publish-0"].cause == "parse-0"
    assert "bad record 0" in (failures["parse-0"].exception or "")
    assert etl.gaps() == 0 and etl.dropped == 0
    assert len(model.log) == model.log_count == 55


def test_a_source_and_a_window_keep_what_they_say() -> None:
    only_ml = replayed(source=ML)
    assert set(only_ml.sources) == {ML}
    paused = replayed(until=DURING_PAUSE)
    etl = paused.sources[ETL]
    assert sorted(worker_status(w) for w in etl.live_workers()) == ["paused", "running"]


def test_memory_stays_bounded_however_many_computations_and_failures() -> None:
    source = TopSource("dask://bench/one")
    when = 1_796_000_000.0
    for graph in range(300):
        stimulus = f"update-graph-{graph}"
        source.add(
            GRAPH_UPDATED,
            {"client": "c", "tasks": 20, "prefixes": {"inc": 20}, "stimulus_id": stimulus},
            when,
        )
        for i in range(20):
            key = f"inc-{graph}-{i}"
            base = {"key": key, "prefix": "inc", "group": "inc", "stimulus_id": stimulus}
            source.add(TASK_TRANSITION, {**base, "start": "released", "finish": "waiting"}, when)
            source.add(TASK_TRANSITION, {**base, "start": "waiting", "finish": "processing"}, when)
            failed = i == 0
            finish = {"start": "processing", "finish": "erred" if failed else "memory"}
            if failed:
                finish |= {"exception": f"ValueError({graph})", "traceback": "x" * 100}
            source.add(TASK_TRANSITION, {**base, **finish, "worker": "tcp://w:1"}, when + 0.5)
            last = "erred" if failed else "memory"
            source.add(TASK_TRANSITION, {**base, "start": last, "finish": "forgotten"}, when + 1)
        source.add(LOG, {"topic": "t", "message": graph}, when)
        when += 2
    assert source.tasks == {} and source._of_task == {} and source.failures == {}
    assert len(source.computations) == top_model.KEEP_COMPUTATIONS
    assert source.folded.computations == 300 - top_model.KEEP_COMPUTATIONS
    assert source.folded.done == (300 - top_model.KEEP_COMPUTATIONS) * 19
    assert len(source.graphs) <= top_model.KEEP_GRAPHS
    assert source.failure_count == 300 and len(source.recent_failures) <= top_model.KEEP_FAILURES


def test_bars_read_without_colour() -> None:
    assert bar(5, 1, 2, 10, 10).plain == f"█████{ERRED}▒▒··"
    assert bar(0, 1, 0, 1000, 10).plain == f"{ERRED}·········"  # never rounded away
    assert bar(0, 0, 0, 0, 4).plain == "····"


# ---------------------------------------------------------------- the screens


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("clusters", []),
        ("computations", ["2"]),
        ("computations-prefixes", ["2", "j", "enter"]),
        ("workers", ["3"]),
        ("failures", ["4"]),
        ("failure-traceback", ["4", "G", "k", "enter"]),
        ("log", ["5"]),
        ("keys", ["question_mark"]),
        ("cluster-drill-in", ["j", "enter"]),
        ("filter", ["5", "slash", *"cancel", "enter"]),
        ("tab-and-escape", ["2", "slash", *"fit", "enter", "tab", "escape"]),
    ],
)
def test_each_view_matches_its_snapshot(name: str, keys: list[str]) -> None:
    check_snapshot(name, asyncio.run(drive(keys)))


def test_a_paused_worker_shows_as_paused() -> None:
    text = asyncio.run(drive(["3"], until=DURING_PAUSE))
    check_snapshot("workers-paused", text)
    assert "paused" in text


def test_a_larger_terminal_shows_more() -> None:
    text = asyncio.run(drive(["4"], size=(140, 30)))
    check_snapshot("failures-wide", text)


def test_no_colour_keeps_every_state_readable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    text = asyncio.run(drive(["2"]))
    assert "█" in text and ERRED in text and "▒" in text


# ---------------------------------------------------------------- replay controls


def test_pause_step_and_speed_keys_control_the_replay() -> None:
    async def run() -> None:
        model = TopModel()
        ingest = Ingest(model, FileInput(RECORDED), speed=1.0)
        app = TopApp(model, ingest, refresh_seconds=60)
        async with app.run_test() as pilot:
            while model.latest is None:  # under way
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            await pilot.press("space")
            assert ingest.paused
            await asyncio.sleep(0.3)
            with model.lock:
                seen, latest = model.applied, model.latest
            await asyncio.sleep(0.3)
            assert model.applied == seen  # paused: nothing more
            assert seen < 2352
            first = ingest.position()  # where the pause stopped the replay clock
            assert first is not None and latest is not None and latest <= first
            await pilot.press("n")  # one more second of the recording
            deadline = time.monotonic() + 5
            while (model.latest or 0) < first + 0.5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert model.applied > seen
            assert model.latest is not None and model.latest <= first + 1.0 + 1e-6
            assert not ingest.ended
            for _ in range(6):
                await pilot.press("plus")
            assert ingest.speed == 1000
            await pilot.press("minus")
            assert ingest.speed == 100
            await pilot.press("plus", "plus")
            assert ingest.speed == 0  # past the fastest: at once
            await pilot.press("space")
            assert not ingest.paused
            assert ingest.wait(10)
            assert model.applied == 2352
            app.refresh_view()
            await pilot.pause()
            assert "end of input" in screen_text(app)

    asyncio.run(run())


def test_a_paced_replay_takes_its_time() -> None:
    model = TopModel()
    started = time.monotonic()
    ingest = Ingest(model, FileInput(RECORDED), speed=40.0).start()
    assert ingest.wait(20)
    ingest.stop()
    # The recording spans about ten seconds.
    assert time.monotonic() - started >= 0.2
    assert model.applied == 2352


def test_a_bad_speed_is_refused() -> None:
    source = FileInput(RECORDED)
    with pytest.raises(ValueError, match="speed"):
        Ingest(TopModel(), source, speed=-1)
    source.close()


# ---------------------------------------------------------------- the command


def test_the_command_names_what_is_wrong(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["top", str(tmp_path / "nothing.jsonl")])
    assert missing.exit_code == 1 and "no such events file" in missing.output
    both = runner.invoke(main, ["top", str(RECORDED), "-b", "redis"])
    assert both.exit_code == 2 and "either SOURCE or --backend" in both.output
    stdin = runner.invoke(main, ["top", "-"])
    assert stdin.exit_code == 2 and "give the events as a file" in stdin.output
    slow = runner.invoke(main, ["top", str(RECORDED), "--speed", "-2"])
    assert slow.exit_code == 2 and "--speed" in slow.output
    nofile = runner.invoke(main, ["top", "-b", "jsonl", "-o", f"path={tmp_path / 'events.jsonl'}"])
    assert nofile.exit_code == 1 and "no events file yet" in nofile.output


def test_the_clusters_view_shows_the_bus_health_and_the_computations_their_totals() -> None:
    normalizer = Normalizer("dask://test/one", "run1")
    start = 1_796_000_000.0
    records = [
        *(
            TransitionRecord(seq, start + seq, f"t-{seq}", "released", "waiting")
            for seq in (1, 2, 3, 6)
        ),
        DroppedRecord(9, start + 9, 3, 7, 9, "drop-oldest"),  # 7 to 9: dropped, announced
    ]
    bodies = [m.body for m in build_messages(normalizer, records)]
    model = TopModel()
    for body in [*bodies, bodies[1]]:  # one redelivered
        model.feed(body)
    state = model.sources["dask://test/one"]
    assert (state.gaps(), state.dropped, state.duplicates()) == (2, 3, 1)
    ((_, cells),) = views.clusters(model, model.now())
    assert cells[-1].plain == "2 lost, 3 dropped"

    state.folded = top_model.Folded(computations=400, tasks=8000, done=7600, erred=400)
    rows = views.computations(model, model.now(), None)
    assert rows[-1][0] == "folded|dask://test/one"
    assert [str(c) if not hasattr(c, "plain") else c.plain for c in rows[-1][1][1:5]] == [
        "400 earlier",
        "███████████" + ERRED,
        "8,000/8,000",
        "400",
    ]


def test_ever_new_exception_texts_do_not_pile_up() -> None:
    source = TopSource("dask://test/texts")
    for i in range(MAX_SHARED_TEXTS + 10):
        key = f"bad-{i}"
        base = {"key": key, "prefix": "bad", "worker": "tcp://w:1"}
        source.add(TASK_TRANSITION, {**base, "start": "released", "finish": "processing"}, i)
        failed = {"start": "processing", "finish": "erred", "exception": f"ValueError({i})"}
        source.add(TASK_TRANSITION, {**base, **failed}, i)
        source.add(TASK_TRANSITION, {**base, "start": "erred", "finish": "forgotten"}, i)
    assert len(source._texts) <= MAX_SHARED_TEXTS
    assert source.recent_failures[-1].exception == f"ValueError({i})"


def test_paused_before_the_first_event_a_step_replays_its_first_second() -> None:
    model = TopModel()
    ingest = Ingest(model, FileInput(RECORDED))
    ingest.pause()
    ingest.start()
    time.sleep(0.3)
    assert model.applied == 0
    ingest.step()
    deadline = time.monotonic() + 10
    while model.applied == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    first = replayed().sources  # the whole run, for its first event's time
    start = min(s.start for s in first.values() if s.start is not None)
    assert 0 < model.applied < 2352
    assert model.latest is not None and start <= model.latest <= start + 1.0
    ingest.resume()
    assert ingest.wait(10) and model.applied == 2352
    ingest.stop()
