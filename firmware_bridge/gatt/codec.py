"""Codecs for the controller's P0 characteristics (device-ble.md section 5). Pure.

Every ``decode`` takes the exact ATT value and returns a frozen value or raises
``GattDecodeError``; every ``encode`` returns the exact bytes. Enum fields keep values the
firmware may add later as plain ints (``UNKNOWN`` handling is the caller's choice) rather than
failing the whole frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from firmware_bridge.errors import DecodeError, EncodeError

# Re-exported (the `as` form is mypy's explicit re-export): the codec's callers name the
# limits with the layouts.
from firmware_bridge.gatt.limits import CHANNELS as CHANNELS  # noqa: PLC0414
from firmware_bridge.gatt.limits import MAX_TASK_MINUTES as MAX_TASK_MINUTES  # noqa: PLC0414
from firmware_bridge.gatt.limits import NO_CHANNEL as NO_CHANNEL  # noqa: PLC0414


class GattDecodeError(DecodeError):
    """A characteristic value does not fit its documented layout."""


def unpack_exact(layout: struct.Struct, data: bytes | bytearray, name: str) -> tuple[Any, ...]:
    """Unpack a fixed-size value; any other length is the codec's own decode error."""
    if len(data) != layout.size:
        raise GattDecodeError(f"{name}: expected {layout.size} bytes, got {len(data)}")
    return layout.unpack(data)


E = TypeVar("E", bound=IntEnum)


def enum_or_int(enum: type[E], value: int) -> E | int:
    # The member map, not enum(value): this runs for every notification, and the call
    # costs several times the look-up.
    member: E | int = enum._value2member_map_.get(value, value)  # type: ignore[assignment]
    return member


class SystemStatusCode(IntEnum):
    OK = 0
    NO_FLOW = 1
    UNEXPECTED_FLOW = 2
    FAULT = 3
    RTC_ERROR = 4
    LOW_POWER = 5
    FREEZE_LOCKOUT = 6
    LOCKED = 7


class TaskMode(IntEnum):
    DURATION = 0
    VOLUME = 1


class TaskStatus(IntEnum):
    IDLE = 0
    RUNNING = 1
    PAUSED = 2
    COMPLETED = 3


# The member maps for the decoders that run for every notification of a watering controller
# (Current Task every 50 ms, Flow every 200 ms; device-ble.md 4.3): a dict look-up in place,
# with no frame of a helper.
_TASK_MODES: dict[int, TaskMode] = {int(m): m for m in TaskMode}
_TASK_STATUSES: dict[int, TaskStatus] = {int(s): s for s in TaskStatus}


class SystemMode(IntEnum):
    IDLE = 0
    WATERING = 1
    PAUSED = 2
    ERROR_RECOVERY = 3


class AlarmCode(IntEnum):
    NONE = 0
    NO_FLOW = 1
    UNEXPECTED_FLOW = 2
    FREEZE_LOCKOUT = 3
    HIGH_FLOW = 4
    LOW_FLOW = 5
    MAINLINE_LEAK = 6
    CHANNEL_LOCK = 7
    GLOBAL_LOCK = 8


class TaskQueueCommand(IntEnum):
    NOOP = 0
    START_NEXT = 1
    PAUSE = 2
    RESUME = 3
    CANCEL = 4
    CLEAR_PENDING = 5


class CurrentTaskCommand(IntEnum):
    STOP = 0
    PAUSE = 1
    RESUME = 2


@dataclass(frozen=True)
class SystemStatus:
    LAYOUT: ClassVar = struct.Struct("<B")
    code: SystemStatusCode | int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> SystemStatus:
        (value,) = unpack_exact(cls.LAYOUT, data, "System Status")
        return cls(enum_or_int(SystemStatusCode, value))

    def encode(self) -> bytes:
        return self.LAYOUT.pack(int(self.code))


@dataclass(frozen=True)
class FlowSensor:
    LAYOUT: ClassVar = struct.Struct("<I")
    pulses_per_second: int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> FlowSensor:
        layout = cls.LAYOUT
        if len(data) != layout.size:  # unpack_exact's check, inline: a hot path
            raise GattDecodeError(f"Flow Sensor: expected {layout.size} bytes, got {len(data)}")
        (value,) = layout.unpack(data)
        return cls(value)

    def encode(self) -> bytes:
        return self.LAYOUT.pack(self.pulses_per_second)

    def litres_per_minute(self, pulses_per_litre: int) -> float:
        return self.pulses_per_second * 60 / pulses_per_litre


