"""Slots, pre-emption, serialised connects and the scan gate."""

from __future__ import annotations

import asyncio

from gateway.link.scheduler import Lease, Priority, ScanGate, SlotScheduler


async def test_slots_are_bounded_and_urgent_waiters_go_first() -> None:
    scheduler = SlotScheduler(max_links=2)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, priority: Priority) -> None:
        async with scheduler.slot(name, priority, kept=False):
            order.append(name)
            await release.wait()

    holders = [asyncio.create_task(hold(n, Priority.BACKGROUND)) for n in ("a", "b")]
    await asyncio.sleep(0.01)
    waiting_bg = asyncio.create_task(hold("c", Priority.BACKGROUND))
    await asyncio.sleep(0.01)
    waiting_urgent = asyncio.create_task(hold("d", Priority.URGENT))
    await asyncio.sleep(0.01)
    assert order == ["a", "b"] and len(scheduler.leases) == 2
    release.set()
    await asyncio.gather(*holders, waiting_bg, waiting_urgent)
    assert order[2] == "d"  # the urgent request overtook the earlier background one


async def test_an_urgent_waiter_preempts_a_background_holder_share_before_kept() -> None:
    scheduler = SlotScheduler(max_links=2)
    leases = {}

    async def hold(name: str, kept: bool) -> None:
        async with scheduler.slot(name, Priority.BACKGROUND, kept=kept) as lease:
            leases[name] = lease
            await lease.preempted.wait()

    kept = asyncio.create_task(hold("kept", True))
    share = asyncio.create_task(hold("share", False))
    await asyncio.sleep(0.01)
    async with asyncio.timeout(1), scheduler.slot("cmd", Priority.URGENT, kept=False):
        assert leases["share"].preempted.is_set()
        assert not leases["kept"].preempted.is_set()
    await share
    kept.cancel()


async def test_urgent_holders_are_not_preempted_until_demoted() -> None:
    scheduler = SlotScheduler(max_links=1)
    async with scheduler.slot("a", Priority.URGENT, kept=False) as lease:
        waiter = asyncio.create_task(_take(scheduler, "b"))
        await asyncio.sleep(0.01)
        assert not lease.preempted.is_set()
        scheduler.demote(lease)
        assert lease.preempted.is_set()
    await asyncio.wait_for(waiter, 1)


async def _take(scheduler: SlotScheduler, name: str) -> None:
    async with scheduler.slot(name, Priority.URGENT, kept=False):
        pass


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    scheduler = SlotScheduler(max_links=1)
    async with scheduler.slot("a", Priority.BACKGROUND, kept=False):
        waiter = asyncio.create_task(_take(scheduler, "b"))
        await asyncio.sleep(0.01)
        waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    async with asyncio.timeout(1):
        await _take(scheduler, "c")
    assert scheduler.leases == []


async def test_connects_are_serialised_and_pause_scanning() -> None:
    gate = ScanGate()
    gate.quiet.clear()  # a scanner is running
    scheduler = SlotScheduler(3, gate)
    inside = 0
    peak = 0

    async def connect() -> None:
        nonlocal inside, peak
        async with scheduler.connect_turn():
            assert not gate.allowed.is_set()
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    async def scanner_stops() -> None:
        await gate.stop_requested.wait()
        gate.quiet.set()

    await asyncio.gather(scanner_stops(), *(connect() for _ in range(4)))
    assert peak == 1
    assert gate.allowed.is_set() and not gate.stop_requested.is_set()


async def test_an_urgent_connect_goes_before_the_background_ones_queued() -> None:
    """After a radio dies its controllers' reconnects queue for the connect turn, each up to a
    connect timeout long; a person's command goes first (fleet bench: commands during
    failover trials waited 2-6 s behind them)."""
    scheduler = SlotScheduler(4)
    order: list[str] = []
    first = asyncio.Event()

    async def connect(address: str, priority: Priority) -> None:
        lease = Lease(address, priority, False, 0.0)
        async with scheduler.connect_turn(lease):
            order.append(address)
            if address == "busy":
                await first.wait()

    busy = asyncio.create_task(connect("busy", Priority.BACKGROUND))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(connect(a, p)) for a, p in (
        ("moved-1", Priority.BACKGROUND), ("moved-2", Priority.BACKGROUND),
        ("command", Priority.URGENT))]
    for _ in range(3):
        await asyncio.sleep(0)
    first.set()
    await asyncio.gather(busy, *queued)
    assert order == ["busy", "command", "moved-1", "moved-2"]


async def test_a_waiter_a_person_now_waits_on_goes_first_and_preempts() -> None:
    """A share visit queued for a slot as background; a person's command for that controller
    arrives while it waits (fleet bench, seed 1: a command waited 1.7 s for a slot behind the
    refresh visits queued before it, then connected)."""
    scheduler = SlotScheduler(max_links=1)
    order: list[str] = []

    async def hold(name: str) -> None:
        async with scheduler.slot(name, Priority.BACKGROUND, kept=False) as lease:
            order.append(name)
            if name == "holder":
                await lease.preempted.wait()

    holder = asyncio.create_task(hold("holder"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(hold(name)) for name in ("early", "asked")]
    await asyncio.sleep(0.01)
    assert scheduler.leases[0].address == "holder"
    assert not scheduler.leases[0].preempted.is_set()
    scheduler.promote("asked")
    async with asyncio.timeout(1):
        await asyncio.gather(holder, *queued)
    assert order == ["holder", "asked", "early"]


async def test_a_held_lease_a_person_now_waits_on_is_not_preempted() -> None:
    scheduler = SlotScheduler(max_links=1)
    async with scheduler.slot("a", Priority.BACKGROUND, kept=True) as lease:
        scheduler.promote("a")  # a command for "a" while its link is up
        waiter = asyncio.create_task(_take(scheduler, "b"))
        await asyncio.sleep(0.01)
        assert not lease.preempted.is_set()
        scheduler.demote(lease)  # its command is done
        assert lease.preempted.is_set()
    await asyncio.wait_for(waiter, 1)


async def test_a_queued_connect_a_person_now_waits_on_goes_first() -> None:
    scheduler = SlotScheduler(4)
    order: list[str] = []
    first = asyncio.Event()

    async def connect(address: str) -> None:
        lease = Lease(address, Priority.BACKGROUND, False, 0.0)
        scheduler.leases.append(lease)
        async with scheduler.connect_turn(lease):
            order.append(address)
            if address == "busy":
                await first.wait()

    tasks = [asyncio.create_task(connect(a)) for a in ("busy", "early", "asked")]
    for _ in range(3):
        await asyncio.sleep(0)
    scheduler.promote("asked")
    first.set()
    await asyncio.gather(*tasks)
    assert order == ["busy", "asked", "early"]
