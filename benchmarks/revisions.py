"""Two revisions of the package side by side: a benchmark run alternately
against each, medians and the after/before ratio in one table.

Each revision is a source tree (a checkout or ``git worktree``): its own
``benchmarks/<script>`` runs in the tree, with the tree first on
``PYTHONPATH``, so it imports that tree's ``dask_eventbus`` and so does its
publisher process (started with ``python -c``, which looks in the working
directory first: run from one tree, both revisions used that tree's).
Every run prints the benchmark's markdown table; the rows and numeric
columns are collected.

    git worktree add /tmp/before <revision>
    python benchmarks/revisions.py --before /tmp/before --after . --runs 3 \\
        -- event_cost.py -c noop -c eventbus:jsonl -c eventbus:redis
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
from collections import defaultdict

from common import command_line, markdown_table

_NUMBER = re.compile(r"^-?[\d,]*\.?\d+(e[-+]?\d+)?$")


def run(tree: str, script: list[str]) -> tuple[list[str], dict[str, list[float | None]]]:
    """One run of the benchmark against ``tree``: header and rows of numbers."""
    root = pathlib.Path(tree).resolve()
    benchmarks = root / "benchmarks"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(benchmarks)])}
    output = subprocess.run(
        [sys.executable, str(benchmarks / script[0]), *script[1:]],
        env=env, cwd=root, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = [line for line in output.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        numeric = [float(c.replace(",", "")) if _NUMBER.match(c) else None for c in cells]
        # The leading text cells name the row (e.g. backend and raw client).
        width = next((i for i, n in enumerate(numeric) if n is not None), len(cells))
        rows[" / ".join(cells[:width])] = [None] * (width - 1) + numeric[width:]
    return header, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="source tree of the old revision")
    parser.add_argument("--after", required=True, help="source tree of the new revision")
    parser.add_argument("--runs", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- benchmark.py [args]")
    args = parser.parse_args()
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    values: dict[str, dict[tuple[str, int], list[float]]] = {
        "before": defaultdict(list),
        "after": defaultdict(list),
    }
    header: list[str] = []
    for _ in range(args.runs):
        for side, tree in (("before", args.before), ("after", args.after)):
            header, rows = run(tree, script)
            for label, numbers in rows.items():
                for column, number in enumerate(numbers):
                    if number is not None:
                        values[side][label, column].append(number)
    table = []
    for (label, column), before in values["before"].items():
        after = values["after"].get((label, column))
        if not after:
            continue
        b, a = statistics.median(before), statistics.median(after)
        table.append([label, header[column + 1], b, a, a / b if b else float("nan")])
    print(f"{args.runs} alternating runs of each revision (medians of the runs' figures)\n")
    print(markdown_table(["row", "column", "before", "after", "after/before"], table))
    print(f"\n`{command_line()}`")


if __name__ == "__main__":
    main()
