"""The state feed derives events once and hands every relay the same ones, with the state
they came from."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from firmware_bridge.gatt.codec import CHANNELS, BulkSync, CurrentTask, TaskMode, TaskStatus
from firmware_bridge.gatt.history import DetailedEntry
from firmware_bridge.link.state import Field, Source, StateEvent
from gateway.ops.models import ControllerState
from gateway.relay.events import DerivedEvent
from gateway.relay.feed import FanOut, StateFeed
from gateway.store.registry import Registry
from gateway.store.state import StateStore
from tests.helpers import cancel_and_wait, until
from tests.helpers.fakes import VirtualClock
from tests.helpers.golden import V1

ADDRESS, SERIAL = "C0:FF:EE:00:00:00", "100001"


class Sink:
    def __init__(self) -> None:
        self.states: list[ControllerState] = []
        self.events: list[tuple[str, DerivedEvent]] = []

    def observe(self, address: str, serial: str, state: ControllerState) -> None:
        self.states.append(state)

    def record_event(self, serial: str, event: DerivedEvent, at: float | None = None) -> None:
        self.events.append((serial, event))

    def record_history(self, serial: str, entries: Sequence[DetailedEntry]) -> None:
        pass


async def test_every_relay_gets_the_same_events_once(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite3")
    registry.add(ADDRESS, name="AutoWatering", bonded=True, serial=SERIAL)
    store = StateStore(stale_after_s=60)
    cloud, mqtt = Sink(), Sink()
    feed = StateFeed(store, registry, [cloud, mqtt], None, history_period_s=3600)
    task = asyncio.create_task(feed.run())
    try:
        at = time.time()  # the store ages values by wall time
        store.apply(StateEvent(ADDRESS, Field.BULK, BulkSync.decode(V1), Source.SNAPSHOT, at, at))
        await until(lambda: bool(cloud.events) and bool(mqtt.events))
        await asyncio.sleep(0.2)  # a second derivation would have landed by now
    finally:
        await cancel_and_wait(task)
    assert [e.type for _s, e in cloud.events] == ["controller_reachable"]
    assert cloud.events == mqtt.events and cloud.events[0][0] == SERIAL
    assert cloud.states and cloud.states == mqtt.states


class SlowHistory:
    """A history reader whose reads wait for the test's word, recording what each asked."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []
        self.release = asyncio.Event()

    async def read(self, address: str, channels: Sequence[int]) -> list[DetailedEntry]:
        self.asked.append(list(channels))
        await self.release.wait()
        return []


def _task(channel: int, status: TaskStatus) -> StateEvent:
    at = time.time()
    task = CurrentTask(channel, 0, TaskMode.DURATION, 60, 30, 0, status)
    return StateEvent(ADDRESS, Field.CURRENT_TASK, task, Source.NOTIFY, at, at)


async def test_a_watering_that_ends_during_a_history_read_is_read_again(tmp_path: Path) -> None:
    # The read in flight began before the firmware wrote the entry: it cannot stand for the
    # read after the watering, which must still come.
    registry = Registry(tmp_path / "r.sqlite3")
    registry.add(ADDRESS, name="AutoWatering", bonded=True, serial=SERIAL)
    store = StateStore(stale_after_s=60)
    history = SlowHistory()
    # The feed's tick loop runs the virtual clock on while the read waits (an hour of it
    # within the test's 0.2 s on a fast machine, and the periodic read came due first): no
    # periodic read but the first one.
    feed = StateFeed(store, registry, [Sink()], history, history_period_s=1e9,
                     clock=VirtualClock())
    task = asyncio.create_task(feed.run())
    try:
        store.apply(_task(2, TaskStatus.RUNNING))
        await until(lambda: len(history.asked) == 1)  # the periodic read, now in flight
        store.apply(_task(2, TaskStatus.COMPLETED))
        await asyncio.sleep(0.2)  # the feed settles the change while the read waits
        history.release.set()
        await until(lambda: len(history.asked) == 2, what="the read after the watering")
    finally:
        await cancel_and_wait(task)
    assert history.asked == [list(range(CHANNELS)), [2]]


def test_an_event_for_a_controller_without_a_six_digit_serial_reaches_no_relay() -> None:
    # hostile-edges L2: OTA events went out under the raw DIS serial; "12+4#" made a topic
    # with wildcards and ended the MQTT relay (and stayed in its outbox, to end it again).
    sink = Sink()
    fan = FanOut([sink])
    arabic_indic = "\u0661\u0660\u0660\u0660\u0660\u0661"
    for serial in ("12+4#", "10000/", "", "1000012", arabic_indic, "100001\n"):
        fan.record_event(serial, DerivedEvent("firmware_update", {}))
    fan.record_event(SERIAL, DerivedEvent("firmware_update", {}))
    assert sink.events == [(SERIAL, DerivedEvent("firmware_update", {}))]
