"""Clock and zone for the controller (device-ble.md 5.8 and 6.5).

An RTC write stores its offset as the base offset and erases the DST rules, so a time sync is
always the pair (RTC with the total offset in effect, then Timezone with the standard offset and
the rules). The rules are derived from the IANA zone, so the device switches DST by itself.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from firmware_bridge.errors import EncodeError
from firmware_bridge.gatt.codec import RtcConfig
from firmware_bridge.gatt.configuration import TimezoneConfig
from firmware_bridge.gatt.units import OffsetMinutes

# The app re-syncs when the device drifts more than this (5.8); below it a write only wears NVS.
MAX_DRIFT_S = 60
LAST_WEEK = 5


@dataclass(frozen=True)
class DstRule:
    month: int
    week: int  # 1..4, or 5 for "last"
    dow: int  # 0 = Sunday


@dataclass(frozen=True)
class TimeSync:
    rtc: RtcConfig
    timezone: TimezoneConfig


def _minutes(delta: timedelta | None) -> int:
    return int((delta or timedelta()).total_seconds() // 60)


def _rule_for(local_day: datetime) -> DstRule:
    days_in_month = calendar.monthrange(local_day.year, local_day.month)[1]
    week = LAST_WEEK if local_day.day + 7 > days_in_month else (local_day.day - 1) // 7 + 1
    return DstRule(local_day.month, week, (local_day.weekday() + 1) % 7)


def _transitions(zone: ZoneInfo, year: int) -> list[tuple[datetime, bool]]:
    """(local date, entering DST) of each offset change in ``year``, found hour by hour."""
    found: list[tuple[datetime, bool]] = []
    t = datetime(year, 1, 1, tzinfo=UTC)
    previous = t.astimezone(zone).dst()
    while t.year == year:
        t += timedelta(hours=1)
        local = t.astimezone(zone)
        if local.dst() != previous:
            found.append((local, bool(local.dst())))
            previous = local.dst()
    return found


def zone_rules(zone: ZoneInfo, year: int) -> TimezoneConfig:
    """The Timezone characteristic for ``zone`` as it behaves in ``year``."""
    mid_winter = datetime(year, 1, 15, 12, tzinfo=UTC).astimezone(zone)
    mid_summer = datetime(year, 7, 15, 12, tzinfo=UTC).astimezone(zone)
    standard = mid_winter if not mid_winter.dst() else mid_summer
    base = OffsetMinutes(_minutes(standard.utcoffset()) - _minutes(standard.dst()))
    changes = _transitions(zone, year)
    starts = [local for local, entering in changes if entering]
    ends = [local for local, entering in changes if not entering]
    if len(starts) != 1 or len(ends) != 1:
        return TimezoneConfig(base, False)
    start, end = _rule_for(starts[0]), _rule_for(ends[0])
    # A "4th Sunday" that is also the last one this year may not be next year: ask next year.
    following = [local for local, _ in _transitions(zone, year + 1)]
    if len(following) == 2:
        nxt = {local.month: _rule_for(local) for local in following}
        start = DstRule(start.month, max(start.week, nxt.get(start.month, start).week), start.dow)
        end = DstRule(end.month, max(end.week, nxt.get(end.month, end).week), end.dow)
    dst = OffsetMinutes(_minutes(starts[0].dst()))
    return TimezoneConfig(base, True, start.month, start.week, start.dow, end.month, end.week,
                          end.dow, dst)


def time_sync(now: datetime, zone: ZoneInfo) -> TimeSync:
    """The RTC write and the Timezone write that follows it, for instant ``now``."""
    if now.tzinfo is None:
        raise EncodeError("time_sync needs an aware datetime")
    local = now.astimezone(zone)
    total = OffsetMinutes(_minutes(local.utcoffset()))
    rtc = RtcConfig(local.year, local.month, local.day, local.hour, local.minute, local.second,
                    0, total, 1 if local.dst() else 0)
    return TimeSync(rtc, zone_rules(zone, local.year))


def device_utc(rtc: RtcConfig) -> datetime:
    """The instant the device's clock shows (local time minus the total offset)."""
    local = datetime(rtc.year, rtc.month, rtc.day, rtc.hour, rtc.minute, rtc.second,
                     tzinfo=UTC)
    return local - timedelta(minutes=rtc.utc_offset_minutes)


def needs_sync(rtc: RtcConfig, now: datetime, zone: ZoneInfo | None = None) -> bool:
    """True when the device clock is the firmware's fallback value, drifts beyond 60 s, or
    (given ``zone``) shows another offset than the zone has now: schedules run on local time."""
    if rtc.is_fallback:
        return True
    if zone is not None and rtc.utc_offset_minutes != _minutes(now.astimezone(zone).utcoffset()):
        return True
    try:
        shown = device_utc(rtc)
    except ValueError:
        return True  # an impossible date on the device: its clock is garbage
    return abs((shown - now).total_seconds()) > MAX_DRIFT_S
