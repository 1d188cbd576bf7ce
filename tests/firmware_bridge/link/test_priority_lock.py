"""The lock where a person's work goes first."""

from __future__ import annotations

import asyncio

from firmware_bridge.link.priority_lock import PriorityLock


async def test_urgent_waiters_go_first_then_in_order() -> None:
    lock = PriorityLock()
    order: list[str] = []
    gate = asyncio.Event()

    async def take(name: str, priority: int) -> None:
        async with lock.hold(priority, tag=name):
            order.append(name)
            if name == "holder":
                await gate.wait()

    tasks = [asyncio.create_task(take("holder", PriorityLock.BACKGROUND))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(take(n, p)) for n, p in (
        ("bg-1", PriorityLock.BACKGROUND), ("bg-2", PriorityLock.BACKGROUND),
        ("urgent", PriorityLock.URGENT))]
    await asyncio.sleep(0)
    lock.promote("bg-2")
    assert lock.waiting_urgent
    gate.set()
    await asyncio.gather(*tasks)
    # promoted, bg-2 keeps its place by when it queued: before the later urgent one
    assert order == ["holder", "bg-2", "urgent", "bg-1"]


async def test_a_cancelled_waiter_hands_the_lock_on() -> None:
    lock = PriorityLock()
    async with lock.hold(PriorityLock.BACKGROUND):
        waiter = asyncio.create_task(lock.hold(PriorityLock.URGENT).__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    async with asyncio.timeout(1), lock.hold(PriorityLock.BACKGROUND):
        pass
