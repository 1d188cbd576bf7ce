"""The latest known state of every controller, with when each value was learned.

Values are only ever stamped by the session when they arrive; nothing here re-stamps an old
value, so a controller that went quiet shows its age and turns ``fresh: false`` once its last
full refresh is older than twice the refresh period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from firmware_bridge.gatt.alarms import read_alarm
from firmware_bridge.gatt.codec import (
    CHANNELS,
    NO_CHANNEL,
    AlarmStatus,
    BulkSync,
    CurrentTask,
    FlowSensor,
    SystemStatus,
    SystemStatusCode,
    TaskQueue,
    TaskStatus,
    ValveControl,
)
from firmware_bridge.gatt.configuration import ChannelConfig, SystemConfig
from firmware_bridge.gatt.sensors import EnvironmentalData, RainData, RainSensorState
from firmware_bridge.link.state import DecodeProblem, Field, StateEvent
from gateway.clock import Clock
from gateway.ops.models import (
    AlarmView,
    ControllerState,
    EnvironmentView,
    FlowView,
    LinkState,
    QueueView,
    RainView,
    StatusView,
    TaskView,
    ValveState,
)

# The firmware's default flow sensor calibration (device-ble.md 6.9).
DEFAULT_PULSES_PER_LITRE = 750


@dataclass
class ControllerView:
    address: str
    link: LinkState = LinkState.IDLE
    values: dict[Field, StateEvent] = field(default_factory=dict)
    valves: dict[int, tuple[bool, float]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    last_refresh: float | None = None
    decode_problems: int = 0
    last_failure: str | None = None


def _valves_from_bulk(view: ControllerView, item: StateEvent) -> None:
    value = cast(BulkSync, item.value)
    view.last_refresh = item.at
    view.valves = {channel: (value.valve_open(channel), item.at) for channel in range(CHANNELS)}


def _valve_from_control(view: ControllerView, item: StateEvent) -> None:
    value = cast(ValveControl, item.value)
    if not value.is_master and 0 <= value.channel_id < CHANNELS:
        view.valves[value.channel_id] = (value.is_open, item.at)


def _valves_from_task(view: ControllerView, item: StateEvent) -> None:
    # Every task notification: a watering controller sends one every 50 ms (device-ble.md
    # 4.3), so the eight valves are written at C speed, not in a loop of eight.
    value: CurrentTask = item.value  # type: ignore[assignment]  # not cast(): a call
    valves = dict.fromkeys(range(CHANNELS), (False, item.at))
    # An idle task's channel (NO_CHANNEL) is no valve's.
    if value.status == TaskStatus.RUNNING and value.channel_id in valves:
        valves[value.channel_id] = (True, item.at)
    view.valves = valves


def _name_from_config(view: ControllerView, item: StateEvent) -> None:
    value = cast(ChannelConfig, item.value)
    view.names[value.channel_id] = value.name


# What a value tells beyond itself, by its type: one look-up per notification instead of a
# chain of isinstance checks.
_DERIVED: dict[type, Callable[[ControllerView, StateEvent], None]] = {
    BulkSync: _valves_from_bulk, ValveControl: _valve_from_control,
    CurrentTask: _valves_from_task, ChannelConfig: _name_from_config}


class Changes:
    """The controllers whose state changed, for a consumer that takes each burst as one
    observation (the state feed). It holds addresses, not events, so it stays as small as the
    fleet however far behind its consumer falls, and a notification costs it one insertion.

    A burst ends at the first change that arrives ``settle_s`` after its first one: the loop
    is awake for that notification anyway, where a timer of its own would wake an idle loop
    (on a Pi, a wake from idle costs more CPU than decoding the notification). Only a burst
    that goes quiet ends on the timer, ``quiet_s`` after its first change.

    A watering controller streams: its next burst starts a notification after the last one
    ended. The consumer then waits for the change that ends the burst from the start, and is
    woken once a burst, not also by its first change; the timer of that wait only notices
    that the stream stopped."""

    def __init__(self, settle_s: float, quiet_s: float, clock: Clock) -> None:
        self.settle_s = settle_s
        self.quiet_s = quiet_s
        self._clock = clock
        self._pending: set[str] = set()
        self._first_at = 0.0
        self._changed = asyncio.Event()
        self._settled = asyncio.Event()
        self._streaming = False  # the last burst ended at a change

    def mark(self, address: str, monotonic: float) -> None:
        """``address`` changed with a value learned at ``monotonic`` (the event's own stamp:
        no clock is read for a notification)."""
        if not self._pending:
            self._first_at = monotonic
            self._changed.set()
        elif monotonic - self._first_at >= self.settle_s:
            self._settled.set()
        self._pending.add(address)

    async def burst(self) -> set[str]:
        """The controllers changed in the next burst (waits for its first change)."""
        while True:
            if not self._pending and not self._streaming:
                await self._changed.wait()
            began_empty = not self._pending
            settled = await self._clock.wait(self._settled, self.quiet_s)
            if not settled and began_empty:
                if not self._pending:  # the stream stopped: sleep until the next change
                    self._streaming = False
                    continue
                # It began during the wait, less than quiet_s ago: give it its quiet_s.
                settled = await self._clock.wait(self._settled, self.quiet_s)
            self._streaming = settled
            taken, self._pending = self._pending, set()
            self._changed.clear()
            self._settled.clear()
            return taken


class StateStore:
    def __init__(self, stale_after_s: float, clock: Callable[[], float] = time.time) -> None:
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.views: dict[str, ControllerView] = {}
        self._taps: list[Callable[[StateEvent], None]] = []
        self._watchers: list[Changes] = []

    def view(self, address: str) -> ControllerView:
        # Called for every notification: build a view only for an address not seen before.
        view = self.views.get(address)
        if view is None:
            view = self.views[address] = ControllerView(address)
        return view

    def tap(self, take: Callable[[StateEvent], None]) -> None:
        """Hand ``take`` every event as it is applied (``list.append`` records them); it
        runs on the notification's callback, so it must not block."""
        self._taps.append(take)

    def untap(self, take: Callable[[StateEvent], None]) -> None:
        self._taps.remove(take)

    def watch(self, settle_s: float, quiet_s: float, clock: Clock) -> Changes:
        """Which controllers changed, burst by burst (``tap`` gives every event)."""
        changes = Changes(settle_s, quiet_s, clock)
        self._watchers.append(changes)
        return changes

    def unwatch(self, changes: Changes) -> None:
        self._watchers.remove(changes)

    def set_link(self, address: str, link: LinkState) -> None:
        self.view(address).link = link

    def set_failure(self, address: str, failure: str) -> None:
        self.view(address).last_failure = failure

    def apply(self, item: StateEvent | DecodeProblem) -> None:
        if isinstance(item, DecodeProblem):
            self.view(item.address).decode_problems += 1
            return
        view = self.views.get(item.address)  # view(), inline: every notification
        if view is None:
            view = self.view(item.address)
        view.values[item.field] = item
        derive = _DERIVED.get(type(item.value))
        if derive is not None:
            derive(view, item)
        for changes in self._watchers:
            changes.mark(item.address, item.monotonic)
        for take in self._taps:
            take(item)

    def fresh(self, address: str) -> bool:
        view = self.view(address)
        return view.last_refresh is not None and (
            self.clock() - view.last_refresh <= self.stale_after_s)

    def snapshot(self, address: str, firmware_version: str | None = None) -> ControllerState:
        """The typed state `awgw state` shows; ``firmware_version`` is the registry's, used
        until the controller has told us its own."""
        view = self.view(address)
        now = self.clock()
        values = view.values

        def stamped(f: Field) -> tuple[object, float | None]:
            event = values.get(f)
            return (event.value, event.at) if event is not None else (None, None)

        fw, _ = stamped(Field.FIRMWARE_VERSION)
        status, status_at = stamped(Field.SYSTEM_STATUS)
        flow, flow_at = stamped(Field.FLOW)
        alarm, alarm_at = stamped(Field.ALARM)
        task, task_at = stamped(Field.CURRENT_TASK)
        queue, queue_at = stamped(Field.TASK_QUEUE)
        environment, environment_at = stamped(Field.ENVIRONMENT)
        rain, rain_at = stamped(Field.RAIN)
        return ControllerState(
            address=address,
            firmware_version=fw if isinstance(fw, str) else firmware_version,
            link=view.link,
            fresh=self.fresh(address),
            updated_at=view.last_refresh,
            age_s=None if view.last_refresh is None else round(now - view.last_refresh, 3),
            last_failure=view.last_failure,
            decode_problems=view.decode_problems,
            valves=[ValveState(channel=ch, open=view.valves.get(ch, (False, None))[0],
                               name=view.names.get(ch), at=view.valves.get(ch, (False, None))[1])
                    for ch in range(CHANNELS)],
            system_status=_status(status, status_at),
            flow=_flow(flow, flow_at, _pulses_per_litre(values)),
            alarm=_alarm(alarm, alarm_at, status if isinstance(status, SystemStatus) else None),
            current_task=_task(task, task_at),
            task_queue=_queue(queue, queue_at),
            environment=_environment(environment, environment_at),
            rain=_rain(rain, rain_at))


