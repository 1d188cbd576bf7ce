"""Radio time on a Pi: a bounded number of links, one connect at a time, no scanning during a
connect, and user commands ahead of background syncs.

A supervisor holds a ``Lease`` for as long as it is connected. When an urgent request waits and
every slot is taken, the scheduler asks the least important holder to yield (``preempted``);
share-policy visits yield first, then kept links (they reconnect when a slot frees up).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import IntEnum

import structlog

from firmware_bridge.link.priority_lock import PriorityLock
from gateway.errors import GatewayError

log = structlog.get_logger(__name__)


class Priority(IntEnum):
    URGENT = 0  # a person is waiting (CLI, MQTT or cloud command)
    BACKGROUND = 1  # periodic sync or a kept link with nothing to do


@dataclass(eq=False)
class Lease:
    address: str
    priority: Priority
    kept: bool
    granted_at: float
    preempted: asyncio.Event = field(default_factory=asyncio.Event)
    radio: str | None = None  # which radio's slot (gateway/link/radios/)


class SlotsClosed(GatewayError):
    """The radio went away while a lease waited for one of its slots: choose another."""


class ScanGate:
    """Scanning is paused while anything holds a pause (a connect in progress); ``paused``
    returns once the scanner has actually stopped (``quiet``), or after a short grace when no
    scanner runs."""

    # Stopping a BlueZ discovery takes one D-Bus round trip; 2 s covers a busy bluetoothd.
    STOP_GRACE_S = 2.0

    def __init__(self) -> None:
        self._pauses = 0
        self.allowed = asyncio.Event()
        self.allowed.set()
        self.stop_requested = asyncio.Event()
        self.quiet = asyncio.Event()
        self.quiet.set()

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        self._pauses += 1
        self.allowed.clear()
        self.stop_requested.set()
        try:
            try:
                async with asyncio.timeout(self.STOP_GRACE_S):
                    await self.quiet.wait()
            except TimeoutError:
                log.warning("scanner_did_not_stop", grace_s=self.STOP_GRACE_S)
            yield
        finally:
            self._pauses -= 1
            if self._pauses == 0:
                self.stop_requested.clear()
                self.allowed.set()


class SlotScheduler:
    def __init__(self, max_links: int, scan_gate: ScanGate | None = None) -> None:
        self.max_links = max_links
        self.scan_gate = scan_gate or ScanGate()
        self.leases: list[Lease] = []
        self._waiters: list[tuple[int, int, asyncio.Future[None], Lease]] = []
        self._order = itertools.count()
        # Urgent first: after a radio dies, its controllers' reconnects queue here, each up to
        # a connect timeout long, and a person's command must not wait behind all of them.
        self._connect_lock = PriorityLock()
        self._closed: str | None = None

    @asynccontextmanager
    async def slot(self, address: str, priority: Priority, *, kept: bool) -> AsyncIterator[Lease]:
        lease = await self.acquire(Lease(address, priority, kept, 0.0))
        try:
            yield lease
        finally:
            self.release(lease)

    def release(self, lease: Lease) -> None:
        if lease in self.leases:
            self.leases.remove(lease)
        self._grant_next()

    def resize(self, max_links: int) -> None:
        """The radio's capacity changed (a proxy's free count, others' links on it); a shrink
        takes no lease back, it only grants none until enough end."""
        self._closed = None
        self.max_links = max(0, max_links)
        self._grant_next()

    def close(self, reason: str) -> None:
        """The radio is gone: nothing more is granted, and every waiter is told to look
        elsewhere. Leases held stay until their links end (which the radio's loss causes)."""
        self._closed = reason
        self.max_links = 0
        for _, _, future, _ in self._waiters:
            if not future.done():
                future.set_exception(SlotsClosed(reason))
        self._waiters.clear()

    @property
    def free(self) -> int:
        return max(0, self.max_links - len(self.leases))

    @asynccontextmanager
    async def connect_turn(self, lease: Lease | None = None) -> AsyncIterator[None]:
        """Connects are serialised and scanning pauses for each: BlueZ handles one LE connect
        at a time and many controllers drop connects while the radio scans. The connect of
        an urgent ``lease`` (a person waits on it) goes before every background one queued."""
        urgent = lease is not None and lease.priority is Priority.URGENT
        async with self._connect_lock.hold(PriorityLock.URGENT if urgent
                                           else PriorityLock.BACKGROUND,
                                           tag=None if lease is None else lease.address), \
                self.scan_gate.paused():
            yield

    def promote(self, address: str) -> None:
        """A person now waits on ``address``: its lease goes first, whether it still waits for
        a slot or for its connect turn, and one it holds may no longer be asked to yield (until
        ``demote``). A waiter's priority was fixed when it queued, so a command arriving just
        after a refresh visit queued waited behind every other refresh (fleet bench)."""
        changed = False
        for i, (priority, order, future, lease) in enumerate(self._waiters):
            if lease.address == address and priority != Priority.URGENT and not future.done():
                lease.priority = Priority.URGENT
                self._waiters[i] = (int(Priority.URGENT), order, future, lease)
                changed = True
        if changed:
            heapq.heapify(self._waiters)
        for lease in self.leases:
            if lease.address == address and not lease.preempted.is_set():
                lease.priority = Priority.URGENT
        self._connect_lock.promote(address)
        self._maybe_preempt()

    def demote(self, lease: Lease) -> None:
        """The urgent work under ``lease`` is done; it may now be asked to yield."""
        lease.priority = Priority.BACKGROUND
        self._maybe_preempt()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f, _ in self._waiters if not f.done())

    async def acquire(self, lease: Lease) -> Lease:
        if self._closed is not None:
            raise SlotsClosed(self._closed)
        loop = asyncio.get_running_loop()
        if len(self.leases) < self.max_links and not self.waiting:
            lease.granted_at = loop.time()
            self.leases.append(lease)
            return lease
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (int(lease.priority), next(self._order), future, lease))
        self._maybe_preempt()
        try:
            await future
        except asyncio.CancelledError:
            if lease in self.leases:  # granted just as we were cancelled: hand it on
                self.leases.remove(lease)
                self._grant_next()
            raise
        return lease

    def _grant_next(self) -> None:
        loop = asyncio.get_running_loop()
        while len(self.leases) < self.max_links and self._waiters:
            _, _, future, lease = heapq.heappop(self._waiters)
            if future.done():
                continue
            lease.granted_at = loop.time()
            self.leases.append(lease)  # registered before its owner wakes: no double grant
            future.set_result(None)
        self._maybe_preempt()

    def _maybe_preempt(self) -> None:
        urgent = any(p == Priority.URGENT and not f.done() for p, _, f, _ in self._waiters)
        if not urgent or len(self.leases) < self.max_links:
            return
        if any(lease.preempted.is_set() for lease in self.leases):
            return  # one yield at a time is enough to free a slot
        candidates = [lease for lease in self.leases if lease.priority == Priority.BACKGROUND]
        if not candidates:
            return
        victim = min(candidates, key=lambda lease: (lease.kept, lease.granted_at))
        log.info("slot_preempted", address=victim.address, kept=victim.kept)
        victim.preempted.set()
