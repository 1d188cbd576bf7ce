"""The state store: flow in the controller's own calibration, and freshness from the time a
value arrived, never re-stamped."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from types import FrameType

from firmware_bridge.gatt.codec import FlowSensor
from firmware_bridge.gatt.configuration import SystemConfig
from firmware_bridge.gatt.units import PulsesPerLitre
from firmware_bridge.link.state import Field, Source, StateEvent
from gateway.clock import LoopClock
from gateway.store.state import Changes, StateStore
from tests.helpers import cancel_and_wait
from tests.helpers.fakes import VirtualClock
from tests.helpers.golden import V1, V19

ADDRESS = "C0:FF:EE:00:00:00"


def event(field: Field, value: object, at: float) -> StateEvent:
    return StateEvent(ADDRESS, field, value, Source.NOTIFY, at, at)  # type: ignore[arg-type]


def test_flow_uses_the_controllers_calibration() -> None:
    now = [1000.0]
    store = StateStore(stale_after_s=10, clock=lambda: now[0])
    store.apply(event(Field.FLOW, FlowSensor(25), 1000.0))
    flow = store.snapshot(ADDRESS).flow
    assert flow is not None and flow.litres_per_minute == 2.0  # 25 * 60 / 750
    calibrated = replace(SystemConfig.decode(V19), flow_calibration=PulsesPerLitre(500))
    store.apply(event(Field.SYSTEM_CONFIG, calibrated, 1000.0))
    flow = store.snapshot(ADDRESS).flow
    assert flow is not None and flow.litres_per_minute == 3.0  # 25 * 60 / 500


def test_freshness_ages_without_restamping() -> None:
    now = [1000.0]
    store = StateStore(stale_after_s=10, clock=lambda: now[0])
    assert not store.fresh(ADDRESS)  # nothing known is not fresh
    from firmware_bridge.gatt.codec import BulkSync
    store.apply(event(Field.BULK, BulkSync.decode(V1), 1000.0))
    now[0] = 1009.0
    assert store.fresh(ADDRESS)
    now[0] = 1011.0
    state = store.snapshot(ADDRESS)
    assert state.fresh is False and state.updated_at == 1000.0
    assert state.age_s == 11.0


def test_a_task_notification_sets_every_valve() -> None:
    from firmware_bridge.gatt.codec import CurrentTask, TaskStatus
    store = StateStore(stale_after_s=10)
    running = CurrentTask(3, 0, 0, 60, 5, 0, TaskStatus.RUNNING)
    store.apply(event(Field.CURRENT_TASK, running, 1000.0))
    valves = store.snapshot(ADDRESS).valves
    assert [v.open for v in valves] == [ch == 3 for ch in range(8)]
    assert {v.at for v in valves} == {1000.0}
    for quiet in (replace(running, status=TaskStatus.PAUSED), CurrentTask.idle_frame(),
                  replace(running, channel_id=8)):  # a channel the controller does not have
        store.apply(event(Field.CURRENT_TASK, quiet, 1001.0))
        assert not any(v.open for v in store.snapshot(ADDRESS).valves), quiet


def changed_at(address: str, monotonic: float) -> StateEvent:
    return StateEvent(address, Field.FLOW, FlowSensor(1), Source.NOTIFY, monotonic, monotonic)


async def test_a_busy_burst_ends_at_a_change_not_on_a_timer() -> None:
    """A change that arrives SETTLE after the burst's first ends it: the loop is awake for
    that notification anyway, so no timer of the consumer's wakes it."""
    clock = VirtualClock()
    store = StateStore(stale_after_s=10)
    changes = store.watch(0.2, 0.3, clock)
    for monotonic in (10.0, 10.05, 10.1, 10.15):  # one controller, every 50 ms
        store.apply(changed_at(ADDRESS, monotonic))
    store.apply(changed_at("C0:FF:EE:00:00:01", 10.12))
    waiting = asyncio.create_task(changes.burst())
    for _ in range(VirtualClock.SETTLE_TURNS - 1):
        await asyncio.sleep(0)
    assert not waiting.done()  # 150 ms in: still the same burst
    store.apply(changed_at(ADDRESS, 10.21))
    assert await waiting == {ADDRESS, "C0:FF:EE:00:00:01"}
    assert clock.waited == []  # ended by the change, not by the quiet timer


