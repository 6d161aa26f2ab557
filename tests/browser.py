"""Headless Chromium driven over the DevTools protocol, for the report's page.

Chromium is started with ``--remote-debugging-port=0``; it prints the
browser's WebSocket address, and tornado (a dependency of distributed) speaks
the protocol. The page's script errors (uncaught exceptions, console errors)
are collected while it loads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary, if one is installed."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


@dataclass
class PageErrors:
    """Script errors seen on the page: uncaught exceptions and console errors."""

    messages: list[str] = field(default_factory=list)


class Browser:
    """One headless Chromium with one page; use ``async with``."""

    def __init__(self, binary: str, profile: Path, width: int = 1400, height: int = 1000) -> None:
        self.binary = binary
        self.profile = profile
        self.width = width
        self.height = height
        self.errors = PageErrors()
        self._process: asyncio.subprocess.Process | None = None
        self._socket: WebSocketClientConnection | None = None
        self._session: str | None = None
        self._next_id = 0
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Browser:
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            "--headless",
            "--no-sandbox",  # tests run as root in CI
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            address = await asyncio.wait_for(self._devtools_address(), 60)
            self._socket = await websocket_connect(address, max_message_size=256 << 20)
            self._reader = asyncio.create_task(self._read())
            target = await self.send("Target.createTarget", url="about:blank")
            attached = await self.send(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            self._session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                await self.send(f"{domain}.enable")
            await self.send(
                "Emulation.setDeviceMetricsOverride",
                width=self.width,
                height=self.height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    async def _devtools_address(self) -> str:
        assert self._process is not None and self._process.stderr is not None
        while True:
            line = await self._process.stderr.readline()
            if not line:
                raise RuntimeError("chromium exited before it listened for DevTools")
            found = re.search(rb"DevTools listening on (ws://\S+)", line)
            if found:
                # Keep reading stderr so chromium never blocks writing to it.
                self._drainer = asyncio.create_task(self._drain(self._process.stderr))
                return found.group(1).decode()

    @staticmethod
    async def _drain(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def _read(self) -> None:
        assert self._socket is not None
        while True:
            raw = await self._socket.read_message()
            if raw is None:
                return
            message = json.loads(raw)
            if "id" in message:
                future = self._replies.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            method = message.get("method", "")
            params = message.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                self.errors.messages.append(f"uncaught: {text}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
                self.errors.messages.append("console.error: " + " ".join(map(str, args)))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                self.errors.messages.append(f"log: {params['entry'].get('text')}")
            self._events.setdefault(method, asyncio.Event()).set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method (on the page once attached) and return its result."""
        assert self._socket is not None
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None and not method.startswith("Target."):
            message["sessionId"] = self._session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = future
        await self._socket.write_message(json.dumps(message))
        reply = await asyncio.wait_for(future, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def open(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        loaded = self._events.setdefault("Page.loadEventFired", asyncio.Event())
        loaded.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(loaded.wait(), 60)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression on the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        """Save a PNG of the whole page (as tall as its content)."""
        size = await self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        clip = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        shot = await self.send(
            "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    async def _stop(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send("Browser.close"), 10)
            self._socket.close()
            self._socket = None
        if self._reader is not None:
            self._reader.cancel()
        if self._process is not None:
            try:
                await asyncio.wait_for(self._process.wait(), 20)
            except asyncio.TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._drainer is not None:
            # Ends at the end of chromium's stderr, once it has exited.
            await asyncio.wait_for(self._drainer, 20)
