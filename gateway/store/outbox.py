"""The durable outbox: what the gateway owes the cloud, in SQLite (WAL) in the state directory.

Everything relayed goes through here first, so a cloud outage, a kill -9 or a power cut loses
nothing that was committed. Commits are grouped (``put_many``: one transaction, one fsync for
the whole batch; SD cards wear and stall on per-item fsyncs), and nothing is half-written:
SQLite's WAL commit is atomic.

Each item gets its idempotency key when it is committed, from (gateway id, controller, epoch,
sequence): the epoch is drawn at random every time the outbox is opened, so keys never repeat
across restarts, nor after a backup of the file is restored or a damaged one replaced (a
counter kept in the file would start again from the backup's value, and the cloud would drop
new events as duplicates); a resent item keeps the key it was first sent with. A controller's
sequence number is at least the wall clock in milliseconds, so a fresh or restored file's
snapshots still move ahead of what the cloud stored from an earlier one (cloud-api.md P2
ignores a snapshot whose seq is not above the last).

A file that SQLite finds damaged (a torn write on an SD card) is moved aside as
``<name>.corrupt-<time>`` and a fresh one started, at open or whenever a call meets the damage:
the outbox never stops the daemon, and what is moved aside is reported (``awgw status``,
``awgw doctor``). History records also
carry a dedupe key (timestamp + channel + volume) that is remembered, so a record read again
from the controller is not enqueued twice.

Delivery is at-least-once in per-controller order (lease oldest first, one batch in flight);
the server deduplicates on the keys, which makes it exactly-once applied. A newer snapshot of a
controller supersedes the unsent older one (compaction); events and history are never
compacted. The store is bounded by item count, bytes and age; what bounds drop (older
snapshots first, then the oldest of the rest, never a controller's latest snapshot) is counted
per kind and reported. Age is the outbox's own running time (monotonic, summed across
restarts), never the wall clock: a Pi without an RTC jumps weeks when NTP first answers, and
items committed before that must not look a month old.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from gateway.errors import OutboxError

log = structlog.get_logger("gateway.outbox")
Kind = Literal["snapshot", "event", "history"]
KINDS: tuple[Kind, ...] = ("snapshot", "event", "history")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    controller TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    observed_at REAL NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_run REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_by_controller ON items (controller, kind, id);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_by_age ON seen (at);
"""
# Files written before items had created_run: added in place.
MIGRATIONS = ("ALTER TABLE items ADD COLUMN created_run REAL NOT NULL DEFAULT 0",)
INDEXES = """
CREATE INDEX IF NOT EXISTS items_by_age ON items (created_run);
CREATE INDEX IF NOT EXISTS items_by_kind ON items (kind, controller, id);
"""
# What SQLite says of a file that is not (or no longer) a database: moved aside, never retried.
DAMAGED = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
# Random bits of an epoch: a collision needs ~16 million opens (birthday bound at 48 bits).
EPOCH_BYTES = 6
# A history dedupe key must outlive the controller's memory of the record: 30 entries a
# channel (device-ble.md 6.10) are a month at most of daily watering; 90 days is generous.
SEEN_KEEP_S = 90 * 86400


@dataclass(frozen=True)
class OutboxLimits:
    # A month of a 5-controller home at a snapshot a minute and some events is ~250k items;
    # the bounds keep an SD card from filling during a long outage.
    max_items: int = 200_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: float = 30 * 86400


@dataclass(frozen=True)
class NewItem:
    """What a relay puts in: ``body`` is the item's JSON without its key (added on send)."""

    controller: str
    kind: Kind
    observed_at: float
    body: str
    dedupe: str | None = None  # history: timestamp + channel + volume


@dataclass(frozen=True)
class StoredItem:
    id: int
    controller: str
    kind: Kind
    key: str
    seq: int
    observed_at: float
    size: int
    body: str


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_age_s: float | None
    by_kind: dict[str, int]
    dropped: dict[str, int]
    commits: int
    boot: int
    # The damaged file this outbox moved aside since the daemon started, if any.
    quarantined: str | None = None
    # Why it keeps items in memory only (its file could not be opened at all), if it does.
    in_memory: str | None = None


