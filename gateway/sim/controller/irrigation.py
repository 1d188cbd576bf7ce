"""The virtual controller's irrigation state: a small, living model of the firmware's behaviour.

Pure apart from the injected clock: GATT writes come in as bytes, reads go out as bytes built
by the firmware_bridge codecs, and every change is reported through ``on_change(uuid, value)``
so the GATT layer can notify (throttled) exactly what the firmware would.

Behaviours from device-ble.md: one valve at a time; Valve writes queue a task the task loop
starts; the Task Queue answers every 9-byte write with success and reports failures only by
notification; flow pulses while a valve is open; a channel with no flow raises NO_FLOW; alarms
live in a single slot; the RTC keeps local time plus a total offset.
"""

from __future__ import annotations

import calendar
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_bridge.errors import EncodeError
from firmware_bridge.gatt import uuids
from firmware_bridge.gatt.codec import (
    NO_CHANNEL,
    AlarmCode,
    AlarmStatus,
    BulkSync,
    CurrentTask,
    FlowSensor,
    RtcConfig,
    SystemMode,
    SystemStatus,
    SystemStatusCode,
    TaskMode,
    TaskQueue,
    TaskStatus,
    ValveControl,
)
from firmware_bridge.gatt.configuration import (
    ChannelConfig,
    CoverageType,
    HydraulicStatus,
    ScheduleConfig,
    ScheduleType,
    Statistics,
    SystemConfig,
    TimezoneConfig,
)
from firmware_bridge.gatt.fragments import UnifiedHeader
from firmware_bridge.gatt.history import DetailedEntry, HistoryQuery, HistoryType
from firmware_bridge.gatt.sensors import Diagnostics, EnvironmentalData, RainData
from firmware_bridge.gatt.units import Millilitres, UnixSeconds

# ATT error codes the firmware returns (device-ble.md 4.1).
ATT_WRITE_NOT_PERMITTED = 0x03
ATT_INVALID_OFFSET = 0x07
ATT_INVALID_LENGTH = 0x0D
ATT_VALUE_NOT_ALLOWED = 0x13

PULSES_PER_LITRE = 750
QUEUE_CAPACITY = 10
NO_FLOW_DETECT_S = 5.0
# After NO_FLOW the firmware keeps checking the line; each failed check re-sends the alarm with
# the attempt count, a line that flows again heals it (data 0, status OK; device-ble.md Δ22).
NO_FLOW_RETRY_S = 3.0
# Stray pulses with every valve closed beyond this count raise UNEXPECTED_FLOW (5.7).
STRAY_PULSES_ALARM = 10
# The firmware stores a duration task's minutes in a u8 (device-ble.md Δ21).
TASK_MINUTES_MASK = 0xFF
TASK_QUEUE_ACTIVE_NOTIFY_S = 5.0
FLOW_NOTIFY_S = 5.0
STATUS_REMINDER_S = 30.0
# Unified-header payload per fragment at MTU 247 (device-ble.md 8.3).
HISTORY_FRAGMENT = 232
HISTORY_PAGE = 30
# Characteristics whose 1-byte write selects the channel a later read returns (4.2).
SELECTORS = (uuids.CHANNEL_CONFIG, uuids.SCHEDULE_CONFIG, uuids.STATISTICS,
             uuids.HYDRAULIC_STATUS)


