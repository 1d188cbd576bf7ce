"""Feeds the relays: each controller's typed state whenever it changes (and on a tick, so a
controller going stale is noticed), and its watering history a few times a day and right after
each watering (device-ble.md 6.10: the controller keeps 30 entries a channel)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import structlog

from firmware_bridge.gatt.codec import CHANNELS
from firmware_bridge.gatt.history import DetailedEntry
from gateway.clock import Clock, LoopClock
from gateway.errors import GatewayError
from gateway.ops.models import ControllerState
from gateway.relay.events import DerivedEvent, EventTracker
from gateway.relay.mqtt.topics import SERIAL
from gateway.store.registry import Registry
from gateway.store.state import Changes, StateStore

log = structlog.get_logger("gateway.relay.feed")
# Values arrive in bursts, taken as one observation each (gateway/store/state.py Changes).
# A refresh is several reads, each at least one connection event (30-50 ms, device-ble.md
# 3.2) apart, and a watering controller notifies its task every 50 ms and its flow every
# 200 ms (the firmware's throttle, 4.3): a burst is what arrives within SETTLE_S of its first
# change, so one refresh is one observation and a watering controller makes at most five a
# second, each a snapshot compared by every relay (at 50 ms it made one per notification).
SETTLE_S = 0.2
# A burst with nothing after it is observed this long after its first change: past SETTLE_S
# by more than a busy controller's notification spacing, so the burst of a controller that
# keeps notifying ends at a notification rather than on this timer.
QUIET_S = 0.3
# Fresh turns stale with no event at all; the tick notices it within this.
TICK_S = 5.0
# The firmware writes the history entry when the task ends; read it a moment later.
HISTORY_AFTER_WATERING_S = 2.0


class StateSink(Protocol):
    def observe(self, address: str, serial: str, state: ControllerState) -> None: ...

    def record_event(self, serial: str, event: DerivedEvent, at: float | None = None) -> None: ...

    def record_history(self, serial: str, entries: Sequence[DetailedEntry]) -> None: ...


class EventSink(Protocol):
    def record_event(self, serial: str, event: DerivedEvent, at: float | None = None) -> None: ...


class FanOut:
    """One event (an OTA outcome) to every relay, for a controller with a six-digit serial
    only: the serial names the controller's MQTT topics and cloud records, and a controller
    reports it over BLE (any UTF-8, "12+4#" included: a wildcard in a topic)."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = list(sinks)

    def record_event(self, serial: str, event: DerivedEvent, at: float | None = None) -> None:
        if not SERIAL.match(serial):
            log.warning("event_not_relayed", serial=serial[:40], event_type=event.type,
                        reason="no six-digit serial")
            return
        for sink in self.sinks:
            sink.record_event(serial, event, at)


class HistoryReader(Protocol):
    async def read(self, address: str, channels: Sequence[int]) -> list[DetailedEntry]: ...


