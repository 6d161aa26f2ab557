"""Make the screenshots of docs/top.rst from the recorded two-cluster run.

    python docs/images/top/screenshots.py        # PNG with chromium, else SVG

Each view is drawn headless by Textual at 100x30 from
tests/data/top-two-clusters.jsonl.gz (the stream the tests replay) and saved
as SVG; headless Chromium turns each into the PNG the page shows.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from dask_eventbus.consume.inputs import FileInput
from dask_eventbus.top.app import TopApp
from dask_eventbus.top.ingest import Ingest
from dask_eventbus.top.model import TopModel

HERE = Path(__file__).parent
RECORDED = HERE.parents[2] / "tests" / "data" / "top-two-clusters.jsonl.gz"
SIZE = (100, 30)
DURING_PAUSE = datetime(2026, 12, 6, 18, 41, 54, tzinfo=timezone.utc)

SHOTS = {
    "clusters": ([], None),
    "computations": (["2", "j"], None),
    "workers": (["3"], DURING_PAUSE),
    "workers-end": (["3"], None),
    "failures": (["4"], None),
    "failure-traceback": (["4", "G", "k", "enter"], None),
    "log": (["5"], None),
    "keys": (["question_mark"], None),
}


async def shoot(name: str, keys: list[str], until: datetime | None) -> Path:
    model = TopModel(until=until)
    ingest = Ingest(model, FileInput(RECORDED))
    app = TopApp(model, ingest, refresh_seconds=60, describe=RECORDED.name)
    async with app.run_test(size=SIZE) as pilot:
        ingest.wait(10)
        app.refresh_view()
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
            app.refresh_view()
            await pilot.pause()
        app.save_screenshot(f"top-{name}.svg", str(HERE))
    return HERE / f"top-{name}.svg"


def to_png(svg: Path, chromium: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--window-size=1000,740",
                f"--screenshot={svg.with_suffix('.png')}", svg.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    for name, (keys, until) in SHOTS.items():
        svg = asyncio.run(shoot(name, keys, until))
        if chromium:
            to_png(svg, chromium)
            svg.unlink()  # the docs show the PNG
        print(svg.with_suffix(".png") if chromium else svg)


if __name__ == "__main__":
    main()
