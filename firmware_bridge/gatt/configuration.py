"""Codecs for the P1 configuration characteristics (device-ble.md 6.4-6.9).

Selector characteristics (Statistics, Schedule, Channel Config, Hydraulic) are read by writing
``commands.selector(channel)`` first; the session keeps select+read atomic.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from firmware_bridge.errors import EncodeError
from firmware_bridge.gatt.codec import CHANNELS, GattDecodeError, enum_or_int, unpack_exact
from firmware_bridge.gatt.units import Millilitres, OffsetMinutes, PulsesPerLitre, UnixSeconds


def _pack(layout: struct.Struct, name: str, *values: object) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise EncodeError(f"{name}: field out of range: {exc}") from exc


@dataclass(frozen=True)
class Statistics:
    LAYOUT: ClassVar = struct.Struct("<BIIIH")
    channel_id: int
    total_volume: Millilitres
    last_volume: Millilitres
    last_watering: UnixSeconds
    count: int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> Statistics:
        ch, total, last, when, count = unpack_exact(cls.LAYOUT, data, "Statistics")
        return cls(ch, Millilitres(total), Millilitres(last), UnixSeconds(when), count)

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, "Statistics", self.channel_id, self.total_volume,
                     self.last_volume, self.last_watering, self.count)


@dataclass(frozen=True)
class TimezoneConfig:
    """Standard offset plus DST rules (device-ble.md 6.5). Week 5 means "last"."""

    LAYOUT: ClassVar = struct.Struct("<hBBBBBBBh")
    utc_offset_minutes: OffsetMinutes
    dst_enabled: bool
    dst_start_month: int = 0
    dst_start_week: int = 0
    dst_start_dow: int = 0
    dst_end_month: int = 0
    dst_end_week: int = 0
    dst_end_dow: int = 0
    dst_offset_minutes: int = 0

    @classmethod
    def decode(cls, data: bytes | bytearray) -> TimezoneConfig:
        base, enabled, sm, sw, sd, em, ew, ed, dst = unpack_exact(
            cls.LAYOUT, data, "Timezone Configuration")
        return cls(OffsetMinutes(base), bool(enabled), sm, sw, sd, em, ew, ed,
                   OffsetMinutes(dst))

    def validate(self) -> None:
        if not -720 <= self.utc_offset_minutes <= 840:
            raise EncodeError(f"base offset {self.utc_offset_minutes} min is outside -720..840")
        if not self.dst_enabled:
            return
        for month, week, dow in ((self.dst_start_month, self.dst_start_week, self.dst_start_dow),
                                 (self.dst_end_month, self.dst_end_week, self.dst_end_dow)):
            if not (1 <= month <= 12 and 1 <= week <= 5 and 0 <= dow <= 6):
                raise EncodeError(f"DST rule month={month} week={week} dow={dow} is invalid")
        if not -120 <= self.dst_offset_minutes <= 120:
            raise EncodeError(f"DST offset {self.dst_offset_minutes} min is outside -120..120")

    def encode(self) -> bytes:
        self.validate()
        return _pack(self.LAYOUT, "Timezone", self.utc_offset_minutes, int(self.dst_enabled),
                     self.dst_start_month, self.dst_start_week, self.dst_start_dow,
                     self.dst_end_month, self.dst_end_week, self.dst_end_dow,
                     self.dst_offset_minutes)


class ScheduleType(IntEnum):
    DAILY = 0
    PERIODIC = 1
    AUTO = 2


@dataclass(frozen=True)
class ScheduleConfig:
    LAYOUT: ClassVar = struct.Struct("<BBBBBBHBBBb")
    OBSOLETE_SIZE: ClassVar = 9  # pre-solar layout, still tolerated on read as the app does
    channel_id: int
    schedule_type: ScheduleType | int
    days_mask: int
    hour: int
    minute: int
    watering_mode: int
    value: int
    auto_enabled: bool
    use_solar_timing: bool = False
    solar_event: int = 0
    solar_offset_minutes: int = 0

    @classmethod
    def decode(cls, data: bytes | bytearray) -> ScheduleConfig:
        if len(data) == cls.OBSOLETE_SIZE:
            data = bytes(data) + bytes(3)
        ch, kind, days, hour, minute, mode, value, auto, solar, event, offset = unpack_exact(
            cls.LAYOUT, data, "Schedule Configuration")
        return cls(ch, enum_or_int(ScheduleType, kind), days, hour, minute, mode, value,
                   bool(auto), bool(solar), event, offset)

    def encode(self) -> bytes:
        return _pack(self.LAYOUT, "Schedule", self.channel_id, int(self.schedule_type),
                     self.days_mask, self.hour, self.minute, self.watering_mode, self.value,
                     int(self.auto_enabled), int(self.use_solar_timing), self.solar_event,
                     self.solar_offset_minutes)


class PowerMode(IntEnum):
    NORMAL = 0
    ENERGY_SAVING = 1
    ULTRA_LOW = 2


@dataclass(frozen=True)
class SystemConfig:
    """The 56-byte system configuration (device-ble.md 6.9); reserved fields are kept so a
    read-modify-write sends back exactly what was read."""

    LAYOUT: ClassVar = struct.Struct("<BBIBBBhhBBBBHBBBffHffBBBBII4s")
    version: int
    power_mode: PowerMode | int
    flow_calibration: PulsesPerLitre
    max_active_valves: int
    num_channels: int
    master_valve_enabled: bool
    master_valve_pre_delay: int
    master_valve_post_delay: int
    master_valve_overlap_grace: int
    master_valve_auto_mgmt: bool
    master_valve_open: bool
    bme280_enabled: bool
    bme280_measurement_interval: int
    bme280_sensor_status: int
    reserved_rain_enable: int
    global_temp_compensation_enabled: bool
    reserved_rain_sensitivity: float
    global_temp_sensitivity: float
    reserved_rain_lookback: int
    reserved_rain_threshold: float
    global_temp_base_temperature: float
    interval_mode_active_channels: int
    compensation_active_channels: int
    incomplete_config_channels: int
    environmental_data_quality: int
    last_config_update: UnixSeconds
    last_sensor_reading: int
    reserved_tail: bytes = bytes(4)

    @classmethod
    def decode(cls, data: bytes | bytearray) -> SystemConfig:
        v = unpack_exact(cls.LAYOUT, data, "System Configuration")
        return cls(v[0], enum_or_int(PowerMode, v[1]), PulsesPerLitre(v[2]), v[3], v[4],
                   bool(v[5]), v[6], v[7], v[8], bool(v[9]), bool(v[10]), bool(v[11]), v[12],
                   v[13], v[14], bool(v[15]), v[16], v[17], v[18], v[19], v[20], v[21], v[22],
                   v[23], v[24], UnixSeconds(v[25]), v[26], v[27])

    def encode(self) -> bytes:
        return _pack(
            self.LAYOUT, "System Configuration", self.version, int(self.power_mode),
            self.flow_calibration, self.max_active_valves, self.num_channels,
            int(self.master_valve_enabled), self.master_valve_pre_delay,
            self.master_valve_post_delay, self.master_valve_overlap_grace,
            int(self.master_valve_auto_mgmt), int(self.master_valve_open),
            int(self.bme280_enabled), self.bme280_measurement_interval,
            self.bme280_sensor_status, self.reserved_rain_enable,
            int(self.global_temp_compensation_enabled), self.reserved_rain_sensitivity,
            self.global_temp_sensitivity, self.reserved_rain_lookback,
            self.reserved_rain_threshold, self.global_temp_base_temperature,
            self.interval_mode_active_channels, self.compensation_active_channels,
            self.incomplete_config_channels, self.environmental_data_quality,
            self.last_config_update, self.last_sensor_reading, self.reserved_tail)


class CoverageType(IntEnum):
    AREA_M2 = 0
    PLANT_COUNT = 1


NAME_FIELD = 64


@dataclass(frozen=True)
class ChannelConfig:
    """Zone configuration (device-ble.md 6.7); ``coverage`` is m2 (float) or a plant count."""

    LAYOUT: ClassVar = struct.Struct("<BB64sBBBBB4sB")
    SIZE: ClassVar = 76
    channel_id: int
    name: str
    auto_enabled: bool
    plant_type: int
    soil_type: int
    irrigation_method: int
    coverage_type: CoverageType | int
    coverage: float | int
    sun_percentage: int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> ChannelConfig:
        ch, name_len, raw_name, auto, plant, soil, method, cov_type, cov, sun = unpack_exact(
            cls.LAYOUT, data, "Channel Configuration")
        if name_len >= NAME_FIELD:
            raise GattDecodeError(f"Channel Configuration: name_len {name_len} exceeds 63")
        # Invalid UTF-8 from the device is shown with replacement marks, never fatal.
        name = raw_name[:name_len].decode("utf-8", errors="replace")
        coverage: float | int
        if cov_type == CoverageType.PLANT_COUNT:
            (coverage,) = struct.unpack_from("<H", cov)
        else:
            (coverage,) = struct.unpack("<f", cov)
        return cls(ch, name, bool(auto), plant, soil, method,
                   enum_or_int(CoverageType, cov_type), coverage, sun)

    def encode(self) -> bytes:
        raw = self.name.encode()
        if len(raw) >= NAME_FIELD:
            raise EncodeError(f"channel name is {len(raw)} bytes; at most 63 fit")
        if not 0 <= self.channel_id < CHANNELS:
            raise EncodeError(f"channel {self.channel_id} is outside 0..7")
        try:
            cov = (struct.pack("<H2x", int(self.coverage))
                   if self.coverage_type == CoverageType.PLANT_COUNT
                   else struct.pack("<f", float(self.coverage)))
        except struct.error as exc:
            raise EncodeError(f"coverage {self.coverage!r} does not fit") from exc
        return _pack(self.LAYOUT, "Channel Configuration", self.channel_id, len(raw), raw,
                     int(self.auto_enabled), self.plant_type, self.soil_type,
                     self.irrigation_method, int(self.coverage_type), cov, self.sun_percentage)


class HydraulicProfile(IntEnum):
    AUTO_LEARN = 0
    SPRAY = 1
    DRIP = 2


class LockLevel(IntEnum):
    NONE = 0
    SOFT = 1
    HARD = 2


class LockReason(IntEnum):
    NONE = 0
    HIGH_FLOW = 1
    NO_FLOW = 2
    UNEXPECTED_FLOW = 3
    MAINLINE_LEAK = 4


@dataclass(frozen=True)
class HydraulicStatus:
    LAYOUT: ClassVar = struct.Struct("<BBBBIHBBBBBBBBHIIBBBBIBBHII")
    channel_id: int
    profile_type: HydraulicProfile | int
    lock_level: LockLevel | int
    lock_reason: LockReason | int
    nominal_flow_ml_min: int
    ramp_up_time_sec: int
    tolerance_high_percent: int
    tolerance_low_percent: int
    is_calibrated: bool
    monitoring_enabled: bool
    learning_runs: int
    stable_runs: int
    estimated: bool
    manual_override_active: bool
    lock_at_epoch: UnixSeconds
    retry_after_epoch: UnixSeconds
    no_flow_runs: int
    high_flow_runs: int
    unexpected_flow_runs: int
    last_anomaly_epoch: UnixSeconds
    global_lock_level: LockLevel | int
    global_lock_reason: LockReason | int
    global_lock_at_epoch: UnixSeconds
    global_retry_after_epoch: UnixSeconds

    @classmethod
    def decode(cls, data: bytes | bytearray) -> HydraulicStatus:
        (ch, profile, lock, reason, nominal, ramp, hi, lo, cal, mon, learn, stable, est, ovr,
         _r0, lock_at, retry, nf, hf, uf, _r1, anomaly, glock, greason, _r2, glock_at,
         gretry) = unpack_exact(cls.LAYOUT, data, "Hydraulic Status")
        return cls(ch, enum_or_int(HydraulicProfile, profile), enum_or_int(LockLevel, lock),
                   enum_or_int(LockReason, reason), nominal, ramp, hi, lo, bool(cal), bool(mon),
                   learn, stable, bool(est), bool(ovr), UnixSeconds(lock_at),
                   UnixSeconds(retry), nf, hf, uf, UnixSeconds(anomaly),
                   enum_or_int(LockLevel, glock), enum_or_int(LockReason, greason),
                   UnixSeconds(glock_at), UnixSeconds(gretry))

    def encode(self) -> bytes:
        return _pack(
            self.LAYOUT, "Hydraulic Status", self.channel_id, int(self.profile_type),
            int(self.lock_level), int(self.lock_reason), self.nominal_flow_ml_min,
            self.ramp_up_time_sec, self.tolerance_high_percent, self.tolerance_low_percent,
            int(self.is_calibrated), int(self.monitoring_enabled), self.learning_runs,
            self.stable_runs, int(self.estimated), int(self.manual_override_active), 0,
            self.lock_at_epoch, self.retry_after_epoch, self.no_flow_runs, self.high_flow_runs,
            self.unexpected_flow_runs, 0, self.last_anomaly_epoch, int(self.global_lock_level),
            int(self.global_lock_reason), 0, self.global_lock_at_epoch,
            self.global_retry_after_epoch)

    @property
    def locked(self) -> bool:
        return int(self.lock_level) != 0 or int(self.global_lock_level) != 0