class AttError(Exception):
    """A write the firmware refuses with an ATT error code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"ATT 0x{code:02x}: {reason}")
        self.code = code


@dataclass
class QueuedTask:
    channel: int
    mode: TaskMode
    value: int  # minutes or litres


@dataclass
class RunningTask:
    channel: int
    mode: TaskMode
    target: int  # seconds or millilitres
    start_uptime_s: int
    elapsed_s: float = 0.0
    volume_ml: float = 0.0
    paused: bool = False
    dry_s: float = 0.0


@dataclass(frozen=True)
class Schedule:
    channel: int
    minutes: int
    every_s: float
    first_after_s: float = 5.0


@dataclass
class IrrigationConfig:
    # Nominal flow per channel in pulses/s; 0 models a blocked line (NO_FLOW).
    nominal_pps: tuple[int, ...] = (25, 20, 23, 30, 18, 22, 26, 24)
    schedules: tuple[Schedule, ...] = ()
    # How fast simulated watering time runs relative to real time (demo: see it finish).
    time_scale: float = 1.0
    utc_offset_min: int = 60
    dst_active: int = 0


@dataclass
class IrrigationModel:
    config: IrrigationConfig
    on_change: Callable[[str, bytes], None]
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    queue: deque[QueuedTask] = field(default_factory=deque)
    running: RunningTask | None = None
    completed: int = 0
    valve_states: int = 0
    master_open: bool = False
    status: SystemStatusCode = SystemStatusCode.OK
    alarm: AlarmStatus = field(default_factory=lambda: AlarmStatus(AlarmCode.NONE, 0, 0))
    valve_read: bytes = bytes.fromhex("ff000000")
    flow_pps: int = 0
    rtc_skew_s: float = 0.0
    utc_offset_min: int = 0
    dst_active: int = 0
    timezone: TimezoneConfig = field(
        default_factory=lambda: TimezoneConfig(60, True, 3, 5, 0, 10, 5, 0, 60))  # type: ignore[arg-type]
    selected: dict[str, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=lambda: [f"Zone {i + 1}" for i in range(8)])
    volumes: list[int] = field(default_factory=lambda: [0] * 8)
    history: list[DetailedEntry] = field(default_factory=list)
    stray_pps: int = 0  # pulses with every valve closed (a leak, a stuck valve)

    def __post_init__(self) -> None:
        self.line_pps = list(self.config.nominal_pps)  # what each line flows now
        self._no_flow_channel: int | None = None
        self._no_flow_attempts = 0
        self._next_no_flow_check = 0.0
        self._stray_pulses = 0.0
        self.boot_monotonic = self.monotonic()
        self.utc_offset_min = self.config.utc_offset_min
        self.dst_active = self.config.dst_active
        self._last_tick = self.boot_monotonic
        self._next_schedule = {i: self.boot_monotonic + s.first_after_s
                               for i, s in enumerate(self.config.schedules)}
        self._last_flow_notify = 0.0
        self._last_queue_notify = 0.0
        self._last_status_notify = 0.0

    # ---- time --------------------------------------------------------------------------------

    def uptime_s(self) -> int:
        return int(self.monotonic() - self.boot_monotonic)

    def utc_now(self) -> int:
        return int(self.clock() + self.rtc_skew_s)

    # ---- reads -------------------------------------------------------------------------------

    def read(self, uuid: str) -> bytes:
        readers: dict[str, Callable[[], bytes]] = {
            uuids.BULK_SYNC: lambda: self.bulk_sync().encode(),
            uuids.VALVE_CONTROL: self._valve_read_value,
            uuids.FLOW_SENSOR: lambda: FlowSensor(self.flow_pps).encode(),
            uuids.SYSTEM_STATUS: lambda: SystemStatus(self.status).encode(),
            uuids.TASK_QUEUE: lambda: self.task_queue().encode(),
            uuids.CURRENT_TASK: lambda: self.current_task().encode(),
            uuids.ALARM_STATUS: lambda: self.alarm.encode(),  # noqa: PLW0108 - alarm is replaced, read it late
            uuids.RTC_CONFIG: lambda: self.rtc().encode(),
            uuids.TIMEZONE_CONFIG: self.timezone.encode,
            uuids.SYSTEM_CONFIG: lambda: self.system_config().encode(),
            uuids.ENVIRONMENTAL_DATA: lambda: EnvironmentalData(
                21.5, 48.25, 1013.25, self.uptime_s() * 1000, True, 60, 92).encode(),  # type: ignore[arg-type]
            uuids.RAIN_DATA: lambda: RainData(0, 0, 0, 0, 0, 0, 1, 80).encode(),  # type: ignore[arg-type]
            uuids.DIAGNOSTICS: lambda: Diagnostics(
                self.uptime_s() // 60, 0, 0, self.valve_states, None).encode(),
            uuids.CHANNEL_CONFIG: lambda: self.channel_config(
                self._selected(uuids.CHANNEL_CONFIG)).encode(),
            uuids.SCHEDULE_CONFIG: lambda: self.schedule(
                self._selected(uuids.SCHEDULE_CONFIG)).encode(),
            uuids.STATISTICS: lambda: self.statistics(self._selected(uuids.STATISTICS)).encode(),
            uuids.HYDRAULIC_STATUS: lambda: self.hydraulic(
                self._selected(uuids.HYDRAULIC_STATUS)).encode(),
            uuids.HISTORY: lambda: bytes(32),
        }
        return readers[uuid]()

    def _selected(self, uuid: str) -> int:
        channel = self.selected.get(uuid, 0)
        if channel == NO_CHANNEL:  # Hydraulic: the channel now watering, else 0
            return self.running.channel if self.running else 0
        return channel

    def system_config(self) -> SystemConfig:
        return SystemConfig(2, 0, PULSES_PER_LITRE, 1, 8, True, 3, 2, 5, True,  # type: ignore[arg-type]
                            self.master_open, True, 60, 1, 0, False, 0.0, 0.05, 0, 0.0, 20.0,
                            0, 0, 0, 92, self.utc_now(), self.uptime_s() * 1000)  # type: ignore[arg-type]

    def channel_config(self, channel: int) -> ChannelConfig:
        return ChannelConfig(channel, self.names[channel], False, 5, 2, 1,
                             CoverageType.AREA_M2, 25.0, 80)

    def schedule(self, channel: int) -> ScheduleConfig:
        for sched in self.config.schedules:
            if sched.channel == channel:
                return ScheduleConfig(channel, ScheduleType.DAILY, 0x7F, 6, 30, 0,
                                      sched.minutes, True)
        return ScheduleConfig(channel, ScheduleType.DAILY, 0, 0, 0, 0, 0, False)

    def statistics(self, channel: int) -> Statistics:
        done = [e for e in self.history if e.channel_id == channel]
        last = done[-1] if done else None
        return Statistics(channel, Millilitres(self.volumes[channel]),
                          last.total_volume_ml if last else Millilitres(0),
                          last.timestamp if last else UnixSeconds(0), len(done))

    def hydraulic(self, channel: int) -> HydraulicStatus:
        nominal = self.config.nominal_pps[channel] * 60 * 1000 // PULSES_PER_LITRE
        return HydraulicStatus(channel, 2, 0, 0, nominal, 12, 30, 40, True, True, 5, 3,
                               False, False, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # type: ignore[arg-type]

    def _valve_read_value(self) -> bytes:
        return self.valve_read

    def current_task(self) -> CurrentTask:
        task = self.running
        if task is None:
            return CurrentTask.idle_frame()
        volume_mode = task.mode == TaskMode.VOLUME
        current = int(task.volume_ml) if volume_mode else int(task.elapsed_s)
        return CurrentTask(
            task.channel, task.start_uptime_s, task.mode, task.target, current,
            int(task.volume_ml), TaskStatus.PAUSED if task.paused else TaskStatus.RUNNING,
            int(task.elapsed_s) if volume_mode else 0,
        )

    def task_queue(self, error: int | None = None) -> TaskQueue:
        task = self.running
        if error is not None:
            # The error report keeps the running channel, as the firmware's frame does.
            return TaskQueue(len(self.queue), self.completed % 256,
                             NO_CHANNEL if task is None else task.channel,
                             TaskQueue.ERROR_FRAME, error, 0, 0, 0 if task is None else 1)
        if task is None:
            return TaskQueue(len(self.queue), self.completed % 256, NO_CHANNEL, 0, 0, 0, 0, 0)
        configured = (task.target // 60 if task.mode == TaskMode.DURATION
                      else task.target // 1000)
        return TaskQueue(len(self.queue), self.completed % 256, task.channel, int(task.mode),
                         configured, 0, 0, 1)

    def rtc(self) -> RtcConfig:
        local = time.gmtime(self.utc_now() + self.utc_offset_min * 60)
        return RtcConfig(local.tm_year, local.tm_mon, local.tm_mday, local.tm_hour,
                         local.tm_min, local.tm_sec, (local.tm_wday + 1) % 7,
                         self.utc_offset_min, self.dst_active)

    def bulk_sync(self) -> BulkSync:
        task = self.running
        mode = SystemMode.IDLE
        remaining = 0
        if task is not None:
            mode = SystemMode.PAUSED if task.paused else SystemMode.WATERING
            if task.mode == TaskMode.DURATION:
                remaining = max(0, int(task.target - task.elapsed_s))
        if self.status in (SystemStatusCode.FAULT, SystemStatusCode.NO_FLOW):
            mode = SystemMode.ERROR_RECOVERY
        channel_status = bytearray(8)
        for ch in range(8):
            open_ = bool(self.valve_states >> ch & 1)
            scheduled = any(s.channel == ch for s in self.config.schedules)
            channel_status[ch] = (0x04 if open_ else 0) | (0x08 if scheduled else 0) | (
                0x10 if open_ or scheduled else 0)
        nxt = self.queue[0] if self.queue else None
        return BulkSync(
            version=1, flags=0x01, utc_timestamp=self.utc_now(),
            timezone_offset_min=self.utc_offset_min, dst_active=self.dst_active,
            system_mode=mode, active_alarms=0, valve_states=self.valve_states,
            active_channel=task.channel if task else NO_CHANNEL, remaining_seconds=remaining,
            flow_rate_raw=self.flow_pps, temperature_c_x10=0, humidity_pct_x10=0,
            pressure_hpa_x10=0, dew_point_c_x10=0, vpd_kpa_x100=0, rain_today_mm_x10=0,
            rain_week_mm_x10=0, rain_integration_enabled=0, skip_active=0, skip_remaining_min=0,
            temp_comp_enabled=0, rain_comp_enabled=0, temp_adjustment_pct=0,
            rain_adjustment_pct=0, pending_task_count=len(self.queue),
            next_task_channel=nxt.channel if nxt else NO_CHANNEL,
            next_task_in_min=(0xFFFF if nxt is None or task is not None else 0),
            next_task_timestamp=0, channel_status=bytes(channel_status),
        )

    # ---- writes ------------------------------------------------------------------------------

    def write(self, uuid: str, value: bytes, offset: int = 0) -> None:
        writers: dict[str, Callable[[bytes], None]] = {
            uuids.VALVE_CONTROL: self._write_valve,
            uuids.TASK_QUEUE: self._write_task_queue,
            uuids.CURRENT_TASK: self._write_current_task,
            uuids.ALARM_STATUS: self._write_alarm,
            uuids.RTC_CONFIG: self._write_rtc,
            uuids.TIMEZONE_CONFIG: self._write_timezone,
            uuids.HISTORY: self._write_history,
        }
        if offset != 0:
            raise AttError(ATT_INVALID_OFFSET, "non-zero offset")
        if uuid in SELECTORS and len(value) == 1:
            allow_active = uuid == uuids.HYDRAULIC_STATUS
            if value[0] >= 8 and not (allow_active and value[0] == NO_CHANNEL):
                raise AttError(ATT_VALUE_NOT_ALLOWED, "selector channel out of range")
            self.selected[uuid] = value[0]
            return
        if uuid not in writers:
            raise AttError(ATT_WRITE_NOT_PERMITTED, "write not modelled by the simulator")
        writers[uuid](value)

    def _write_timezone(self, value: bytes) -> None:
        if len(value) != 11:
            raise AttError(ATT_INVALID_LENGTH, "timezone write must be 11 bytes")
        tz = TimezoneConfig.decode(value)
        try:
            tz.validate()
        except EncodeError as exc:
            raise AttError(ATT_VALUE_NOT_ALLOWED, str(exc)) from exc
        if not tz.dst_enabled:
            tz = TimezoneConfig(tz.utc_offset_minutes, False)
        self.timezone = tz
        self.on_change(uuids.TIMEZONE_CONFIG, tz.encode())

    def _write_history(self, value: bytes) -> None:
        if len(value) != 12:
            raise AttError(ATT_INVALID_LENGTH, "history query must be 12 bytes")
        query = HistoryQuery.decode(value)
        if query.channel_id >= 8 and query.channel_id != NO_CHANNEL:
            raise AttError(ATT_VALUE_NOT_ALLOWED, "history channel out of range")
        if query.history_type != HistoryType.DETAILED:
            self.on_change(uuids.HISTORY,
                           UnifiedHeader(int(query.history_type), 0, 0, 0, 1, 0).encode())
            return
        channel = 0 if query.channel_id == NO_CHANNEL else query.channel_id
        count = min(max(query.count, 1), 50)
        entries = [e for e in self.history if e.channel_id == channel][-HISTORY_PAGE:][:count]
        if not entries:
            self.on_change(uuids.HISTORY, UnifiedHeader(0, 0, 0, 0, 1, 0).encode())
            return
        echo = bytearray(value)
        echo[3] = len(entries)
        payload = bytes(echo) + b"".join(
            DetailedEntry.LAYOUT.pack(e.timestamp, e.channel_id, int(e.event_type), int(e.mode),
                                      e.target_value_ml, e.actual_value_ml, e.total_volume_ml,
                                      int(e.trigger_type), int(e.success), e.error_code,
                                      e.flow_rate_avg_ml_s, bytes(6)) for e in entries)
        chunks = [payload[i:i + HISTORY_FRAGMENT] for i in range(0, len(payload), HISTORY_FRAGMENT)]
        for index, chunk in enumerate(chunks):
            self.on_change(uuids.HISTORY, UnifiedHeader(0, 0, len(entries), index, len(chunks),
                                                        len(chunk)).encode(chunk))

    def _write_valve(self, value: bytes) -> None:
        if len(value) != 4:
            raise AttError(ATT_INVALID_LENGTH, "valve write must be 4 bytes")
        cmd = ValveControl.decode(value)
        if cmd.is_master:
            if cmd.task_type > 1:
                raise AttError(ATT_VALUE_NOT_ALLOWED, "master task_type > 1")
            self.master_open = cmd.is_open
            frame = ValveControl.master(cmd.is_open).encode()
            self.valve_read = frame
            self.on_change(uuids.VALVE_CONTROL, frame)
            return
        if cmd.channel_id >= 8 or cmd.task_type > 1 or cmd.value == 0:
            raise AttError(ATT_VALUE_NOT_ALLOWED, "channel, type or value out of range")
        limit = 1440 if cmd.task_type == TaskMode.DURATION else 1000
        if cmd.value > limit:
            raise AttError(ATT_VALUE_NOT_ALLOWED, "duration/volume above limit")
        if len(self.queue) >= QUEUE_CAPACITY or self.status == SystemStatusCode.FREEZE_LOCKOUT:
            raise AttError(ATT_WRITE_NOT_PERMITTED, "queue full or lockout")
        # Validated up to 1440, stored in a u8: 256 runs 0 minutes, 1440 runs 160 (Δ21).
        stored = (cmd.value & TASK_MINUTES_MASK if cmd.task_type == TaskMode.DURATION
                  else cmd.value)
        self.queue.append(QueuedTask(cmd.channel_id, TaskMode(cmd.task_type), stored))
        self.valve_read = bytes(value)  # the firmware copies the write into the read buffer
        self._notify_queue()
        self._maybe_start_next()

    def _write_task_queue(self, value: bytes) -> None:
        if len(value) != 9:
            raise AttError(ATT_INVALID_LENGTH, "task queue write must be 9 bytes")
        command = value[6]
        error: int | None = None
        if command == 1:
            if not self.queue:
                error = 1
            elif self.running is not None or self.status != SystemStatusCode.OK:
                error = 3
            else:
                self._maybe_start_next()
        elif command == 2:
            error = self._pause(True)
        elif command == 3:
            error = self._pause(False)
        elif command == 4:
            error = None if self.running is not None else 2
            if self.running is not None:
                self._finish(cancelled=True)
        elif command == 5:
            self.queue.clear()
        elif command != 0:
            error = 2
        # The ATT write always succeeds; the outcome is only visible by notification.
        self.on_change(uuids.TASK_QUEUE, self.task_queue(error).encode())

    def _write_current_task(self, value: bytes) -> None:
        if len(value) != 1:
            raise AttError(ATT_INVALID_LENGTH, "current task write must be 1 byte")
        op = value[0]
        if op > 2:
            raise AttError(ATT_VALUE_NOT_ALLOWED, "unknown opcode")
        if self.running is None:
            raise AttError(ATT_WRITE_NOT_PERMITTED, "nothing running")
        if op == 0:
            self._finish(cancelled=True)
        elif self._pause(op == 1) is not None:
            raise AttError(ATT_WRITE_NOT_PERMITTED, "not running / not paused")

    def _write_alarm(self, value: bytes) -> None:
        if len(value) > 7:
            raise AttError(ATT_INVALID_LENGTH, "alarm write longer than 7 bytes")
        if len(value) != 1:
            return  # 2..7 bytes: copied into the buffer without effect (firmware test hook)
        code = value[0]
        if code in (0x00, 0xFF):
            self.clear_alarm()
        elif 0x01 <= code <= 0x0D:
            if code == int(self.alarm.code):
                self.clear_alarm()
        else:
            raise AttError(ATT_VALUE_NOT_ALLOWED, "unknown alarm clear code")

    def _write_rtc(self, value: bytes) -> None:
        if len(value) != 16:
            raise AttError(ATT_INVALID_OFFSET, "RTC write must be 16 bytes")
        rtc = RtcConfig.decode(value)
        days_in_month = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
        if not (1 <= rtc.month <= 12 and 1 <= rtc.day <= days_in_month[rtc.month - 1]
                and rtc.hour < 24 and rtc.minute < 60 and rtc.second < 60
                and rtc.day_of_week <= 6 and rtc.dst_active <= 1):
            raise AttError(ATT_VALUE_NOT_ALLOWED, "RTC field out of range")
        local = calendar.timegm((rtc.year, rtc.month, rtc.day, rtc.hour, rtc.minute,
                                 rtc.second, 0, 0, 0))
        utc = local - rtc.utc_offset_minutes * 60
        self.rtc_skew_s = utc - self.clock()
        self.utc_offset_min = rtc.utc_offset_minutes
        self.dst_active = rtc.dst_active
        # The offset becomes the base offset and the DST rules are erased (5.8).
        self.timezone = TimezoneConfig(rtc.utc_offset_minutes, False)  # type: ignore[arg-type]
        self.on_change(uuids.RTC_CONFIG, self.rtc().encode())

    # ---- alarms and faults ---------------------------------------------------------------------

    def raise_alarm(self, code: int, data: int) -> None:
        self.alarm = AlarmStatus(code, data, self.utc_now())
        self.on_change(uuids.ALARM_STATUS, self.alarm.encode())

    def clear_alarm(self) -> None:
        self.alarm = AlarmStatus(AlarmCode.NONE, 0, self.utc_now())
        if self.status in (SystemStatusCode.FAULT, SystemStatusCode.NO_FLOW,
                           SystemStatusCode.UNEXPECTED_FLOW):
            self._set_status(SystemStatusCode.OK)
        self.on_change(uuids.ALARM_STATUS, self.alarm.encode())

    def set_line_flow(self, channel: int, pps: int) -> None:
        """What a zone's line flows when its valve opens; 0 is a blocked line (NO_FLOW)."""
        self.line_pps[channel] = pps

    def set_stray_flow(self, pps: int) -> None:
        self.stray_pps = pps

    def freeze(self, temperature_x10: int | None) -> None:
        """Freeze lockout at this reading (°C x 10; None: the environmental data is stale).
        System Status goes to FREEZE_LOCKOUT without a notification (Δ15: poll to see it)."""
        data = 0xFFFF if temperature_x10 is None else temperature_x10 & 0xFFFF
        self._set_status(SystemStatusCode.FREEZE_LOCKOUT)
        self.raise_alarm(AlarmCode.FREEZE_LOCKOUT, data)

    def thaw(self) -> None:
        """The lockout lifts: status OK, and the alarm re-sent with data 0 (Δ22)."""
        if self.status == SystemStatusCode.FREEZE_LOCKOUT:
            self._set_status(SystemStatusCode.OK)
        self.raise_alarm(AlarmCode.FREEZE_LOCKOUT, 0)
        self._maybe_start_next()

    def _monitor_faults(self, now: float, dt: float) -> None:
        """The firmware's watering monitor: NO_FLOW retries and heal, stray flow (Δ22)."""
        channel = self._no_flow_channel
        if channel is not None and now >= self._next_no_flow_check:
            if self.line_pps[channel] > 0:
                self._no_flow_channel = None
                if self.status == SystemStatusCode.NO_FLOW:
                    self._set_status(SystemStatusCode.OK)
                self.raise_alarm(AlarmCode.NO_FLOW, 0)
                self._maybe_start_next()
            else:
                self._no_flow_attempts += 1
                self._next_no_flow_check = now + NO_FLOW_RETRY_S
                self.raise_alarm(AlarmCode.NO_FLOW, self._no_flow_attempts)
        if self.running is None and self.stray_pps > 0:
            self._stray_pulses += self.stray_pps * dt
            if self._stray_pulses > STRAY_PULSES_ALARM and self.status == SystemStatusCode.OK:
                self._set_status(SystemStatusCode.UNEXPECTED_FLOW)
                self.raise_alarm(AlarmCode.UNEXPECTED_FLOW, min(int(self._stray_pulses), 0xFFFF))
        elif self.stray_pps == 0 and self._stray_pulses:
            self._stray_pulses = 0.0
            if self.status == SystemStatusCode.UNEXPECTED_FLOW:
                self._set_status(SystemStatusCode.OK)
                self.raise_alarm(AlarmCode.UNEXPECTED_FLOW, 0)
                self._maybe_start_next()

    def _set_status(self, status: SystemStatusCode) -> None:
        if status == self.status:
            return
        self.status = status
        # The firmware does not notify transitions to values above 5 (poll to see them).
        if status <= SystemStatusCode.LOW_POWER:
            self.on_change(uuids.SYSTEM_STATUS, SystemStatus(status).encode())
            self._last_status_notify = self.monotonic()

    # ---- the task loop -------------------------------------------------------------------------

    def _pause(self, pause: bool) -> int | None:
        task = self.running
        if task is None or task.paused == pause:
            return 2
        task.paused = pause
        self._set_valve(task.channel, not pause)
        self.on_change(uuids.CURRENT_TASK, self.current_task().encode())
        self._notify_queue()
        return None

    def _maybe_start_next(self) -> None:
        if self.running is not None or not self.queue or self.status != SystemStatusCode.OK:
            return
        nxt = self.queue.popleft()
        target = nxt.value * 60 if nxt.mode == TaskMode.DURATION else nxt.value * 1000
        self.running = RunningTask(nxt.channel, nxt.mode, target, self.uptime_s())
        self._set_valve(nxt.channel, True)
        self.on_change(uuids.CURRENT_TASK, self.current_task().encode())
        self._notify_queue()

    def _finish(self, *, cancelled: bool) -> None:
        task = self.running
        if task is None:
            return
        self.running = None
        volume = int(task.volume_ml)
        self.volumes[task.channel] += volume
        if not cancelled:
            self.completed += 1
            target = task.target if task.mode == TaskMode.VOLUME else volume
            self.history.append(DetailedEntry(
                UnixSeconds(self.utc_now()), task.channel, 1, task.mode,
                Millilitres(min(target, 0xFFFF)),
                Millilitres(min(volume, 0xFFFF)), Millilitres(min(volume, 0xFFFF)), 0, True, 0,
                int(volume / max(task.elapsed_s, 1))))
        self._set_valve(task.channel, False)
        self.on_change(uuids.CURRENT_TASK, CurrentTask.idle_frame().encode())
        self._notify_queue()
        self._maybe_start_next()

    def _set_valve(self, channel: int, open_: bool) -> None:
        bit = 1 << channel
        was_open = bool(self.valve_states & bit)
        if was_open == open_:
            return
        self.valve_states = self.valve_states | bit if open_ else self.valve_states & ~bit
        frame = ValveControl(channel, 1 if open_ else 0, 0).encode()
        self.valve_read = frame
        self.on_change(uuids.VALVE_CONTROL, frame)

    def _notify_queue(self) -> None:
        self._last_queue_notify = self.monotonic()
        self.on_change(uuids.TASK_QUEUE, self.task_queue().encode())

    def water_locally(self, channel: int, minutes: int) -> None:
        """A watering started at the controller itself (its schedule, a person at the device):
        queued and started as the firmware does, with no central involved."""
        if not 0 <= channel < len(self.line_pps) or not 1 <= minutes <= 255:
            raise ValueError(f"cannot water channel {channel} for {minutes} min")
        self.queue.append(QueuedTask(channel, TaskMode.DURATION, minutes))
        self._notify_queue()
        self._maybe_start_next()

    def tick(self) -> None:
        """Advance the simulation to now (called every ~200 ms by the controller)."""
        now = self.monotonic()
        dt = (now - self._last_tick) * self.config.time_scale
        self._last_tick = now
        for idx, sched in enumerate(self.config.schedules):
            if now >= self._next_schedule[idx]:
                self._next_schedule[idx] = now + sched.every_s
                if len(self.queue) < QUEUE_CAPACITY:
                    self.queue.append(QueuedTask(sched.channel, TaskMode.DURATION,
                                                 sched.minutes))
                    self._notify_queue()
                    self._maybe_start_next()
        task = self.running
        pps = 0
        if task is not None and not task.paused:
            nominal = self.line_pps[task.channel]
            pps = nominal + (int(now * 7) % 3 - 1 if nominal else 0)
            task.elapsed_s += dt
            task.volume_ml += pps * dt * 1000 / PULSES_PER_LITRE
            task.dry_s = task.dry_s + dt if pps == 0 else 0.0
            if task.dry_s >= NO_FLOW_DETECT_S:
                self._finish(cancelled=True)
                self._set_status(SystemStatusCode.NO_FLOW)
                self._no_flow_channel, self._no_flow_attempts = task.channel, 1
                self._next_no_flow_check = now + NO_FLOW_RETRY_S
                self.raise_alarm(AlarmCode.NO_FLOW, 1)
            elif (task.mode == TaskMode.DURATION and task.elapsed_s >= task.target) or (
                    task.mode == TaskMode.VOLUME and task.volume_ml >= task.target):
                self._finish(cancelled=False)
            else:
                self.on_change(uuids.CURRENT_TASK, self.current_task().encode())
                if now - self._last_queue_notify >= TASK_QUEUE_ACTIVE_NOTIFY_S:
                    self._notify_queue()
        if task is None:
            pps = self.stray_pps  # the flow sensor counts whatever passes it
        self._monitor_faults(now, dt)
        if pps != self.flow_pps or (pps and now - self._last_flow_notify >= FLOW_NOTIFY_S):
            self.flow_pps = pps
            self._last_flow_notify = now
            self.on_change(uuids.FLOW_SENSOR, FlowSensor(pps).encode())
        if (self.status != SystemStatusCode.OK
                and now - self._last_status_notify >= STATUS_REMINDER_S
                and self.status <= SystemStatusCode.FREEZE_LOCKOUT):
            self._last_status_notify = now
            self.on_change(uuids.SYSTEM_STATUS, SystemStatus(self.status).encode())