class StateFeed:
    def __init__(self, store: StateStore, registry: Registry, sinks: Sequence[StateSink],
                 history: HistoryReader | None, history_period_s: float,
                 clock: Clock | None = None) -> None:
        self.store = store
        self.registry = registry
        self.sinks = list(sinks)
        self.history = history
        self.history_period_s = history_period_s
        self.clock = clock or LoopClock()
        self._events = EventTracker()
        self._running: dict[str, int | None] = {}
        # When each controller's full history read is due, and the channels to read soon
        # because a watering on them just ended (and when).
        self._periodic_due: dict[str, float] = {}
        self._after_watering: dict[str, tuple[float, set[int]]] = {}
        self._warned: set[str] = set()

    def _serial(self, address: str) -> str | None:
        try:
            serial = self.registry.get(address).serial
        except GatewayError:
            return None
        if serial is None or not SERIAL.match(serial):
            if address not in self._warned:
                self._warned.add(address)
                log.warning("controller_not_relayed", address=address, serial=serial,
                            reason="no six-digit serial")
            return None
        return serial

    def _observe(self, address: str) -> None:
        try:
            self._observe_one(address)
        except GatewayError as exc:  # the registry could not be read: the next change retries
            log.warning("state_feed_failed", address=address, error=str(exc))

    def _observe_one(self, address: str) -> None:
        serial = self._serial(address)
        if serial is None:
            return
        record = self.registry.get(address)
        state = self.store.snapshot(address, record.firmware_version)
        # Events are derived once, here, and every relay gets the same ones.
        now = self.clock.time()
        events = self._events.track(address, state, now)
        for sink in self.sinks:
            sink.observe(address, serial, state)
            for event in events:
                sink.record_event(serial, event, now)
        task = state.current_task
        running = task.channel if task is not None and task.runs else None
        before = self._running.get(address)
        self._running[address] = running
        if before is not None and running != before:
            _due, channels = self._after_watering.get(address, (0.0, set()))
            self._after_watering[address] = (self.clock.now() + HISTORY_AFTER_WATERING_S,
                                             channels | {before})

    async def run(self) -> None:
        changes = self.store.watch(SETTLE_S, QUIET_S, self.clock)
        try:
            now = self.clock.now()
            for record in self.registry.all():
                self._periodic_due[record.address] = now
                self._observe(record.address)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._changes(changes), name="state feed")
                tasks.create_task(self._ticks(), name="state feed tick")
                if self.history is not None:
                    tasks.create_task(self._history_loop(), name="history feed")
        finally:
            self.store.unwatch(changes)

    async def _changes(self, changes: Changes) -> None:
        while True:
            for address in await changes.burst():
                self._observe(address)

    async def _ticks(self) -> None:
        while True:
            await self.clock.sleep(TICK_S)
            try:
                records = self.registry.all()
            except GatewayError as exc:
                log.warning("state_feed_failed", error=str(exc))
                continue
            for record in records:
                self._observe(record.address)

    async def _history_loop(self) -> None:
        assert self.history is not None
        while True:
            await self.clock.sleep(1.0)
            now = self.clock.now()
            try:
                records = self.registry.all()
            except GatewayError as exc:
                log.warning("history_feed_failed", error=str(exc))
                continue
            for record in records:
                await self._read_history(record.address, now)

    async def _read_history(self, address: str, now: float) -> None:
        assert self.history is not None
        periodic = self._periodic_due.setdefault(address, now) <= now
        after = self._after_watering.get(address)
        soon_at, soon = after if after is not None else (float("inf"), set())
        # Only a request already due is answered by this read: one not yet due waits for the
        # firmware to write its entry, which a read now would miss.
        answered = after if soon_at <= now else None
        channels = set(range(CHANNELS)) if periodic else (soon if answered is not None else set())
        if not channels:
            return
        serial = self._serial(address)
        if serial is None:
            self._periodic_due[address] = now + self.history_period_s
            return
        try:
            entries = await self.history.read(address, sorted(channels))
        except GatewayError as exc:
            # Unreachable or busy (an update): try again in a minute (or the period).
            log.info("history_read_failed", address=address, error=str(exc))
            retry = now + min(60.0, self.history_period_s)
            if periodic:
                self._periodic_due[address] = retry
            if answered is not None:
                latest = self._after_watering.get(address)
                if latest is answered:
                    self._after_watering[address] = (retry, soon)
                elif latest is not None:  # another watering ended meanwhile: one read for both
                    self._after_watering[address] = (latest[0], latest[1] | soon)
            return
        for sink in self.sinks:
            sink.record_history(serial, entries)
        # A watering that ended while this read was in flight asked for a read of its own
        # (a new request replaced the one answered): keep it.
        if answered is not None and self._after_watering.get(address) is answered:
            del self._after_watering[address]
        if periodic:
            self._periodic_due[address] = now + self.history_period_s
