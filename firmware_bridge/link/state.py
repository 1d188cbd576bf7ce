"""What a session learns about a controller: typed values, each with when and how it arrived."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from firmware_bridge.gatt.codec import (
    AlarmStatus,
    BulkSync,
    CurrentTask,
    FlowSensor,
    RtcConfig,
    SystemStatus,
    TaskQueue,
    ValveControl,
)
from firmware_bridge.gatt.configuration import (
    ChannelConfig,
    HydraulicStatus,
    Statistics,
    SystemConfig,
    TimezoneConfig,
)
from firmware_bridge.gatt.history import RealtimeEvent
from firmware_bridge.gatt.sensors import Diagnostics, EnvironmentalData, RainData


class Source(StrEnum):
    NOTIFY = "notify"
    POLL = "poll"
    SNAPSHOT = "snapshot"


class Field(StrEnum):
    FIRMWARE_VERSION = "firmware_version"
    SERIAL = "serial"
    BULK = "bulk"
    SYSTEM_STATUS = "system_status"
    FLOW = "flow"
    VALVE = "valve"
    TASK_QUEUE = "task_queue"
    CURRENT_TASK = "current_task"
    ALARM = "alarm"
    RTC = "rtc"
    TIMEZONE = "timezone"
    SYSTEM_CONFIG = "system_config"
    ENVIRONMENT = "environment"
    RAIN = "rain"
    DIAGNOSTICS = "diagnostics"
    HYDRAULIC = "hydraulic"
    CHANNEL = "channel"
    STATISTICS = "statistics"
    HISTORY_EVENT = "history_event"


Value = (str | BulkSync | SystemStatus | FlowSensor | ValveControl | TaskQueue | CurrentTask
         | AlarmStatus | RtcConfig | TimezoneConfig | SystemConfig | EnvironmentalData | RainData
         | Diagnostics | HydraulicStatus | ChannelConfig | Statistics | RealtimeEvent)


@dataclass(frozen=True)
class StateEvent:
    """One typed value from the controller. ``at`` is the gateway's wall clock (the device's
    clocks are not trustworthy, device-ble.md 4.4); ``monotonic`` orders events."""

    address: str
    field: Field
    value: Value
    source: Source
    at: float
    monotonic: float


@dataclass(frozen=True)
class DecodeProblem:
    """A value the controller sent that did not decode; reported, never fatal."""

    address: str
    uuid: str
    raw: bytes
    reason: str
    at: float
