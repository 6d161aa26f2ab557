"""A jsonl backend that reports how the publisher process started it.

Imported by that process, so it imports nothing the process would not.
"""

from __future__ import annotations

import gc
import importlib
import json

from dask_eventbus.backends.jsonl import JsonLinesBackend


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# "wave": a standard module nothing in a publisher process imports otherwise.
WAVE_WHEN_IMPORTED = _importable("wave")
GC_WHEN_IMPORTED = gc.isenabled()


class StartupProbe(JsonLinesBackend):
    """Writes, as it opens, what its start looked like to ``<path>.startup``."""

    name = "startup-probe"
    unused_when_publishing = ("wave",)

    def open(self) -> None:
        super().open()
        seen = {
            "wave_when_imported": WAVE_WHEN_IMPORTED,
            "wave_when_publishing": _importable("wave"),
            "gc_when_imported": GC_WHEN_IMPORTED,
            "gc_when_publishing": gc.isenabled(),
            "frozen": gc.get_freeze_count(),
        }
        with open(self.path + ".startup", "w") as file:
            json.dump(seen, file)