def _name(value: object) -> str:
    return getattr(value, "name", "UNKNOWN")


def _status(status: object, at: float | None) -> StatusView | None:
    if not isinstance(status, SystemStatus):
        return None
    code = int(status.code)
    # Unknown values are treated as a fault (device-ble.md 5.4).
    return StatusView(code=code, name=_name(status.code), ok=code == SystemStatusCode.OK, at=at)


def _pulses_per_litre(values: dict[Field, StateEvent]) -> int:
    """The controller's own flow calibration (System Configuration), else its default 750."""
    config = values.get(Field.SYSTEM_CONFIG)
    if config is not None and isinstance(config.value, SystemConfig) \
            and config.value.flow_calibration > 0:
        return int(config.value.flow_calibration)
    return DEFAULT_PULSES_PER_LITRE


def _flow(flow: object, at: float | None, pulses_per_litre: int) -> FlowView | None:
    if not isinstance(flow, FlowSensor):
        return None
    return FlowView(pulses_per_second=flow.pulses_per_second,
                    litres_per_minute=round(flow.litres_per_minute(pulses_per_litre), 3), at=at)


def _alarm(alarm: object, at: float | None, status: SystemStatus | None) -> AlarmView | None:
    if not isinstance(alarm, AlarmStatus):
        return None
    reading = read_alarm(alarm, status)
    return AlarmView(code=reading.code, name=reading.name, active=reading.active,
                     healed=reading.healed, data=alarm.data, temperature_c=reading.temperature_c,
                     sensor_stale=reading.sensor_stale, device_timestamp=alarm.timestamp, at=at)


