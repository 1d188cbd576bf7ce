"""Codecs for the P1 sensor characteristics: Environmental Data, Rain Sensor Data, Diagnostics."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from firmware_bridge.errors import EncodeError
from firmware_bridge.gatt.codec import enum_or_int, unpack_exact
from firmware_bridge.gatt.units import Percent, Seconds, UnixSeconds, UptimeMillis


@dataclass(frozen=True)
class EnvironmentalData:
    """BME280 sample (device-ble.md 6.1). Reads are 24 bytes; notifications carry a 3-byte
    header (see ``fragments.EnvDataReassembler``)."""

    LAYOUT: ClassVar = struct.Struct("<fffIBHB4s")
    temperature_c: float
    humidity_pct: float
    pressure_hpa: float
    sample_uptime_ms: UptimeMillis
    sensor_valid: bool
    measurement_interval: Seconds
    data_quality: Percent

    @classmethod
    def decode(cls, data: bytes | bytearray) -> EnvironmentalData:
        temp, hum, press, ts, status, interval, quality, _ = unpack_exact(
            cls.LAYOUT, data, "Environmental Data")
        return cls(temp, hum, press, UptimeMillis(ts), status == 1, Seconds(interval),
                   Percent(quality))

    def encode(self) -> bytes:
        return self.LAYOUT.pack(self.temperature_c, self.humidity_pct, self.pressure_hpa,
                                self.sample_uptime_ms, 1 if self.sensor_valid else 0,
                                self.measurement_interval, self.data_quality, bytes(4))


class RainSensorState(IntEnum):
    INACTIVE = 0
    ACTIVE = 1
    ERROR = 2


@dataclass(frozen=True)
class RainData:
    """Tipping-bucket totals (device-ble.md 6.2); rainfall in hundredths of a millimetre."""

    LAYOUT: ClassVar = struct.Struct("<IIIHIIBB")
    current_hour_mm_x100: int
    today_total_mm_x100: int
    last_24h_mm_x100: int
    current_rate_mm_h_x100: int
    last_pulse_time: UnixSeconds
    total_pulses: int
    sensor_status: RainSensorState | int
    data_quality: Percent

    @classmethod
    def decode(cls, data: bytes | bytearray) -> RainData:
        hour, today, day, rate, last, pulses, status, quality = unpack_exact(
            cls.LAYOUT, data, "Rain Sensor Data")
        return cls(hour, today, day, rate, UnixSeconds(last), pulses,
                   enum_or_int(RainSensorState, status), Percent(quality))

    def encode(self) -> bytes:
        return self.LAYOUT.pack(self.current_hour_mm_x100, self.today_total_mm_x100,
                                self.last_24h_mm_x100, self.current_rate_mm_h_x100,
                                self.last_pulse_time, self.total_pulses,
                                int(self.sensor_status), self.data_quality)

    @property
    def today_mm(self) -> float:
        return self.today_total_mm_x100 / 100


BATTERY_NOT_APPLICABLE = 0xFF


@dataclass(frozen=True)
class Diagnostics:
    LAYOUT: ClassVar = struct.Struct("<IHBBB3s")
    uptime_min: int
    error_count: int
    last_error: int
    valve_status: int
    battery_level: int | None  # None: mains powered (0xFF on the wire)

    @classmethod
    def decode(cls, data: bytes | bytearray) -> Diagnostics:
        uptime, errors, last, valves, battery, _ = unpack_exact(cls.LAYOUT, data, "Diagnostics")
        return cls(uptime, errors, last, valves,
                   None if battery == BATTERY_NOT_APPLICABLE else battery)

    def encode(self) -> bytes:
        battery = BATTERY_NOT_APPLICABLE if self.battery_level is None else self.battery_level
        if battery == BATTERY_NOT_APPLICABLE and self.battery_level is not None:
            raise EncodeError("battery level 255 is the 'not applicable' sentinel")
        return self.LAYOUT.pack(self.uptime_min, self.error_count, self.last_error,
                                self.valve_status, battery, bytes(3))
