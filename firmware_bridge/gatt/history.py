"""Watering history (device-ble.md 6.10): queries, unified-header responses, real-time events."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from firmware_bridge.errors import EncodeError
from firmware_bridge.gatt.codec import (
    CHANNELS,
    GattDecodeError,
    TaskMode,
    enum_or_int,
    unpack_exact,
)
from firmware_bridge.gatt.fragments import UnifiedResponse, is_unified_fragment
from firmware_bridge.gatt.units import Millilitres, UnixSeconds


class HistoryType(IntEnum):
    DETAILED = 0
    DAILY = 1
    MONTHLY = 2
    ANNUAL = 3


RATE_LIMITED_TYPE = 0xFE
RATE_LIMITED_STATUS = 0x07
# The firmware clamps count to 1..50; 50 fetches a whole 30-event page.
MAX_ENTRIES = 50


@dataclass(frozen=True)
class HistoryQuery:
    LAYOUT: ClassVar = struct.Struct("<BBBBII")
    channel_id: int
    history_type: HistoryType
    entry_index: int = 0
    count: int = MAX_ENTRIES
    start_timestamp: int = 0
    end_timestamp: int = 0

    def encode(self) -> bytes:
        # 0xFF as a type is the destructive "clear"; the gateway never sends it.
        if not 0 <= self.channel_id < CHANNELS:
            raise EncodeError(f"history channel {self.channel_id} is outside 0..7")
        if not 1 <= self.count <= MAX_ENTRIES:
            raise EncodeError(f"history count {self.count} is outside 1..50")
        return self.LAYOUT.pack(self.channel_id, int(self.history_type), self.entry_index,
                                self.count, self.start_timestamp, self.end_timestamp)

    @classmethod
    def decode(cls, data: bytes | bytearray) -> HistoryQuery:
        ch, kind, index, count, start, end = unpack_exact(cls.LAYOUT, data, "History query")
        return cls(ch, enum_or_int(HistoryType, kind), index, count, start, end)  # type: ignore[arg-type]


class HistoryEvent(IntEnum):
    START = 0
    COMPLETE = 1
    ABORT = 2
    ERROR = 3


class Trigger(IntEnum):
    MANUAL = 0
    SCHEDULE = 1
    REMOTE = 2


@dataclass(frozen=True)
class DetailedEntry:
    LAYOUT: ClassVar = struct.Struct("<IBBBHHHBBBH6s")
    timestamp: UnixSeconds  # approximate, reconstructed by the firmware
    channel_id: int
    event_type: HistoryEvent | int
    mode: TaskMode | int
    target_value_ml: Millilitres
    actual_value_ml: Millilitres
    total_volume_ml: Millilitres
    trigger_type: Trigger | int
    success: bool
    error_code: int
    flow_rate_avg_ml_s: int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> DetailedEntry:
        ts, ch, ev, mode, target, actual, total, trig, ok, err, flow, _ = unpack_exact(
            cls.LAYOUT, data, "history entry")
        return cls(UnixSeconds(ts), ch, enum_or_int(HistoryEvent, ev),
                   enum_or_int(TaskMode, mode), Millilitres(target), Millilitres(actual),
                   Millilitres(total), enum_or_int(Trigger, trig), bool(ok), err, flow)


@dataclass(frozen=True)
class DailyEntry:
    LAYOUT: ClassVar = struct.Struct("<HHBIHHBBx")
    day_of_year: int
    year: int
    sessions_ok: int
    total_volume_ml: Millilitres
    total_duration_est_s: int
    avg_flow_rate: int
    success_rate_pct: int
    error_count: int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> DailyEntry:
        day, year, ok, vol, dur, flow, rate, errs = unpack_exact(cls.LAYOUT, data, "daily entry")
        return cls(day, year, ok, Millilitres(vol), dur, flow, rate, errs)


@dataclass(frozen=True)
class MonthlyEntry:
    LAYOUT: ClassVar = struct.Struct("<BHHIHHBB")
    month: int
    year: int
    total_sessions: int
    total_volume_ml: Millilitres
    total_duration_hours: int
    avg_daily_volume: int
    active_days: int
    success_rate_pct: int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> MonthlyEntry:
        m, y, s, vol, h, avg, days, rate = unpack_exact(cls.LAYOUT, data, "monthly entry")
        return cls(m, y, s, Millilitres(vol), h, avg, days, rate)


@dataclass(frozen=True)
class AnnualEntry:
    LAYOUT: ClassVar = struct.Struct("<HHIHBBH")
    year: int
    total_sessions: int
    total_volume_litres: int
    avg_monthly_volume_litres: int
    most_active_month: int
    success_rate_pct: int
    peak_month_volume_litres: int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> AnnualEntry:
        return cls(*unpack_exact(cls.LAYOUT, data, "annual entry"))


HistoryEntry = DetailedEntry | DailyEntry | MonthlyEntry | AnnualEntry
_ENTRY_TYPES: dict[int, type[DetailedEntry] | type[DailyEntry] | type[MonthlyEntry]
                  | type[AnnualEntry]] = {
    HistoryType.DETAILED: DetailedEntry, HistoryType.DAILY: DailyEntry,
    HistoryType.MONTHLY: MonthlyEntry, HistoryType.ANNUAL: AnnualEntry,
}


class HistoryRateLimited(GattDecodeError):
    """The device refused a query sent < 100 ms after a different one; retry later."""


@dataclass(frozen=True)
class HistoryResult:
    query: HistoryQuery | None
    entries: tuple[HistoryEntry, ...]


def parse_history(response: UnifiedResponse) -> HistoryResult:
    """Typed entries of a reassembled response; validates the length against entry_count."""
    if response.data_type == RATE_LIMITED_TYPE:
        raise HistoryRateLimited(f"history query rate-limited (status 0x{response.status:02x})")
    if response.status != 0:
        raise GattDecodeError(f"history response status 0x{response.status:02x}")
    if not response.payload:
        return HistoryResult(None, ())
    entry_type = _ENTRY_TYPES.get(response.data_type)
    if entry_type is None:
        raise GattDecodeError(f"unknown history data type {response.data_type}")
    head = HistoryQuery.LAYOUT.size
    stride = entry_type.LAYOUT.size
    expected = head + response.entry_count * stride
    if len(response.payload) != expected:
        raise GattDecodeError(f"history payload {len(response.payload)} B, expected {expected} "
                              f"for {response.entry_count} entries of {stride} B")
    query = HistoryQuery.decode(response.payload[:head])
    entries = tuple(entry_type.decode(response.payload[head + i * stride:head + (i + 1) * stride])
                    for i in range(response.entry_count))
    return HistoryResult(query, entries)


@dataclass(frozen=True)
class RealtimeEvent:
    """A 32-byte start/complete event pushed on the history characteristic. START carries
    uptime seconds, the others Unix time (device-ble.md 6.10)."""

    LAYOUT: ClassVar = struct.Struct("<BBBBIIIBBBHHHBBBHH")
    SIZE: ClassVar = 32
    channel_id: int
    timestamp: int
    event_type: HistoryEvent | int
    mode: TaskMode | int
    target: int
    actual: int
    total_volume_ml: Millilitres
    trigger_type: Trigger | int
    success: bool
    error_code: int
    flow_rate_avg: int

    @classmethod
    def decode(cls, data: bytes | bytearray) -> RealtimeEvent:
        (_ch, _kind, _index, _count, _start, _end, ts, ch, ev, mode, target, actual, total,
         trig, ok, err, flow, _reserved) = unpack_exact(cls.LAYOUT, data, "history event")
        return cls(ch, ts, enum_or_int(HistoryEvent, ev), enum_or_int(TaskMode, mode), target,
                   actual, Millilitres(total), enum_or_int(Trigger, trig), bool(ok), err, flow)

    @property
    def timestamp_is_uptime(self) -> bool:
        return self.event_type == HistoryEvent.START


def is_realtime_event(frame: bytes | bytearray) -> bool:
    return len(frame) == RealtimeEvent.SIZE and not is_unified_fragment(frame)