class Outbox:
    """Synchronous store on one connection; a lock makes each call whole, so the writer's
    thread and the pump may call it concurrently (the pump calls it through to_thread too).
    Every call raises OutboxError and nothing else."""

    def __init__(self, path: Path, gateway_id: str, limits: OutboxLimits = OutboxLimits(),
                 clock: Callable[[], float] = time.time, *, reader: bool = False,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``reader``: only to look (``awgw cloud status`` with the daemon stopped): no boot
        is counted, nothing is written and a damaged file is left where it is."""
        self.path = path
        self.gateway_id = gateway_id
        self.limits = limits
        self._clock = clock
        self._monotonic = monotonic
        self._reader = reader
        self.commits = 0
        self.quarantined: Path | None = None
        self.in_memory: str | None = None
        self._leased: set[int] = set()
        self._lock = threading.RLock()
        try:
            self._open()
        except sqlite3.Error as exc:
            if reader or not _damaged(exc):
                raise OutboxError(f"cannot open outbox {path}: {exc}") from exc
            self._quarantine(exc)
            try:
                self._open()
            except sqlite3.Error as again:
                raise OutboxError(f"cannot open outbox {path}: {again}") from again
        except OSError as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so a committed batch survives a
            # power cut (NORMAL would only keep the database consistent, not durable).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            columns = {str(r[1]) for r in self._db.execute("PRAGMA table_info(items)")}
            if "created_run" not in columns:
                for statement in MIGRATIONS:
                    self._db.execute(statement)
            self._db.executescript(INDEXES)
            # Damage behind a good header shows only when the pages are read: look once now
            # (bounded by the outbox's 64 MiB), rather than fail at the first lease.
            _check_pages(self._db)
            try:
                with self._tx_raw():
                    self.boot = self._bump("boot", 0 if self._reader else 1)
            except sqlite3.OperationalError as exc:
                if _damaged(exc):
                    raise
                # A full card (or a locked file) must not stop the start: the count of opens
                # is only reported, and commits wait in memory until there is room.
                log.warning("outbox_opened_without_writing", path=str(self.path),
                            error=str(exc))
                self.boot = self._meta("boot")
            # Sequences are per controller and never go back, across restarts too: the
            # cloud ignores a snapshot whose seq is not above the last one it stored.
            self._seq = {str(k)[len("seq:"):]: int(v) for k, v in self._db.execute(
                "SELECT k, v FROM meta WHERE k LIKE 'seq:%'")}
            self._run_base = self._meta("runtime_ms") / 1000.0
            # What the file holds, counted once here and then kept as items come and go: the
            # bounds are checked at every commit, and a count of the table costs O(items)
            # (26 ms a commit at 200k items, bench/outbox_commit.py).
            self._by_kind = {str(k): int(n) for k, n in self._db.execute(
                "SELECT kind, COUNT(*) FROM items GROUP BY kind")}
            self._bytes = int(self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM items").fetchone()[0])
        except BaseException:
            self._db.close()
            raise
        self._run_mark = self._monotonic()
        self.epoch = secrets.token_hex(EPOCH_BYTES)

    def _quarantine(self, exc: sqlite3.Error) -> None:
        """Move the damaged file (and its WAL) aside, named by the time, for a person to look
        at; the outbox starts again empty."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = self.path.with_name(self.path.name + suffix)
            if source.exists():
                source.replace(aside.with_name(aside.name + suffix))
        self.quarantined = aside
        self._leased.clear()
        log.error("outbox_quarantined", path=str(self.path), moved_to=str(aside),
                  error=str(exc))

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """One call, whole: SQLite's errors become OutboxError; damage found on the way moves
        the file aside and starts a fresh one, so the next call works."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                if _damaged(exc) and not self._reader:
                    self.close()
                    self._quarantine(exc)
                    try:
                        self._open()
                    except (sqlite3.Error, OSError) as again:
                        raise OutboxError(f"outbox {self.path}: {again}") from again
                raise OutboxError(f"outbox {self.path}: {exc}") from exc
            except OSError as exc:
                raise OutboxError(f"outbox {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        with self._guard():
            # The running totals follow the transaction: a rollback puts them back too.
            saved = dict(self._by_kind), self._bytes
            try:
                with self._tx_raw():
                    yield
            except BaseException:
                self._by_kind, self._bytes = saved
                raise
        self.commits += 1

    def _gone(self, rows: Iterable[tuple[str, int]]) -> None:
        """Account for deleted items, given as (kind, size)."""
        for kind, size in rows:
            self._by_kind[kind] -= 1
            if not self._by_kind[kind]:
                del self._by_kind[kind]
            self._bytes -= int(size)

    @contextlib.contextmanager
    def _tx_raw(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, name: str) -> int:
        row = self._db.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()
        return int(row[0]) if row is not None else 0

    def _bump(self, name: str, by: int = 1) -> int:
        self._db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET "
                         "v = v + excluded.v", (name, by))
        return self._meta(name)

    def runtime(self) -> float:
        """Seconds this outbox has been open, summed across restarts: its clock for ages."""
        return self._run_base + max(0.0, self._monotonic() - self._run_mark)

    # ---- in -------------------------------------------------------------------------------------

    def put_many(self, items: Sequence[NewItem]) -> list[str]:
        """Commit ``items`` in one transaction; their keys, in order ("" for a history record
        already seen)."""
        keys: list[str] = []
        if not items:
            return keys
        now, run = self._clock(), self.runtime()
        with self._tx():
            for item in items:
                keys.append(self._put(item, now, run))
            self._db.execute("INSERT INTO meta (k, v) VALUES ('runtime_ms', ?) ON CONFLICT(k) "
                             "DO UPDATE SET v = excluded.v", (int(run * 1000),))
            self._db.executemany(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = "
                "excluded.v", [(f"seq:{c}", self._seq[c]) for c in {i.controller for i in items}
                               if c in self._seq])
            self._enforce_bounds(run)
        return keys

    def _put(self, item: NewItem, now: float, run: float) -> str:
        if item.dedupe is not None:
            fresh = self._db.execute("INSERT OR IGNORE INTO seen (key, at) VALUES (?, ?)",
                                     (f"{item.controller}:{item.dedupe}", now)).rowcount
            if not fresh:
                return ""
        if item.kind == "snapshot":
            leased = ",".join(str(i) for i in self._leased) or "-1"
            # Formatted in: our own integer ids only.
            self._gone(self._db.execute(
                f"DELETE FROM items WHERE controller = ? AND kind = 'snapshot' "  # noqa: S608
                f"AND id NOT IN ({leased}) RETURNING kind, size", (item.controller,)).fetchall())
        seq = max(self._seq.get(item.controller, 0) + 1, int(now * 1000))
        self._seq[item.controller] = seq
        key = f"{self.gateway_id}:{item.controller}:{self.epoch}:{seq}"
        size = len(item.body.encode())
        self._db.execute(
            "INSERT INTO items (controller, kind, key, seq, observed_at, created_at, size, body,"
            " created_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (item.controller, item.kind, key, seq, item.observed_at, now, size, item.body, run))
        self._by_kind[item.kind] = self._by_kind.get(item.kind, 0) + 1
        self._bytes += size
        return key

    def _enforce_bounds(self, run: float) -> None:
        """Age, then count and bytes; each step costs what it drops, not what the file holds
        (the totals are kept, the oldest item is found through an index)."""
        # A controller's latest snapshot is what the cloud shows of it: never dropped. Unsent
        # snapshots are compacted, so there are few of them however full the outbox is.
        latest = {int(r[0]) for r in self._db.execute(
            "SELECT MAX(id) FROM items WHERE kind = 'snapshot' GROUP BY controller")}
        cutoff = run - self.limits.max_age_s
        oldest = self._db.execute("SELECT MIN(created_run) FROM items").fetchone()[0]
        if oldest is not None and oldest < cutoff:
            aged = [(int(i), str(k), int(n)) for i, k, n in self._db.execute(
                "SELECT id, kind, size FROM items WHERE created_run < ?", (cutoff,))
                if int(i) not in latest]
            self._drop(aged)
        if self.depth() > self.limits.max_items or self._bytes > self.limits.max_bytes:
            # Older snapshots go first (a newer one says more), then the oldest of the rest.
            victims: list[tuple[int, str, int]] = []
            count, size = self.depth(), self._bytes
            for query in ("SELECT id, kind, size FROM items WHERE kind = 'snapshot' ORDER BY id",
                          "SELECT id, kind, size FROM items WHERE kind != 'snapshot' "
                          "ORDER BY id"):
                for row in self._db.execute(query):
                    if count <= self.limits.max_items and size <= self.limits.max_bytes:
                        break
                    if int(row[0]) in latest:
                        continue
                    victims.append((int(row[0]), str(row[1]), int(row[2])))
                    count -= 1
                    size -= int(row[2])
            self._drop(victims)
        # Dedupe keys age by the wall clock (they answer the controller's own timestamps); a
        # jump only forgets some early, and a record read again is then enqueued once more.
        self._db.execute("DELETE FROM seen WHERE at < ?", (self._clock() - SEEN_KEEP_S,))

    def _drop(self, victims: Sequence[tuple[int, str, int]]) -> None:
        """Delete items the bounds dropped, counting them per kind as dropped."""
        if not victims:
            return
        self._db.executemany("DELETE FROM items WHERE id = ?", [(v[0],) for v in victims])
        self._leased.difference_update(v[0] for v in victims)
        self._gone((kind, size) for _, kind, size in victims)
        dropped: dict[str, int] = {}
        for _, kind, _ in victims:
            dropped[kind] = dropped.get(kind, 0) + 1
        for kind, count in dropped.items():
            self._bump(f"dropped_{kind}", count)

    def depth(self) -> int:
        return sum(self._by_kind.values())

    # ---- out ------------------------------------------------------------------------------------

    def lease(self, max_items: int, max_bytes: int,
              kinds: Sequence[Kind] = KINDS) -> list[StoredItem]:
        """The oldest unleased items, within the batch limits, in commit order."""
        with self._guard():
            marks = ",".join("?" for _ in kinds)
            # Formatted in: "?" placeholders only.
            rows = self._db.execute(
                f"SELECT id, controller, kind, key, seq, observed_at, size, body FROM items "  # noqa: S608
                f"WHERE kind IN ({marks}) ORDER BY id LIMIT ?",
                (*kinds, max_items + len(self._leased))).fetchall()
            batch: list[StoredItem] = []
            total = 0
            for row in rows:
                item = StoredItem(int(row[0]), str(row[1]), row[2], str(row[3]), int(row[4]),
                                  float(row[5]), int(row[6]), str(row[7]))
                if item.id in self._leased:
                    continue
                if batch and (len(batch) >= max_items or total + item.size > max_bytes):
                    break
                batch.append(item)
                total += item.size
            self._leased.update(i.id for i in batch)
            return batch

    def ack(self, ids: Iterable[int]) -> None:
        done = list(ids)
        if not done:
            return
        with self._tx():
            for i in done:
                self._gone(self._db.execute("DELETE FROM items WHERE id = ? RETURNING kind, size",
                                            (i,)).fetchall())
        self._leased.difference_update(done)

    def release(self, ids: Iterable[int]) -> None:
        """Give leased items back (the send failed): they go out again, in order."""
        with self._lock:
            self._leased.difference_update(ids)

    def latest_snapshots(self) -> dict[str, StoredItem]:
        """The newest unsent snapshot of each controller (user_state mode sends only these)."""
        with self._guard():
            rows = self._db.execute(
                "SELECT id, controller, kind, key, seq, observed_at, size, body FROM items "
                "WHERE id IN (SELECT MAX(id) FROM items WHERE kind = 'snapshot' "
                "GROUP BY controller)").fetchall()
            return {str(r[1]): StoredItem(int(r[0]), str(r[1]), r[2], str(r[3]), int(r[4]),
                                          float(r[5]), int(r[6]), str(r[7])) for r in rows}

    def stats(self) -> OutboxStats:
        with self._guard():
            by_kind = dict(self._by_kind)
            size = self._bytes
            oldest = self._db.execute("SELECT MIN(created_run) FROM items").fetchone()[0]
            dropped = {str(k)[len("dropped_"):]: int(v) for k, v in self._db.execute(
                "SELECT k, v FROM meta WHERE k LIKE 'dropped_%'")}
            return OutboxStats(
                depth=sum(by_kind.values()), bytes=int(size),
                oldest_age_s=None if oldest is None else max(0.0, self.runtime() - float(oldest)),
                by_kind=by_kind, dropped=dropped, commits=self.commits, boot=self.boot,
                quarantined=None if self.quarantined is None else str(self.quarantined),
                in_memory=self.in_memory)


def open_outbox(path: Path, gateway_id: str) -> Outbox:
    """The outbox at ``path``, or, when that file cannot be opened at all (a read-only card,
    a directory in its place, no permission), one in memory: the relay keeps working and
    says why nothing it holds would survive a restart. An outbox never stops the daemon."""
    try:
        return Outbox(path, gateway_id)
    except OutboxError as exc:
        problem = str(exc)
    log.error("outbox_in_memory", path=str(path), error=problem,
              remedy=f"check {path.parent} (space, permissions), then restart the daemon")
    memory = Outbox(Path(":memory:"), gateway_id)
    memory.in_memory = problem
    return memory


def _check_pages(db: sqlite3.Connection) -> None:
    check = db.execute("PRAGMA quick_check").fetchone()
    if check is None or check[0] != "ok":
        raise sqlite3.DatabaseError(f"quick_check: {check[0] if check else 'nothing'}")


def _damaged(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", None) in DAMAGED or (
        type(exc) is sqlite3.DatabaseError and "quick_check" in str(exc))


class OutboxWriter:
    """Group commit for a stream of items: whatever arrived while the last commit ran goes in
    the next one, so the fsync rate stays bounded however fast items come.

    ``submit`` never blocks the event loop; the commit runs in a worker thread. ``committed``
    is notified after each commit (the relay's pump waits on it)."""

    # Items wait at most this long for company before they are committed alone: short enough
    # that a watering event is durable within a BLE notification interval or two.
    LINGER_S = 0.02
    MAX_GROUP = 5000
    # A commit that failed (disk full, a locked or damaged file) is tried again after this;
    # meanwhile items wait in memory, at most MAX_PENDING (the oldest beyond are dropped and
    # counted: memory must not grow without bound on a Pi).
    RETRY_S = 5.0
    MAX_PENDING = 100_000

    def __init__(self, outbox: Outbox,
                 on_commit: Callable[[Sequence[NewItem], list[str]], None] | None = None) -> None:
        self.outbox = outbox
        self._pending: list[NewItem] = []
        self._wake = asyncio.Event()
        self.committed = asyncio.Condition()
        self._on_commit = on_commit
        self.items_committed = 0
        # One commit at a time: flush() waits for the one run() has in flight.
        self._committing = asyncio.Lock()
        self.commit_failures = 0
        self.dropped_in_memory = 0

    def submit(self, item: NewItem) -> None:
        self._pending.append(item)
        if len(self._pending) > self.MAX_PENDING:
            del self._pending[0]
            self.dropped_in_memory += 1
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                await asyncio.sleep(self.LINGER_S)
                try:
                    await self.flush()
                except OutboxError as exc:
                    log.warning("outbox_commit_failed", error=str(exc), pending=self.backlog,
                              retry_in_s=self.RETRY_S)
                    await asyncio.sleep(self.RETRY_S)
        finally:
            # Cancelled (shutdown): commit what was handed over, so a clean stop loses nothing.
            if self._pending:
                group, self._pending = self._pending, []
                with contextlib.suppress(OutboxError):  # logged by the loop already
                    self._commit(group)

    async def flush(self) -> None:
        """Commit everything submitted so far; returns once it is durable."""
        async with self._committing:
            while self._pending:
                group = self._pending[:self.MAX_GROUP]
                del self._pending[:len(group)]
                try:
                    await asyncio.to_thread(self._commit, group)
                except OutboxError:
                    self._pending[:0] = group  # kept, in order, for the next attempt
                    self.commit_failures += 1
                    raise
        self._wake.clear()
        async with self.committed:
            self.committed.notify_all()

    def _commit(self, group: Sequence[NewItem]) -> None:
        keys = self.outbox.put_many(group)
        self.items_committed += len(group)
        if self._on_commit is not None:
            self._on_commit(group, keys)