@dataclass(frozen=True)
class ValveControl:
    """Read/notify: a valve transition (``is_open``); write: a task request (see ``command``)."""

    LAYOUT: ClassVar = struct.Struct("<BBH")
    channel_id: int
    task_type: int
    value: int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> ValveControl:
        return cls(*unpack_exact(cls.LAYOUT, data, "Valve Control"))

    def encode(self) -> bytes:
        try:
            return self.LAYOUT.pack(self.channel_id, self.task_type, self.value)
        except struct.error as exc:
            raise EncodeError(f"Valve Control field out of range: {self}") from exc

    @property
    def is_master(self) -> bool:
        return self.channel_id == NO_CHANNEL

    @property
    def is_open(self) -> bool:
        return self.task_type == 1

    @classmethod
    def duration_task(cls, channel: int, minutes: int) -> ValveControl:
        if not 0 <= channel < CHANNELS:
            raise EncodeError(f"channel {channel} is outside 0..7")
        if not 1 <= minutes <= MAX_TASK_MINUTES:
            raise EncodeError(f"duration {minutes} min is outside 1..{MAX_TASK_MINUTES}: the "
                              "firmware keeps a task's minutes in one byte (device-ble.md Δ21)")
        return cls(channel, TaskMode.DURATION, minutes)

    @classmethod
    def volume_task(cls, channel: int, litres: int) -> ValveControl:
        if not 0 <= channel < CHANNELS:
            raise EncodeError(f"channel {channel} is outside 0..7")
        if not 1 <= litres <= 1000:
            raise EncodeError(f"volume {litres} L is outside 1..1000")
        return cls(channel, TaskMode.VOLUME, litres)

    @classmethod
    def master(cls, open_: bool) -> ValveControl:
        return cls(NO_CHANNEL, 1 if open_ else 0, 0)


@dataclass(frozen=True)
class TaskQueue:
    LAYOUT: ClassVar = struct.Struct("<BBBBHBBB")
    ERROR_FRAME: ClassVar = 0xFF
    pending_count: int
    completed_tasks: int
    current_channel: int
    current_task_type: int
    current_value: int
    command: int = 0
    task_id_to_delete: int = 0
    active_task_id: int = 0

    @classmethod
    def decode(cls, data: bytes | bytearray) -> TaskQueue:
        return cls(*unpack_exact(cls.LAYOUT, data, "Task Queue"))

    def encode(self) -> bytes:
        return self.LAYOUT.pack(
            self.pending_count, self.completed_tasks, self.current_channel,
            self.current_task_type, self.current_value, self.command, self.task_id_to_delete,
            self.active_task_id,
        )

    @property
    def is_error_report(self) -> bool:
        return self.current_task_type == self.ERROR_FRAME

    @property
    def error_code(self) -> int | None:
        return self.current_value if self.is_error_report else None

    @classmethod
    def command_frame(cls, command: TaskQueueCommand) -> TaskQueue:
        return cls(0, 0, 0, 0, 0, int(command), 0, 0)


