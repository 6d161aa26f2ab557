"""Reading a spool directory without taking it over: what it holds, what is damaged."""

from __future__ import annotations

import os
from typing import Any

from .format import (
    QUARANTINE,
    SEGMENT_MAGIC,
    Head,
    list_segments,
    read_checkpoint,
    read_payload,
    scan,
    segment_name,
)
from .lock import is_locked, lock_owner


def inspect_spool(path: str, verify: bool = False) -> dict[str, Any]:
    """What a spool directory holds, read without taking it over.

    Per source: its undelivered events' sequence ranges, count, bytes, oldest
    and newest event time. ``damaged`` lists records whose checksums fail
    (every payload is read and checked when ``verify``, else only the heads);
    damage at the very end of the last segment is a ``torn`` write, which the
    next start truncates. ``quarantined`` lists the parts moved aside.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no spool directory at {path}")
    segments = list_segments(path)
    checkpoint = read_checkpoint(path)
    sources: dict[str, dict[str, Any]] = {}
    damaged: list[dict[str, Any]] = []
    torn: dict[str, Any] | None = None
    total_bytes = 0
    for index, number in enumerate(segments):
        name = os.path.join(path, segment_name(number))
        size = os.path.getsize(name)
        total_bytes += size
        if checkpoint is not None and number < checkpoint[0]:
            continue
        start = checkpoint[1] if checkpoint is not None and number == checkpoint[0] else 0
        last_segment = index == len(segments) - 1
        with open(name, "rb") as f:
            fd = f.fileno()
            if size >= len(SEGMENT_MAGIC) and os.pread(fd, len(SEGMENT_MAGIC), 0) != SEGMENT_MAGIC:
                damaged.append(_damaged(number, 0, size, "bad segment header", None))
                continue
            for item in scan(fd, max(start, len(SEGMENT_MAGIC)), size):
                if isinstance(item, Head):
                    if verify and read_payload(fd, item) is None:
                        bad = _damaged(number, item.offset, item.end, "payload checksum", item)
                        damaged.append(bad)
                    else:
                        _add(sources, item)
                elif item.following is None and last_segment:
                    torn = {"segment": number, "offset": item.start, "bytes": size - item.start}
                else:
                    damaged.append(_damaged(number, item.start, item.end, "record header", None))
    if segments:
        first = max(checkpoint[0], segments[0]) if checkpoint else segments[0]
        expected = set(range(first, segments[-1] + 1))
        for number in sorted(expected - set(segments)):
            missing = {"segment": number, "offset": 0, "bytes": None, "reason": "missing segment"}
            damaged.append(missing)
    quarantine = os.path.join(path, QUARANTINE)
    quarantined = (
        [
            {"file": name, "bytes": os.path.getsize(os.path.join(quarantine, name))}
            for name in sorted(os.listdir(quarantine))
        ]
        if os.path.isdir(quarantine)
        else []
    )
    for source in sources.values():
        source["ranges"] = _ranges(source.pop("sequences"))
    return {
        "path": path,
        "segments": len(segments),
        "bytes": total_bytes,
        "delivered_up_to": list(checkpoint) if checkpoint else None,
        "owner": lock_owner(path) if is_locked(path) else None,
        "events": sum(s["events"] for s in sources.values()),
        "sources": sources,
        "damaged": damaged,
        "torn": torn,
        "quarantined": quarantined,
        "verified": verify,
    }


def _damaged(number: int, start: int, end: int, reason: str, head: Head | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"segment": number, "offset": start, "bytes": end - start}
    entry["reason"] = reason
    if head is not None:
        entry.update(source=head.source, first_sequence=head.first, last_sequence=head.last)
    return entry


def _add(sources: dict[str, dict[str, Any]], head: Head) -> None:
    source = sources.setdefault(
        head.source,
        {
            "events": 0,
            "bytes": 0,
            "oldest": head.first_time,
            "newest": head.last_time,
            "sequences": [],
        },
    )
    source["events"] += head.events
    source["bytes"] += head.end - head.offset
    source["oldest"] = min(source["oldest"], head.first_time)
    source["newest"] = max(source["newest"], head.last_time)
    source["sequences"].append((head.first, head.last))


def _ranges(pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Contiguous runs of sequence numbers, ``[[first, last], ...]``."""
    runs: list[list[int]] = []
    for first, last in sorted(pairs):
        if runs and first <= runs[-1][1] + 1:
            runs[-1][1] = max(runs[-1][1], last)
        else:
            runs.append([first, last])
    return runs
