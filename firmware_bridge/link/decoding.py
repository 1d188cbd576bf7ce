"""Which characteristic decodes into which state field, and with which codec: the session's
one table for reads and notifications (device-ble.md 5)."""

from __future__ import annotations

from collections.abc import Callable

from firmware_bridge.gatt import uuids
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
from firmware_bridge.gatt.sensors import Diagnostics, EnvironmentalData, RainData
from firmware_bridge.link.state import Field, Value

Decoder = Callable[[bytes], Value]
DECODERS: dict[str, tuple[Field, Decoder]] = {
    uuids.BULK_SYNC: (Field.BULK, BulkSync.decode),
    uuids.SYSTEM_STATUS: (Field.SYSTEM_STATUS, SystemStatus.decode),
    uuids.FLOW_SENSOR: (Field.FLOW, FlowSensor.decode),
    uuids.VALVE_CONTROL: (Field.VALVE, ValveControl.decode),
    uuids.TASK_QUEUE: (Field.TASK_QUEUE, TaskQueue.decode),
    uuids.CURRENT_TASK: (Field.CURRENT_TASK, CurrentTask.decode),
    uuids.ALARM_STATUS: (Field.ALARM, AlarmStatus.decode),
    uuids.RTC_CONFIG: (Field.RTC, RtcConfig.decode),
    uuids.TIMEZONE_CONFIG: (Field.TIMEZONE, TimezoneConfig.decode),
    uuids.SYSTEM_CONFIG: (Field.SYSTEM_CONFIG, SystemConfig.decode),
    uuids.ENVIRONMENTAL_DATA: (Field.ENVIRONMENT, EnvironmentalData.decode),
    uuids.RAIN_DATA: (Field.RAIN, RainData.decode),
    uuids.DIAGNOSTICS: (Field.DIAGNOSTICS, Diagnostics.decode),
    uuids.HYDRAULIC_STATUS: (Field.HYDRAULIC, HydraulicStatus.decode),
    uuids.CHANNEL_CONFIG: (Field.CHANNEL, ChannelConfig.decode),
    uuids.STATISTICS: (Field.STATISTICS, Statistics.decode),
}
