"""How ``dask-eventbus archive`` and ``history`` cope with a large run.

Generates report_scale.py's realistic stream (default 1,000,000 events,
about 200,000 tasks), archives it the way a user would, as a child process
(``dask-eventbus archive FILE --to URL``), into each database asked for,
and prints per database the wall time and peak resident memory of the
archive, and how long each ``history`` question takes on the result,
against the targets (60 s, 500 MiB, 1 s per question).

    python benchmarks/archive_scale.py
    python benchmarks/archive_scale.py --events 200000 --postgres postgresql://postgres@127.0.0.1
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from report_scale import generate

from dask_eventbus.history.database import connect
from dask_eventbus.history.queries import ANSWERS

TARGET_SECONDS = 60.0
TARGET_BYTES = 500 * 2**20
TARGET_QUESTION_SECONDS = 1.0


def archive_child(events_file: Path, url: str) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of ``dask-eventbus archive`` as a child."""
    command = [str(Path(sys.executable).parent / "dask-eventbus"), "archive", str(events_file)]
    started = time.perf_counter()
    # A wrapper process per run, so that RUSAGE_CHILDREN is this run's alone.
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command, "--to", url],
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - started, int(done.stdout.split()[-1]) * 1024


def question_seconds(url: str) -> dict[str, float]:
    database = connect(url, migrate=False)
    try:
        seconds = {}
        for question, answer in ANSWERS.items():
            started = time.perf_counter()
            answer(database, None, None, None, 50)
            seconds[question] = time.perf_counter() - started
        return seconds
    finally:
        database.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432",
        help="A server to make a scratch database on ('' to skip PostgreSQL).",
    )
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="archive-scale-"))
    admin = None
    scratch = f"eventbus_bench_{uuid.uuid4().hex[:8]}"
    try:
        events_file = folder / "events.jsonl"
        count = generate(events_file, args.events, 16, 4, 20_000)
        print(f"Generated {count:,} events ({events_file.stat().st_size / 1e6:,.0f} MB)")
        urls = {"sqlite": f"sqlite:///{folder / 'history.db'}"}
        if args.postgres:
            import psycopg

            admin = psycopg.connect(args.postgres + "/postgres", autocommit=True)
            admin.execute(f"CREATE DATABASE {scratch}")
            urls["postgresql"] = f"{args.postgres}/{scratch}"
        print(f"\n$ python benchmarks/archive_scale.py --events {args.events}")
        print(
            "| database | archive time | peak memory | "
            + " | ".join(f"history {q}" for q in ANSWERS)
            + " |"
        )
        print("| --- " * (3 + len(ANSWERS)) + "|")
        within = True
        for name, url in urls.items():
            seconds, peak = archive_child(events_file, url)
            asked = question_seconds(url)
            size = ""
            if name == "sqlite":
                size = f" ({os.path.getsize(folder / 'history.db') / 1e6:,.0f} MB file)"
            print(
                f"| {name}{size} | {seconds:.1f} s | {peak / 2**20:,.0f} MiB | "
                + " | ".join(f"{asked[q]:.2f} s" for q in ANSWERS)
                + " |"
            )
            within &= seconds <= TARGET_SECONDS and peak <= TARGET_BYTES
            within &= all(s <= TARGET_QUESTION_SECONDS for s in asked.values())
        print(
            f"targets: {TARGET_SECONDS:.0f} s, {TARGET_BYTES / 2**20:.0f} MiB, "
            f"{TARGET_QUESTION_SECONDS:.0f} s per question: "
            + ("within the targets" if within else "OVER A TARGET")
        )
    finally:
        if admin is not None:
            admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
            admin.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
