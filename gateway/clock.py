"""The one clock: monotonic time, wall time, sleep, and wait-for-event-or-timeout, injected into
every part that waits so that tests run backoffs, outages and refresh periods in virtual time
instead of waiting them out."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds: for deadlines, ages and backoffs."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch: only for what leaves the hub with a date."""
        ...

    async def sleep(self, seconds: float) -> None:
        ...

    async def wait(self, event: asyncio.Event, timeout_s: float | None) -> bool:
        """Until ``event`` is set (True) or ``timeout_s`` has passed (False)."""
        ...


class LoopClock:
    """The event loop's monotonic clock and real waits."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, timeout_s: float | None) -> bool:
        if timeout_s is None:
            await event.wait()
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            return False
        return True