@dataclass(frozen=True)
class CurrentTask:
    LAYOUT: ClassVar = struct.Struct("<BIBIIIBH")
    channel_id: int
    start_time_uptime_s: int
    mode: TaskMode | int
    target_value: int
    current_value: int
    total_volume_ml: int
    status: TaskStatus | int
    reserved: int = 0

    @classmethod
    def decode(cls, data: bytes | bytearray) -> CurrentTask:
        layout = cls.LAYOUT
        if len(data) != layout.size:  # unpack_exact's check, inline: a hot path
            raise GattDecodeError(f"Current Task: expected {layout.size} bytes, got {len(data)}")
        ch, start, mode, target, current, total, status, reserved = layout.unpack(data)
        return cls(ch, start, _TASK_MODES.get(mode, mode), target, current, total,
                   _TASK_STATUSES.get(status, status), reserved)

    def encode(self) -> bytes:
        return self.LAYOUT.pack(
            self.channel_id, self.start_time_uptime_s, int(self.mode), self.target_value,
            self.current_value, self.total_volume_ml, int(self.status), self.reserved,
        )

    @property
    def idle(self) -> bool:
        return self.channel_id == NO_CHANNEL

    @classmethod
    def idle_frame(cls) -> CurrentTask:
        return cls(NO_CHANNEL, 0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class AlarmStatus:
    LAYOUT: ClassVar = struct.Struct("<BHI")
    code: AlarmCode | int
    data: int
    timestamp: int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> AlarmStatus:
        code, value, ts = unpack_exact(cls.LAYOUT, data, "Alarm Status")
        return cls(enum_or_int(AlarmCode, code), value, ts)

    def encode(self) -> bytes:
        return self.LAYOUT.pack(int(self.code), self.data, self.timestamp)

    @property
    def empty(self) -> bool:
        """The slot holds no alarm (code 0). Whether a non-empty slot is an active alarm
        depends on its data and System Status: ``gatt.alarms.read_alarm``."""
        return int(self.code) == 0


@dataclass(frozen=True)
class RtcConfig:
    """Local wall-clock time plus the total UTC offset in effect (device-ble.md 5.8)."""

    LAYOUT: ClassVar = struct.Struct("<BBBBBBBhB6s")
    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    day_of_week: int
    utc_offset_minutes: int
    dst_active: int

    @property
    def is_fallback(self) -> bool:
        """The fixed value the firmware returns when its RTC is unreadable (5.8)."""
        return (self.year, self.month, self.day, self.hour, self.minute, self.second,
                self.utc_offset_minutes, self.dst_active) == (2025, 7, 13, 12, 0, 0, 120, 1)

    @classmethod
    def decode(cls, data: bytes | bytearray) -> RtcConfig:
        if len(data) != cls.LAYOUT.size:
            raise GattDecodeError(f"RTC Configuration: expected 16 bytes, got {len(data)}")
        y, mo, d, h, mi, s, dow, off, dst, _reserved = cls.LAYOUT.unpack(data)
        if y > 99:
            raise GattDecodeError(f"RTC Configuration: year field {y} is outside 0..99")
        return cls(2000 + y, mo, d, h, mi, s, dow, off, dst)

    def encode(self) -> bytes:
        if not 2000 <= self.year <= 2099:
            raise EncodeError(f"RTC year {self.year} is outside 2000..2099")
        return self.LAYOUT.pack(self.year - 2000, self.month, self.day, self.hour, self.minute,
                                self.second, self.day_of_week, self.utc_offset_minutes,
                                self.dst_active, bytes(6))


@dataclass(frozen=True)
class BulkSync:
    """The 60-byte aggregate snapshot (v1); a 68-byte v2 adds an ASCII serial."""

    LAYOUT: ClassVar = struct.Struct("<BBHIhBBBBBBHHhHHhHHHHBBHBBbbBBHI8s")
    version: int
    flags: int
    utc_timestamp: int
    timezone_offset_min: int
    dst_active: int
    system_mode: SystemMode | int
    active_alarms: int
    valve_states: int
    active_channel: int
    remaining_seconds: int
    flow_rate_raw: int  # named ml/min by the docs, pulses/s in the firmware (delta-12)
    temperature_c_x10: int
    humidity_pct_x10: int
    pressure_hpa_x10: int
    dew_point_c_x10: int
    vpd_kpa_x100: int
    rain_today_mm_x10: int
    rain_week_mm_x10: int
    rain_integration_enabled: int
    skip_active: int
    skip_remaining_min: int
    temp_comp_enabled: int
    rain_comp_enabled: int
    temp_adjustment_pct: int
    rain_adjustment_pct: int
    pending_task_count: int
    next_task_channel: int
    next_task_in_min: int
    next_task_timestamp: int
    channel_status: bytes
    serial: str | None = None

    @classmethod
    def decode(cls, data: bytes | bytearray) -> BulkSync:
        if len(data) < cls.LAYOUT.size:
            raise GattDecodeError(f"Bulk Sync: expected >= 60 bytes, got {len(data)}")
        (version, flags, _reserved, utc, tz, dst, _pad1, mode, alarms, valves, active,
         remaining, flow, temp, hum, press, dew, vpd, _pad2, rain_today, rain_week, rain_int,
         skip, skip_min, temp_comp, rain_comp, temp_adj, rain_adj, pending, next_ch,
         next_min, next_ts, ch_status) = cls.LAYOUT.unpack_from(data, 0)
        serial = None
        if len(data) >= 68:
            text = data[60:68].rstrip(b"\0")
            if len(text) == 6 and text.isdigit():
                serial = text.decode()
        return cls(version, flags, utc, tz, dst, enum_or_int(SystemMode, mode), alarms, valves,
                   active, remaining, flow, temp, hum, press, dew, vpd, rain_today, rain_week,
                   rain_int, skip, skip_min, temp_comp, rain_comp, temp_adj, rain_adj, pending,
                   next_ch, next_min, next_ts, ch_status, serial)

    def encode(self) -> bytes:
        base = self.LAYOUT.pack(
            self.version, self.flags, 0, self.utc_timestamp, self.timezone_offset_min,
            self.dst_active, 0, int(self.system_mode), self.active_alarms, self.valve_states,
            self.active_channel, self.remaining_seconds, self.flow_rate_raw,
            self.temperature_c_x10, self.humidity_pct_x10, self.pressure_hpa_x10,
            self.dew_point_c_x10, self.vpd_kpa_x100, 0, self.rain_today_mm_x10,
            self.rain_week_mm_x10, self.rain_integration_enabled, self.skip_active,
            self.skip_remaining_min, self.temp_comp_enabled, self.rain_comp_enabled,
            self.temp_adjustment_pct, self.rain_adjustment_pct, self.pending_task_count,
            self.next_task_channel, self.next_task_in_min, self.next_task_timestamp,
            self.channel_status,
        )
        if self.serial is None:
            return base
        return base + self.serial.encode().ljust(8, b"\0")[:8]

    @property
    def rtc_valid(self) -> bool:
        return bool(self.flags & 0x01)

    def valve_open(self, channel: int) -> bool:
        return bool(self.valve_states >> channel & 1)
