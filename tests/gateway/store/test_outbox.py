"""The durable outbox: keys that survive restarts, order, compaction, dedupe, bounds, group
commits, and nothing half-written after a kill -9 mid-batch."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import OutboxError
from gateway.store.outbox import NewItem, Outbox, OutboxLimits, OutboxWriter


def event(controller: str, n: int, kind: str = "event") -> NewItem:
    return NewItem(controller, kind, float(n), json.dumps({"n": n}))  # type: ignore[arg-type]


def test_keys_order_and_restart(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", "gw")
    keys = outbox.put_many([event("A", 1), event("B", 1), event("A", 2)])
    assert keys == ["gw:A:1:1", "gw:B:1:1", "gw:A:1:2"]
    batch = outbox.lease(10, 10_000)
    assert [(i.controller, i.seq) for i in batch] == [("A", 1), ("B", 1), ("A", 2)]
    assert outbox.lease(10, 10_000) == []  # all in flight
    outbox.release([batch[2].id])
    outbox.ack([batch[0].id, batch[1].id])
    outbox.close()
    again = Outbox(tmp_path / "o.db", "gw")
    assert again.boot == 2
    assert [i.key for i in again.lease(10, 10_000)] == ["gw:A:1:2"]  # keeps its first key
    assert again.put_many([event("A", 3)]) == ["gw:A:2:3"]  # seq never goes back


def test_snapshots_compact_events_and_history_do_not(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", "gw")
    outbox.put_many([event("A", 1, "snapshot"), event("A", 2), event("A", 3, "snapshot")])
    outbox.put_many([event("A", 4, "snapshot"), event("B", 5, "snapshot")])
    kinds = [(i.controller, i.kind, json.loads(i.body)["n"]) for i in outbox.lease(10, 10**6)]
    assert kinds == [("A", "event", 2), ("A", "snapshot", 4), ("B", "snapshot", 5)]
    outbox.put_many([event("A", 6, "snapshot")])  # the leased snapshot 4 is in flight: kept
    assert [json.loads(i.body)["n"] for i in outbox.lease(10, 10**6)] == [6]


def test_history_is_enqueued_once_even_after_restart(tmp_path: Path) -> None:
    record = NewItem("A", "history", 1.0, '{"ch":1}', dedupe="1700000000:1:1200")
    outbox = Outbox(tmp_path / "o.db", "gw")
    assert outbox.put_many([record, record]) == ["gw:A:1:1", ""]
    outbox.ack(i.id for i in outbox.lease(10, 10**6))
    outbox.close()
    assert Outbox(tmp_path / "o.db", "gw").put_many([record]) == [""]


def test_bounds_drop_snapshots_first_and_count_it(tmp_path: Path) -> None:
    now = [1000.0]
    outbox = Outbox(tmp_path / "o.db", "gw", OutboxLimits(max_items=3, max_age_s=100),
                    clock=lambda: now[0])
    outbox.put_many([event("A", 1), event("B", 2, "snapshot"), event("C", 3), event("D", 4)])
    assert [json.loads(i.body)["n"] for i in outbox.lease(10, 10**6)] == [1, 3, 4]
    outbox.release([1, 2, 3, 4])
    outbox.put_many([event("E", 5)])
    stats = outbox.stats()
    assert stats.depth == 3 and stats.dropped == {"snapshot": 1, "event": 1}
    now[0] += 101
    outbox.put_many([event("F", 6)])
    stats = outbox.stats()
    assert stats.depth == 1 and stats.dropped["event"] == 4


def test_lease_respects_batch_limits(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", "gw")
    outbox.put_many([NewItem("A", "event", 0.0, "x" * 100) for _ in range(10)])
    assert len(outbox.lease(4, 10**6)) == 4
    assert len(outbox.lease(100, 250)) == 2
    assert len(outbox.lease(100, 1)) == 1  # one oversized item still goes, alone


async def test_group_commit_uses_few_fsyncs(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", "gw")
    writer = OutboxWriter(outbox)
    task = asyncio.create_task(writer.run(), name="writer")
    for n in range(2000):
        writer.submit(event("A", n))
        if n % 500 == 0:
            await asyncio.sleep(0)
    async with writer.committed:
        await asyncio.wait_for(writer.committed.wait_for(lambda: writer.items_committed == 2000),
                               30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert outbox.stats().depth == 2000
    assert outbox.commits <= 20, outbox.commits


CHILD = """
import json, sys
from gateway.store.outbox import NewItem, Outbox
outbox = Outbox(__import__("pathlib").Path(sys.argv[1]), "gw")
n = 0
while True:
    outbox.put_many([NewItem("A", "event", 0.0, json.dumps({"batch": n, "i": i}))
                     for i in range(50)])
    print(n, flush=True)
    n += 1
"""


def test_kill_9_mid_batch_leaves_whole_batches_only(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    reported: list[int] = []
    deadline = time.monotonic() + 60
    while len(reported) < 20 and time.monotonic() < deadline:
        reported.append(int(child.stdout.readline()))
    child.send_signal(signal.SIGKILL)
    child.wait()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = [json.loads(b) for (b,) in db.execute("SELECT body FROM items")]
    batches: dict[int, int] = {}
    for row in rows:
        batches[row["batch"]] = batches.get(row["batch"], 0) + 1
    assert set(batches.values()) == {50}  # nothing half-written
    assert set(reported) <= set(batches)  # every batch reported committed is there


class FailingOutbox(Outbox):
    """The real outbox whose first commits fail, as on a full or read-only SD card."""

    failures = 2

    def put_many(self, items: Sequence[NewItem]) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise OutboxError("disk I/O error")
        return super().put_many(items)


async def test_a_failed_commit_keeps_the_items_and_is_retried(tmp_path: Path) -> None:
    outbox = FailingOutbox(tmp_path / "o.db", "gw")
    writer = OutboxWriter(outbox)
    writer.RETRY_S = 0.01
    task = asyncio.create_task(writer.run(), name="writer")
    for n in range(10):
        writer.submit(event("A", n))
    async with writer.committed:
        await asyncio.wait_for(writer.committed.wait_for(lambda: writer.items_committed == 10),
                               10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert writer.commit_failures == 2
    assert [json.loads(i.body)["n"] for i in outbox.lease(100, 10**6)] == list(range(10))