def _task(task: object, at: float | None) -> TaskView | None:
    if not isinstance(task, CurrentTask) or task.channel_id == NO_CHANNEL:
        return None
    return TaskView(channel=task.channel_id, mode=_name(task.mode).lower(),
                    status=_name(task.status).lower(), target=task.target_value,
                    current=task.current_value, total_volume_ml=task.total_volume_ml, at=at)


def _queue(queue: object, at: float | None) -> QueueView | None:
    if not isinstance(queue, TaskQueue):
        return None
    return QueueView(pending=queue.pending_count, completed=queue.completed_tasks,
                     current_channel=None if queue.current_channel == NO_CHANNEL
                     else queue.current_channel,
                     error=queue.error_code, at=at)


def _environment(value: object, at: float | None) -> EnvironmentView | None:
    if not isinstance(value, EnvironmentalData) or not value.sensor_valid:
        return None  # no sensor, or one the firmware marks invalid: nothing to show
    return EnvironmentView(temperature_c=round(value.temperature_c, 2),
                           humidity_pct=round(value.humidity_pct, 2),
                           pressure_hpa=round(value.pressure_hpa, 2), at=at)


def _rain(value: object, at: float | None) -> RainView | None:
    if not isinstance(value, RainData) or value.sensor_status != RainSensorState.ACTIVE:
        return None
    return RainView(today_mm=value.today_total_mm_x100 / 100,
                    last_24h_mm=value.last_24h_mm_x100 / 100,
                    rate_mm_h=value.current_rate_mm_h_x100 / 100, at=at)
