"""An asyncio event loop in a thread of its own, for asyncio-only client libraries.

The publisher calls a backend synchronously from one thread (or process); a
client library that speaks only asyncio (nats-py) runs on a loop that the
backend starts in ``open`` and stops in ``close``, so that no thread, task or
socket outlives the backend. :meth:`LoopThread.run` hands a coroutine to the
loop and waits for it, bounded in time; :meth:`LoopThread.cancel` makes a
wait on another thread give up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """A running event loop on a daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._lock = threading.Lock()
        self._waiting: set[concurrent.futures.Future[Any]] = set()
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the loop and return its result.

        Raises what it raised; :class:`TimeoutError` when it took longer than
        ``timeout`` seconds (it is then cancelled); :class:`asyncio.CancelledError`
        when :meth:`cancel` ended it.
        """
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        with self._lock:
            self._waiting.add(future)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result in {timeout:g}s") from None
        except concurrent.futures.CancelledError:
            raise asyncio.CancelledError("cancelled while waiting") from None
        finally:
            with self._lock:
                self._waiting.discard(future)

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run ``coroutine`` on the loop without waiting for it (after what came before)."""
        asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def cancel(self) -> None:
        """Make every :meth:`run` waiting now give up; safe from any thread."""
        with self._lock:
            waiting = list(self._waiting)
        for future in waiting:
            future.cancel()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop, stop it, join the thread and close
        the loop; safe to repeat. Not to be called from the loop's own thread."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_all() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
