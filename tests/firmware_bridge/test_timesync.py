"""Time sync: the RTC write of V8 and zone rules derived from the IANA database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.errors import EncodeError
from firmware_bridge.gatt import commands
from firmware_bridge.gatt.codec import AlarmCode, CurrentTaskCommand, RtcConfig, TaskQueueCommand
from firmware_bridge.gatt.configuration import TimezoneConfig
from firmware_bridge.gatt.timesync import device_utc, needs_sync, time_sync, zone_rules

V8_INSTANT = datetime(2026, 3, 14, 8, 30, 15, tzinfo=UTC)


def test_v8_rtc_write_for_utc_plus_one_without_dst() -> None:
    sync = time_sync(V8_INSTANT, ZoneInfo("Europe/Berlin"))
    assert sync.rtc.encode() == bytes.fromhex("1A030E091E0F003C00000000000000 00".replace(" ", ""))
    assert sync.timezone == TimezoneConfig(60, True, 3, 5, 0, 10, 5, 0, 60)  # type: ignore[arg-type]


@pytest.mark.parametrize(("zone", "expected"), [
    ("America/New_York", TimezoneConfig(-300, True, 3, 2, 0, 11, 1, 0, 60)),  # type: ignore[arg-type]
    ("Australia/Sydney", TimezoneConfig(600, True, 10, 1, 0, 4, 1, 0, 60)),  # type: ignore[arg-type]
    ("Asia/Tokyo", TimezoneConfig(540, False)),  # type: ignore[arg-type]
    ("Europe/Bucharest", TimezoneConfig(120, True, 3, 5, 0, 10, 5, 0, 60)),  # type: ignore[arg-type]
])
def test_zone_rules_match_the_legislated_ones(zone: str, expected: TimezoneConfig) -> None:
    assert zone_rules(ZoneInfo(zone), 2026) == expected
    expected.encode()  # every derived rule is one the device accepts


@given(st.integers(0, 99 * 365 * 86400 // 60).map(
    lambda m: datetime(2000, 1, 1, tzinfo=UTC) + timedelta(minutes=m)))
def test_rtc_from_time_sync_shows_the_same_instant(now: datetime) -> None:
    sync = time_sync(now, ZoneInfo("Europe/Bucharest"))
    assert device_utc(RtcConfig.decode(sync.rtc.encode())) == now.replace(microsecond=0)
    assert not needs_sync(sync.rtc, now)


def test_needs_sync_on_fallback_and_drift() -> None:
    fallback = RtcConfig(2025, 7, 13, 12, 0, 0, 0, 120, 1)
    assert needs_sync(fallback, datetime(2025, 7, 13, 10, 0, tzinfo=UTC))
    rtc = time_sync(V8_INSTANT, ZoneInfo("Europe/Berlin")).rtc
    assert not needs_sync(rtc, V8_INSTANT + timedelta(seconds=59))
    assert needs_sync(rtc, V8_INSTANT + timedelta(seconds=61))
    assert needs_sync(RtcConfig(2026, 2, 31, 0, 0, 0, 0, 0, 0), V8_INSTANT)
    with pytest.raises(EncodeError):
        time_sync(V8_INSTANT.replace(tzinfo=None), ZoneInfo("UTC"))


def test_command_frames() -> None:
    assert commands.selector(3) == b"\x03"
    assert commands.selector(0xFF, allow_active=True) == b"\xff"
    assert commands.alarm_clear() == b"\x00"
    assert commands.alarm_clear(AlarmCode.NO_FLOW) == b"\x01"
    assert commands.current_task(CurrentTaskCommand.STOP) == b"\x00"
    assert commands.task_queue(TaskQueueCommand.PAUSE) == bytes.fromhex("000000000000020000")
    with pytest.raises(EncodeError):
        commands.selector(8)
    with pytest.raises(EncodeError):
        commands.selector(0xFF)
    with pytest.raises(EncodeError):
        commands.alarm_clear(14)
