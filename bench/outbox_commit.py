"""What one commit costs as the outbox fills, measured side by side in one run.

    .venv/bin/python bench/outbox_commit.py [--sizes 1000,50000,200000] [--commits 60]

An outbox grows for as long as the cloud is away (a month of a five-controller home is ~250k
items), and the relay commits a group every few tens of milliseconds the whole time, so a
commit must cost the same in a full outbox as in an empty one. For each size the bench fills
an outbox on this machine's temporary directory with that many events (in large groups), then
times ``--commits`` one-item commits (the median, so a stray fsync stall does not decide it),
and does the same again for an outbox held at its item cap (every commit evicts).

- ``commit_ms``: the median one-item commit at each size; ``at_cap_commit_ms`` the same with
  ``max_items`` equal to the size (each commit drops the oldest item).
- ``growth``: the largest size's median over the smallest's; ``at_cap_growth`` likewise.

Goal: growth <= 2 and at_cap_growth <= 2 (the fsync, not the size, is the cost). The last line
is always the JSON result, with ``error`` if the run broke.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from gateway.store.outbox import NewItem, Outbox, OutboxLimits

FILL_GROUP = 10_000
BODY = json.dumps({"kind": "valve_opened", "channel": 3, "pad": "x" * 120})


def median_commit_ms(outbox: Outbox, commits: int) -> float:
    times = []
    for n in range(commits):
        item = NewItem(f"{100000 + n % 5}", "event", 0.0, BODY)
        start = time.perf_counter()
        outbox.put_many([item])
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def filled(path: Path, size: int, limits: OutboxLimits) -> Outbox:
    outbox = Outbox(path, "bench", limits)
    left = size
    while left:
        group = min(FILL_GROUP, left)
        outbox.put_many([NewItem(f"{100000 + n % 5}", "event" if n % 10 else "snapshot", 0.0,
                                 BODY) for n in range(group)])
        left -= group
    return outbox


def run(sizes: list[int], commits: int) -> dict[str, Any]:
    result: dict[str, Any] = {"sizes": sizes, "commits": commits, "commit_ms": {},
                              "at_cap_commit_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            roomy = filled(Path(tmp) / f"roomy-{size}.sqlite3", size, OutboxLimits(
                max_items=10 * size, max_bytes=1 << 40))
            result["commit_ms"][str(size)] = median_commit_ms(roomy, commits)
            roomy.close()
            full = filled(Path(tmp) / f"full-{size}.sqlite3", size, OutboxLimits(
                max_items=size, max_bytes=1 << 40))
            result["at_cap_commit_ms"][str(size)] = median_commit_ms(full, commits)
            full.close()
            print(json.dumps({"size": size, "commit_ms": result["commit_ms"][str(size)],
                              "at_cap_commit_ms": result["at_cap_commit_ms"][str(size)]}),
                  flush=True)
    small, large = str(min(sizes)), str(max(sizes))
    result["growth"] = round(result["commit_ms"][large] / result["commit_ms"][small], 2)
    result["at_cap_growth"] = round(
        result["at_cap_commit_ms"][large] / result["at_cap_commit_ms"][small], 2)
    result["goal_met"] = result["growth"] <= 2 and result["at_cap_growth"] <= 2
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,50000,200000")
    parser.add_argument("--commits", type=int, default=60)
    args = parser.parse_args()
    result: dict[str, Any]
    try:
        result = run([int(s) for s in args.sizes.split(",")], args.commits)
    except Exception as exc:  # the last line is the JSON result, whatever broke
        traceback.print_exc(file=sys.stderr)
        result = {"error": f"{type(exc).__name__}: {exc}", "goal_met": False}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