async def test_a_burst_that_goes_quiet_ends_on_the_timer_and_the_next_starts_afresh() -> None:
    clock = VirtualClock()
    store = StateStore(stale_after_s=10)
    changes = store.watch(0.2, 0.3, clock)
    store.apply(changed_at(ADDRESS, 10.0))
    assert await changes.burst() == {ADDRESS}
    assert clock.waited == [0.3]
    # The next burst's first change starts its own settle: 10.3 is not 0.2 after 10.2.
    store.apply(changed_at(ADDRESS, 10.2))
    store.apply(changed_at(ADDRESS, 10.3))
    assert await changes.burst() == {ADDRESS}
    assert clock.waited == [0.3, 0.3]


async def test_a_streaming_controller_wakes_the_consumer_once_a_burst() -> None:
    """A watering controller's next burst starts one notification after the last ended; the
    consumer waits for the change that ends it from the start, so the first change does not
    wake it too (each wake of a task costs a Pi's loop more than a notification's decode).
    Counted as resumptions of ``burst``; no timer runs out (the stamps are the events')."""
    store = StateStore(stale_after_s=10)
    changes = store.watch(0.2, 0.3, LoopClock())
    taken: list[set[str]] = []

    async def consume() -> None:
        while True:
            taken.append(await changes.burst())

    async def turns() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    consumer = asyncio.create_task(consume())
    try:
        for at in (10.0, 10.05, 10.21):  # a first burst, ended at a change
            store.apply(changed_at(ADDRESS, at))
            await turns()
        assert taken == [{ADDRESS}]
        resumed: list[str] = []

        def count(frame: FrameType, event: str, _arg: object) -> None:
            if event == "call" and frame.f_code is Changes.burst.__code__:
                resumed.append(event)

        sys.setprofile(count)
        try:
            for at in (10.25, 10.3, 10.35, 10.46):  # the next burst of the stream
                store.apply(changed_at(ADDRESS, at))
                await turns()
        finally:
            sys.setprofile(None)
        assert taken == [{ADDRESS}, {ADDRESS}]
        assert len(resumed) == 2, "resumed once to take the burst, then called for the next"
    finally:
        await cancel_and_wait(consumer)


async def streaming() -> tuple[VirtualClock, StateStore, Changes]:
    """A store whose consumer took one burst that ended at a change: a stream."""
    clock = VirtualClock()
    store = StateStore(stale_after_s=10)
    changes = store.watch(0.2, 0.3, clock)
    for at in (10.0, 10.1, 10.21):
        store.apply(changed_at(ADDRESS, at))
    assert await changes.burst() == {ADDRESS}
    assert clock.waited == []
    return clock, store, changes


async def test_a_stream_that_stops_goes_back_to_waiting_without_a_timer() -> None:
    clock, store, changes = await streaming()
    waiting = asyncio.create_task(changes.burst())
    for _ in range(3 * VirtualClock.SETTLE_TURNS):
        await asyncio.sleep(0)
    assert clock.waited == [0.3]  # the stream's wait ran out: nothing came
    assert not waiting.done()  # and it sleeps until a change, with no timer
    store.apply(changed_at(ADDRESS, 20.0))
    assert await waiting == {ADDRESS}
    assert clock.waited == [0.3, 0.3]  # a lone change: its own quiet time


async def test_a_burst_that_begins_late_in_a_streams_wait_gets_its_whole_quiet_time() -> None:
    clock, store, changes = await streaming()
    waiting = asyncio.create_task(changes.burst())
    await asyncio.sleep(0)
    store.apply(changed_at(ADDRESS, 10.5))  # within the stream's wait, which then runs out
    assert await waiting == {ADDRESS}
    assert clock.waited == [0.3, 0.3]  # not cut short when the first wait ran out
