"""Time as the supervisors see it: a clock and a wait-for-event-or-timeout, injected so that
tests run backoffs and refresh periods in virtual time instead of waiting them out."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def wait(self, event: asyncio.Event, timeout_s: float | None) -> bool:
        """Until ``event`` is set (True) or ``timeout_s`` has passed (False)."""
        ...


class LoopClock:
    """The event loop's monotonic clock and real waits."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

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
