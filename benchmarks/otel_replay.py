"""How fast ``dask-eventbus otel`` replays a large run as traces.

Generates report_scale.py's realistic stream (default 1,000,000 events,
200,000 tasks), starts http_receiver.py (a local receiver answering every
request at once, in its own process), and replays the stream to it the way a
user would: ``dask-eventbus otel FILE --endpoint URL`` as a child process.
Prints the task runs mapped per second, the spans sent (the budget of
``max-spans-per-trace`` applies), the wall time and the peak resident memory,
against the targets (20,000 task spans per second, 1 GiB).

    python benchmarks/otel_replay.py
    python benchmarks/otel_replay.py --events 200000 --protocol http/json
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report_scale import generate

TARGET_RATE = 20_000
TARGET_BYTES = 2**30
HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--protocol", default="http/protobuf")
    parser.add_argument("--max-spans-per-trace", type=int, default=10_000)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="otel-replay-"))
    port = free_port()
    receiver = subprocess.Popen([sys.executable, str(HERE / "http_receiver.py"), str(port)])
    try:
        events_file = folder / "events.jsonl"
        count = generate(events_file, args.events, 16, 4, 20_000)
        print(f"Generated {count:,} events ({events_file.stat().st_size / 1e6:,.0f} MB)")
        command = [
            str(Path(sys.executable).parent / "dask-eventbus"),
            "otel",
            str(events_file),
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--protocol",
            args.protocol,
            "--max-spans-per-trace",
            str(args.max_spans_per_trace),
        ]
        wrapper = (
            "import resource, subprocess, sys; "
            "done = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True); "
            "print(done.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        time.sleep(0.3)  # the receiver listening
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", wrapper, *command], check=True, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        peak = int(done.stdout.split()[-1]) * 1024
        sent = re.search(r"Sent ([\d,]+) spans \(([\d,]+) task runs\)", done.stdout)
        assert sent is not None, done.stdout
        spans, runs = (int(group.replace(",", "")) for group in sent.groups())
        rate = runs / seconds
        command_line = f"--events {args.events} --protocol {args.protocol}"
        print(f"\n$ python benchmarks/otel_replay.py {command_line}")
        print("| measure | value | target |\n| --- | --- | --- |")
        print(f"| task runs mapped | {runs:,} in {seconds:.1f} s: {rate:,.0f}/s", end="")
        print(f" | ≥ {TARGET_RATE:,}/s |")
        print(f"| spans sent | {spans:,} ({spans / seconds:,.0f}/s) | |")
        print(f"| peak memory | {peak / 2**20:,.0f} MiB | ≤ {TARGET_BYTES / 2**30:.0f} GiB |")
        within = rate >= TARGET_RATE and peak <= TARGET_BYTES
        print("within the targets" if within else "OVER A TARGET")
    finally:
        receiver.terminate()
        receiver.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
