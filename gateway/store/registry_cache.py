"""The daemon's registry: it owns the file while it runs (the CLI goes through the daemon then,
gateway/cli/link.py), so every read comes from memory, and the writes of every visit (last
seen, firmware, the serving radio) reach the disk behind the event loop, in order, through
the ``registry writer`` part. A slow SD card, or another process holding the file's lock (a
backup, an sqlite3 shell), delays those writes; it never stalls the hub nor fails a visit.

Pairing, unpairing and a policy change still write through at once: a person waits on them,
and each must be on disk before its answer says it was done.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import structlog

from gateway.clock import Clock
from gateway.config import LinkPolicy, OtaPolicy
from gateway.errors import RegistryError, UnknownController
from gateway.store.registry import ControllerRecord, Registry, normalise_address

log = structlog.get_logger(__name__)

# A write that failed is tried again after this long: a full or read-only card is a person's
# to fix, and a retry every few seconds lands the write soon after they have, without a log
# line per visit meanwhile (one when it starts failing, one when it works again).
RETRY_S = 5.0


class CachedRegistry(Registry):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._records = {r.address: r for r in super().all()}
        self._pending: deque[Callable[[], None]] = deque()
        self._queued = asyncio.Event()
        self._failing: str | None = None

    # ---- reads: memory only ----------------------------------------------------------------

    def get(self, address: str) -> ControllerRecord:
        record = self._records.get(normalise_address(address))
        if record is None:
            raise UnknownController(f"{address} is not a paired controller "
                                    f"(pair it first: awgw pair {address})")
        return record

    def all(self) -> list[ControllerRecord]:
        return [self._records[a] for a in sorted(self._records)]

    # ---- writes a person waits on: through to the disk, then into memory -------------------

    def add(self, address: str, *, name: str, bonded: bool, serial: str | None = None,
            firmware_version: str | None = None, policy: LinkPolicy | None = None,
            board: str | None = None, ota_policy: OtaPolicy | None = None,
            radio: str | None = None, passkey: bool = False) -> None:
        super().add(address, name=name, bonded=bonded, serial=serial,
                    firmware_version=firmware_version, policy=policy, board=board,
                    ota_policy=ota_policy, radio=radio, passkey=passkey)
        self._reload(address)

    def remove(self, address: str) -> None:
        super().remove(address)
        self._records.pop(normalise_address(address), None)

    def set_policy(self, address: str, policy: LinkPolicy | None) -> None:
        super().set_policy(address, policy)
        self._reload(address)

    def _reload(self, address: str) -> None:
        key = normalise_address(address)
        self._records[key] = Registry.get(self, key)

    # ---- writes of every visit: memory now, the disk behind the loop -----------------------

    def seen(self, address: str, *, firmware_version: str | None = None,
             serial: str | None = None, at: float | None = None) -> None:
        key = normalise_address(address)
        record = self._records.get(key)
        if record is None:
            return  # unpaired meanwhile: the row is gone, as the UPDATE would find
        at = time.time() if at is None else at
        self._records[key] = replace(
            record, last_seen=at,
            firmware_version=record.firmware_version if firmware_version is None
            else firmware_version,
            serial=record.serial if serial is None else serial)
        self._behind(lambda: Registry.seen(self, key, firmware_version=firmware_version,
                                           serial=serial, at=at))

    def set_path(self, address: str, radio: str, since: float) -> None:
        key = normalise_address(address)
        record = self._records.get(key)
        if record is None:
            return
        self._records[key] = replace(record, served_by=radio, served_since=since)
        self._behind(lambda: Registry.set_path(self, key, radio, since))

    def _behind(self, write: Callable[[], None]) -> None:
        self._pending.append(write)
        self._queued.set()

    @property
    def unwritten(self) -> int:
        return len(self._pending)

    async def write_behind(self, clock: Clock) -> None:
        """The ``registry writer`` part: each queued write in a worker thread, in order; a
        failed one is kept and tried again. What is left at the stop, ``flush`` writes (the
        writes are idempotent: one cut off in its thread may land twice)."""
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._pending:
                try:
                    await asyncio.to_thread(self._pending[0])
                except RegistryError as exc:
                    self._failed(exc)
                    await clock.sleep(RETRY_S)
                    continue
                self._pending.popleft()
                self._recovered()

    def flush(self) -> None:
        """What is still queued, written now on this thread (the daemon's stop)."""
        while self._pending:
            try:
                self._pending[0]()
            except RegistryError as exc:
                log.warning("registry_writes_lost", count=len(self._pending), error=str(exc),
                            path=str(self.path),
                            remedy="check the state directory's disk (space, read-only "
                                   "mount); what they held (last visits, serving radios) "
                                   "the next visits write again")
                self._pending.clear()
                return
            self._pending.popleft()

    def _failed(self, exc: RegistryError) -> None:
        if self._failing is None:
            log.warning("registry_write_failed", error=str(exc), path=str(self.path),
                        queued=len(self._pending), retry_s=RETRY_S,
                        remedy="check the state directory's disk (space, read-only mount, "
                               "another process holding the file); nothing is lost meanwhile")
        self._failing = str(exc)

    def _recovered(self) -> None:
        if self._failing is not None:
            log.info("registry_writes_resumed", after=self._failing)
            self._failing = None
