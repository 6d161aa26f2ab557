"""dask-eventbus top end to end: in tmux, live from Redis, two clusters publishing at once."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dask.config
import pytest
from distributed import Client, LocalCluster
from harness_redis import STREAMS
from helpers import require_program

from dask_eventbus import EventBusPlugin

pytestmark = [pytest.mark.timeout(90), pytest.mark.broker]

BIN = Path(sys.executable).parent


def inc(x: int) -> int:
    time.sleep(0.01)
    return x + 1


def boom(x: int) -> int:
    raise RuntimeError(f"boom {x}")


class Tmux:
    """One tmux server of our own (its own socket), so that nothing else is touched."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.socket = f"top-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.program, "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top").stdout

    def wait_for(self, condition: Callable[[str], bool], what: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if condition(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"the screen never showed {what}:\n{screen}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self("has-session", "-t", "top").returncode == 0


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    server = Tmux(require_program("tmux"))
    yield server
    server("kill-server")
    # tmux leaves the socket file of a killed server behind.
    folder = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
    (folder / server.socket).unlink(missing_ok=True)


def cluster(url: str, stream: str, source: str) -> LocalCluster:
    settings = {"eventbus.source": source, "eventbus.events.worker-metrics-interval": "200ms"}
    with dask.config.set(settings):
        plugin = EventBusPlugin("redis", url=url, stream=stream)
    return LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=False,
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"plugins": [plugin]},
    )


stream = STREAMS.fixture("stream")


def test_top_shows_two_clusters_publishing_to_redis_at_once(
    redis_url: str, stream: str, tmux: Tmux
) -> None:
    command = [
        str(BIN / "dask-eventbus"), "top", "-b", "redis",
        "-o", f"url={redis_url}", "-o", f"stream={stream}", "--from-beginning",
    ]  # fmt: skip
    started = tmux(
        "new-session", "-d", "-s", "top", "-x", "100", "-y", "30",
        f"env TERM=xterm-256color {shlex.join(command)}",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    tmux.wait_for(lambda s: "0 clusters" in s and "Clusters" in s, "the empty view")

    with (
        cluster(redis_url, stream, "dask://e2e/alpha") as alpha,
        cluster(redis_url, stream, "dask://e2e/beta") as beta,
        Client(alpha) as a,
        Client(beta) as b,
    ):
        # Both compute at the same time, into the same stream.
        incs = a.map(inc, range(200), key=[f"inc-{i}" for i in range(200)])
        booms = b.map(boom, range(3), key=[f"boom-{i}" for i in range(3)])
        more = b.map(inc, range(100), key=[f"more-{i}" for i in range(100)])
        a.gather(incs)
        b.gather(more)
        assert all(f.status == "error" for f in booms)

        screen = tmux.wait_for(
            lambda s: "2 clusters" in s and "e2e/alpha" in s and "e2e/beta" in s,
            "both clusters",
        )
        lines = {line.split()[0]: line for line in screen.splitlines() if "e2e/" in line}
        assert "running" in lines["e2e/alpha"] and "running" in lines["e2e/beta"]

        tmux("send-keys", "-t", "top", "2")
        screen = tmux.wait_for(
            lambda s: "200/200" in s and "100/100" in s and "3/3" in s,
            "the computations done",
        )
        assert "inc" in screen and "more" in screen and "boom" in screen

        tmux("send-keys", "-t", "top", "3")
        tmux.wait_for(lambda s: s.count("running") >= 4, "four running workers")

        tmux("send-keys", "-t", "top", "4")
        tmux.wait_for(lambda s: s.count("RuntimeError('boom") == 3, "the three failures")
        tmux("send-keys", "-t", "top", "Enter")
        screen = tmux.wait_for(lambda s: "failure of boom-" in s, "a traceback")
        assert 'raise RuntimeError(f"boom {x}")' in screen
        tmux("send-keys", "-t", "top", "Escape")
        # A key right after Escape would arrive as Alt+key.
        tmux.wait_for(lambda s: "failure of" not in s, "the traceback closed")

        tmux("send-keys", "-t", "top", "1")
        tmux.wait_for(lambda s: "workers" in s and "e2e/alpha" in s, "the clusters again")
        tmux("send-keys", "-t", "top", "/")
        # As a person types: after the box opened (keys sent with the slash
        # in one write reach the table before the box takes the focus).
        tmux.wait_for(lambda s: "filter rows" in s, "the filter box")
        tmux("send-keys", "-t", "top", "b", "e", "t", "a", "Enter")
        screen = tmux.wait_for(lambda s: " · /beta" in s, "the filter")
        assert "e2e/beta" in screen and "e2e/alpha" not in screen

    # Closed clusters say so.
    tmux("send-keys", "-t", "top", "Escape")
    screen = tmux.wait_for(lambda s: s.count("closed") == 2, "both clusters closed")
    assert "e2e/alpha" in screen and "e2e/beta" in screen
    tmux("send-keys", "-t", "top", "q")
    deadline = time.monotonic() + 10
    while tmux.alive():
        assert time.monotonic() < deadline, "q did not quit"
        time.sleep(0.1)
