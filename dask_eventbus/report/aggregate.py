"""What a report keeps of one scheduler's events beyond the shared state.

The shared :class:`~dask_eventbus.consume.state.SourceState` holds tasks,
workers, graphs, spans and failures; the report adds, through its hooks,
what only its pages draw: compute durations per prefix, seconds per action,
counts over time in a bounded number of buckets and a bounded sample of the
task stream.
"""

from __future__ import annotations

import random
from array import array
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..consume.sequence import SequenceTracker
from ..consume.state import ERRED, PROCESSING, SourceState, Task, WorkerSpell
from .timeline import Timeline

# Series of the progress timeline besides the per-prefix ones.
PROCESSING_SERIES = ("processing",)


@dataclass(slots=True)
class StreamTask:
    """A finished task as the task stream draws it."""

    worker: str
    key: str
    prefix: str
    erred: bool
    startstops: list[tuple[str, float, float]]


class SourceAggregate(SourceState):
    """Everything one source (scheduler) contributes to a report.

    ``runs`` is the reader's sequence accounting for this source, per
    plugin run.
    """

    def __init__(
        self,
        source: str,
        stream_limit: int = 50_000,
        runs: dict[str, SequenceTracker] | None = None,
    ) -> None:
        super().__init__(source)
        self.stream_limit = stream_limit
        self.runs = {} if runs is None else runs
        self.compute: dict[str, array] = {}
        self.action_seconds: defaultdict[str, float] = defaultdict(float)
        self.timeline = Timeline()
        self.stream: list[StreamTask] = []
        self.stream_erred: list[StreamTask] = []
        self.stream_seen = 0
        self._series: dict[str, tuple[tuple[str, str], ...]] = {}
        self._actions: list[tuple[str, float, float]] = []
        self._random = random.Random(17)

    def _prefix_series(self, prefix: str) -> tuple[tuple[str, str], ...]:
        series = self._series.get(prefix)
        if series is None:
            series = self._series[prefix] = (("added", prefix), ("done", prefix))
        return series

    def on_task_added(self, task: Task, when: float) -> None:
        self.timeline.add(when, self._prefix_series(task.prefix)[0])

    def on_transition(self, task: Task, start: str, when: float) -> None:
        if start == PROCESSING:
            self.timeline.add(when, PROCESSING_SERIES, -1)
        if task.state == PROCESSING:
            self.timeline.add(when, PROCESSING_SERIES, 1)

    def on_action(
        self,
        task: Task,
        worker: WorkerSpell,
        action: str,
        start: float,
        stop: float,
        source: str | None,
    ) -> None:
        self._actions.append((action, start, stop))
        self.action_seconds[action] += stop - start
        if action == "compute":
            durations = self.compute.get(task.prefix)
            if durations is None:
                durations = self.compute[task.prefix] = array("d")
            durations.append(stop - start)

    def on_task_finished(
        self, task: Task, data: dict[str, Any], when: float, *, erred: bool, first: bool
    ) -> None:
        if first:
            self.timeline.add(when, self._prefix_series(task.prefix)[1])
        actions, self._actions = self._actions, []
        if actions and task.worker is not None:
            self._sample(StreamTask(task.worker, task.key, task.prefix, erred, actions))

    def _sample(self, item: StreamTask) -> None:
        if item.erred:
            # Failures are what people look for: keep them apart from the
            # random sample, up to a tenth of the limit.
            if len(self.stream_erred) < max(1, self.stream_limit // 10):
                self.stream_erred.append(item)
            return
        self.stream_seen += 1
        if len(self.stream) < self.stream_limit:
            self.stream.append(item)
        else:
            slot = self._random.randrange(self.stream_seen)
            if slot < self.stream_limit:
                self.stream[slot] = item


__all__ = ["ERRED", "SourceAggregate", "StreamTask"]
