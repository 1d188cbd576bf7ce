"""The daemon's registry on a slow or locked SD card: every read from memory, the writes of
every visit behind the event loop, in order, none lost while the disk cannot take them."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.config import LinkPolicy
from gateway.errors import RegistryError, UnknownController
from gateway.store.registry import Registry
from gateway.store.registry_cache import CachedRegistry
from tests.helpers import cancel_and_wait, until
from tests.helpers.fakes import VirtualClock

ADDRESS = "C0:FF:EE:00:00:01"
OTHER = "C0:FF:EE:00:00:02"
# Far below the SQLite busy timeout (5 s) a locked file makes a write wait: what the loop
# may spend on a visit's registry write.
ON_THE_LOOP_S = 0.05


class FailingDisk(CachedRegistry):
    """The real registry whose file stops taking anything once ``broken`` (a card gone
    read-only); ``opened`` counts every time the file is opened."""

    broken = False
    opened = 0

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.opened += 1
        if self.broken:
            raise RegistryError(f"registry {self.path}: attempt to write a readonly database")
        with super()._db() as db:
            yield db


def paired(path: Path, cls: type[CachedRegistry] = CachedRegistry) -> CachedRegistry:
    Registry(path).add(ADDRESS, name="AutoWatering", bonded=True, serial="100001")
    return cls(path)


async def test_a_visit_does_not_wait_for_a_locked_file(tmp_path: Path) -> None:
    # Another process (a backup, an sqlite3 shell) holds the file's write lock. The plain
    # registry's per-visit write waited on the event loop for it (up to SQLite's 5 s busy
    # timeout, then failed the visit); here it returns at once and lands once the lock goes.
    registry = paired(tmp_path / "r.sqlite3")
    holder = sqlite3.connect(registry.path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    writer = asyncio.create_task(registry.write_behind(VirtualClock()))
    try:
        released.start()
        started = time.monotonic()
        registry.seen(ADDRESS, firmware_version="3.2.0")
        registry.set_path(ADDRESS, "barn", 1234.5)
        assert time.monotonic() - started < ON_THE_LOOP_S
        record = registry.get(ADDRESS)
        assert record.firmware_version == "3.2.0" and record.served_by == "barn"
        await until(lambda: registry.unwritten == 0, 10, "the queued writes landed")
    finally:
        released.join()
        holder.close()
        await cancel_and_wait(writer)
    on_disk = Registry(registry.path).get(ADDRESS)
    assert on_disk.firmware_version == "3.2.0"
    assert on_disk.served_by == "barn" and on_disk.served_since == 1234.5


async def test_reads_and_visits_never_open_the_file(tmp_path: Path) -> None:
    registry = paired(tmp_path / "r.sqlite3", FailingDisk)
    assert isinstance(registry, FailingDisk)
    opened = registry.opened
    for _ in range(100):
        registry.get(ADDRESS)
        registry.all()
        assert registry.find(OTHER) is None
        registry.seen(ADDRESS)
        registry.set_path(ADDRESS, "hci0", 1.0)
    assert registry.opened == opened
    with pytest.raises(UnknownController, match="awgw pair"):
        registry.get(OTHER)


async def test_a_disk_that_fails_loses_nothing_and_says_so_once(tmp_path: Path) -> None:
    registry = paired(tmp_path / "r.sqlite3", FailingDisk)
    assert isinstance(registry, FailingDisk)
    registry.broken = True
    clock = VirtualClock()
    with capture_logs() as logs:
        writer = asyncio.create_task(registry.write_behind(clock))
        for n in range(5):
            registry.seen(ADDRESS, firmware_version=f"3.2.{n}")
        await until(lambda: len(clock.waited) >= 3, 5, "retries")
        assert registry.unwritten == 5 and not writer.done()
        registry.broken = False
        await until(lambda: registry.unwritten == 0, 5, "the writes after the disk came back")
        await cancel_and_wait(writer)
    events = [e["event"] for e in logs]
    assert events.count("registry_write_failed") == 1
    assert events.count("registry_writes_resumed") == 1
    failed = next(e for e in logs if e["event"] == "registry_write_failed")
    assert "disk" in failed["remedy"]
    assert Registry(registry.path).get(ADDRESS).firmware_version == "3.2.4"


async def test_the_writes_go_in_order_and_what_is_left_is_written_at_stop(
        tmp_path: Path) -> None:
    registry = paired(tmp_path / "r.sqlite3")
    writer = asyncio.create_task(registry.write_behind(VirtualClock()))
    await asyncio.sleep(0)
    await cancel_and_wait(writer)  # stopped before any write was queued
    for radio in ("hci0", "barn", "shed"):
        registry.set_path(ADDRESS, radio, 1.0)
    registry.seen(ADDRESS, serial="100009")
    assert registry.unwritten == 4
    registry.flush()  # the daemon's close
    on_disk = Registry(registry.path).get(ADDRESS)
    assert on_disk.served_by == "shed" and on_disk.serial == "100009"


async def test_what_a_person_changes_is_on_disk_and_in_memory_at_once(tmp_path: Path) -> None:
    registry = paired(tmp_path / "r.sqlite3")
    registry.add(OTHER, name="AutoWatering", bonded=False, radio="barn")
    registry.set_policy(ADDRESS, LinkPolicy.KEEP)
    assert registry.get(OTHER).radio == "barn"
    assert registry.get(ADDRESS).policy is LinkPolicy.KEEP
    registry.remove(OTHER)
    registry.seen(OTHER)  # a visit that ended as the controller was unpaired
    assert registry.find(OTHER) is None and registry.unwritten == 0
    fresh = Registry(registry.path)
    assert fresh.find(OTHER) is None and fresh.get(ADDRESS).policy is LinkPolicy.KEEP
