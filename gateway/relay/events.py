"""What the relays say about a controller, derived from its typed state: the snapshot they
send, and the events read off two successive states (pure functions, tested as tables).

Events: watering_started / watering_finished (channel, volume, duration), alarm_raised /
alarm_cleared, task_queued / task_done / task_failed, controller_reachable / unreachable.
Firmware update outcomes are events too, put in by the OTA path (``ota_event``). Times are the
gateway's clock (device-ble.md 4.4: the controller's RTC may be unset).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import JsonValue

from firmware_bridge.gatt.history import DetailedEntry
from gateway.ops.models import ControllerState, OtaReport

JsonObject = dict[str, JsonValue]


@dataclass(frozen=True)
class DerivedEvent:
    type: str
    data: JsonObject


@dataclass(frozen=True)
class Watering:
    """A watering the relay saw start: kept to report its duration when it ends."""

    channel: int
    started_at: float
    volume_ml: int = 0


def snapshot_data(state: ControllerState) -> JsonObject:
    """The compact snapshot sent to the cloud and retained on MQTT (well under 8 KiB)."""
    # No link state: a shared controller connects and releases every visit, which is not a
    # change of the controller; reachability is ``fresh``.
    data: JsonObject = {
        "fresh": state.fresh,
        "valves": [{"ch": v.channel, "open": v.open} for v in state.valves],
    }
    if state.system_status is not None:
        data["status"] = state.system_status.name
    if state.flow is not None:
        data["flow_l_min"] = state.flow.litres_per_minute
    if state.alarm is not None:
        alarm: JsonObject = {"code": state.alarm.code, "name": state.alarm.name,
                             "active": state.alarm.active, "data": state.alarm.data}
        if state.alarm.temperature_c is not None:
            alarm["temperature_c"] = state.alarm.temperature_c
        data["alarm"] = alarm
    if state.current_task is not None:
        task = state.current_task
        data["task"] = {"ch": task.channel, "mode": task.mode, "status": task.status,
                        "target": task.target, "current": task.current,
                        "volume_ml": task.total_volume_ml}
    if state.task_queue is not None:
        data["queue"] = {"pending": state.task_queue.pending,
                         "completed": state.task_queue.completed}
    return data


def derive(previous: ControllerState | None, current: ControllerState,
           watering: Watering | None, now: float) -> tuple[list[DerivedEvent], Watering | None]:
    """Events between two states, and the watering in progress after them."""
    events: list[DerivedEvent] = []
    if previous is None or previous.fresh != current.fresh:
        if current.fresh:
            events.append(DerivedEvent("controller_reachable", {}))
        elif previous is not None:
            events.append(DerivedEvent("controller_unreachable",
                                       {"last_failure": current.last_failure}))
    events += _alarm_events(previous, current)
    events += _queue_events(previous, current)
    running = current.current_task if current.current_task is not None and \
        current.current_task.runs else None
    if watering is not None and (running is None or running.channel != watering.channel):
        events.append(DerivedEvent("watering_finished", {
            "ch": watering.channel, "volume_ml": watering.volume_ml,
            "duration_s": round(max(0.0, now - watering.started_at), 1)}))
        watering = None
    if running is not None:
        if watering is None:
            watering = Watering(running.channel, now)
            events.append(DerivedEvent("watering_started", {"ch": running.channel,
                                                            "mode": running.mode}))
        watering = Watering(watering.channel, watering.started_at, running.total_volume_ml)
    return events, watering


def _alarm_events(previous: ControllerState | None,
                  current: ControllerState) -> list[DerivedEvent]:
    before = previous.alarm if previous is not None else None
    after = current.alarm
    was = before is not None and before.active
    now_active = after is not None and after.active
    if now_active and after is not None and (
            not was or before is None or (before.code, before.device_timestamp)
            != (after.code, after.device_timestamp)):
        data: JsonObject = {"code": after.code, "name": after.name, "data": after.data}
        if after.temperature_c is not None:
            data["temperature_c"] = after.temperature_c
        return [DerivedEvent("alarm_raised", data)]
    if was and not now_active and before is not None:
        return [DerivedEvent("alarm_cleared", {"code": before.code, "name": before.name,
                                               "healed": bool(after and after.healed)})]
    return []


def _queue_events(previous: ControllerState | None,
                  current: ControllerState) -> list[DerivedEvent]:
    before = previous.task_queue if previous is not None else None
    after = current.task_queue
    if before is None or after is None:
        return []
    events = []
    if after.pending > before.pending:
        events.append(DerivedEvent("task_queued", {"pending": after.pending}))
    if after.completed > before.completed:
        events.append(DerivedEvent("task_done", {"completed": after.completed}))
    if after.error is not None and after.error != before.error:
        events.append(DerivedEvent("task_failed", {"error": after.error}))
    return events


def ota_event(report: OtaReport) -> DerivedEvent:
    return DerivedEvent("firmware_update", {
        "result": report.result, "reason": report.reason, "version": report.version,
        "firmware_revision": report.firmware_revision, "uploaded_bytes": report.uploaded_bytes,
        "seconds": report.seconds})


def history_dedupe(entry: DetailedEntry) -> str:
    """A record's identity (timestamp + channel + volume): the controller resends the same
    30 entries a channel every time it is asked."""
    return f"{int(entry.timestamp)}:{entry.channel_id}:{int(entry.total_volume_ml)}"


def history_data(entry: DetailedEntry) -> JsonObject:
    return {"ch": entry.channel_id, "timestamp": int(entry.timestamp),
            "event": int(entry.event_type), "mode": int(entry.mode),
            "target": int(entry.target_value_ml), "actual_ml": int(entry.actual_value_ml),
            "volume_ml": int(entry.total_volume_ml), "trigger": int(entry.trigger_type),
            "success": entry.success, "error": entry.error_code,
            "flow_ml_s": entry.flow_rate_avg_ml_s}


class EventTracker:
    """Per controller, the last state and the watering in progress: what ``derive`` needs to
    turn a stream of states into events. Each relay keeps its own."""

    def __init__(self) -> None:
        self._last: dict[str, ControllerState] = {}
        self._watering: dict[str, Watering | None] = {}

    def track(self, address: str, state: ControllerState, now: float) -> list[DerivedEvent]:
        events, self._watering[address] = derive(self._last.get(address), state,
                                                 self._watering.get(address), now)
        self._last[address] = state
        return events
