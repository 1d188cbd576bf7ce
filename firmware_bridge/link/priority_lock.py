"""A lock where urgent waiters go first: a user's valve command must not queue behind a
background poll's eight channel reads (one GATT operation in flight, device-ble.md 9.2)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PriorityLock:
    URGENT = 0
    BACKGROUND = 1

    def __init__(self) -> None:
        self._held = False
        self._waiters: list[tuple[int, int, asyncio.Future[None], object]] = []
        self._order = itertools.count()

    @asynccontextmanager
    async def hold(self, priority: int, *, tag: object = None) -> AsyncIterator[None]:
        """``tag`` names the waiter for ``promote``."""
        await self._acquire(priority, tag)
        try:
            yield
        finally:
            self._release()

    def promote(self, tag: object) -> None:
        """A person now waits on the work queued under ``tag``: it goes first from here on,
        keeping its place among the urgent ones by when it queued."""
        if tag is not None and any(t == tag and p != self.URGENT for p, _, _, t in self._waiters):
            self._waiters = [(self.URGENT if t == tag else p, order, future, t)
                             for p, order, future, t in self._waiters]
            heapq.heapify(self._waiters)

    async def _acquire(self, priority: int, tag: object) -> None:
        if not self._held and not self._waiters:
            self._held = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future, tag))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed over just as we were cancelled: pass it on
            else:
                self._waiters = [w for w in self._waiters if w[2] is not future]
                heapq.heapify(self._waiters)
            raise

    def _release(self) -> None:
        while self._waiters:
            _, _, future, _ = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return  # ownership passes directly; _held stays True
        self._held = False

    @property
    def waiting_urgent(self) -> bool:
        return any(p == self.URGENT for p, _, _, _ in self._waiters)
