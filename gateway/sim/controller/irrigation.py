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

# ATT error codes the firmware returns (device-ble.md 4.1).
ATT_WRITE_NOT_PERMITTED = 0x03
ATT_INVALID_OFFSET = 0x07
ATT_INVALID_LENGTH = 0x0D
ATT_VALUE_NOT_ALLOWED = 0x13

PULSES_PER_LITRE = 750
QUEUE_CAPACITY = 10
NO_FLOW_DETECT_S = 5.0
TASK_QUEUE_ACTIVE_NOTIFY_S = 5.0
FLOW_NOTIFY_S = 5.0
STATUS_REMINDER_S = 30.0


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

    def __post_init__(self) -> None:
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
        }
        return readers[uuid]()

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
            return TaskQueue(len(self.queue), self.completed % 256, NO_CHANNEL,
                             TaskQueue.ERROR_FRAME, error, 0, 0, 0)
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
        }
        if offset != 0:
            raise AttError(ATT_INVALID_OFFSET, "non-zero offset")
        writers[uuid](value)

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
        self.queue.append(QueuedTask(cmd.channel_id, TaskMode(cmd.task_type), cmd.value))
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
        if not cancelled:
            self.completed += 1
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
            nominal = self.config.nominal_pps[task.channel]
            pps = nominal + (int(now * 7) % 3 - 1 if nominal else 0)
            task.elapsed_s += dt
            task.volume_ml += pps * dt * 1000 / PULSES_PER_LITRE
            task.dry_s = task.dry_s + dt if pps == 0 else 0.0
            if task.dry_s >= NO_FLOW_DETECT_S:
                self._finish(cancelled=True)
                self._set_status(SystemStatusCode.NO_FLOW)
                self.raise_alarm(AlarmCode.NO_FLOW, 1)
            elif (task.mode == TaskMode.DURATION and task.elapsed_s >= task.target) or (
                    task.mode == TaskMode.VOLUME and task.volume_ml >= task.target):
                self._finish(cancelled=False)
            else:
                self.on_change(uuids.CURRENT_TASK, self.current_task().encode())
                if now - self._last_queue_notify >= TASK_QUEUE_ACTIVE_NOTIFY_S:
                    self._notify_queue()
        if pps != self.flow_pps or (pps and now - self._last_flow_notify >= FLOW_NOTIFY_S):
            self.flow_pps = pps
            self._last_flow_notify = now
            self.on_change(uuids.FLOW_SENSOR, FlowSensor(pps).encode())
        if (self.status != SystemStatusCode.OK
                and now - self._last_status_notify >= STATUS_REMINDER_S
                and self.status <= SystemStatusCode.FREEZE_LOCKOUT):
            self._last_status_notify = now
            self.on_change(uuids.SYSTEM_STATUS, SystemStatus(self.status).encode())
