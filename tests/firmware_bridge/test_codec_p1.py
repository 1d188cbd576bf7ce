"""P1 codecs, fragmentation and history: golden vectors V10-V21 of device-ble.md, round trips,
and arbitrary bytes that must only ever raise the codec's own decode error."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.errors import EncodeError
from firmware_bridge.gatt.codec import GattDecodeError, TaskMode
from firmware_bridge.gatt.configuration import (
    ChannelConfig,
    CoverageType,
    HydraulicProfile,
    HydraulicStatus,
    LockLevel,
    PowerMode,
    ScheduleConfig,
    ScheduleType,
    Statistics,
    SystemConfig,
    TimezoneConfig,
)
from firmware_bridge.gatt.fragments import (
    EnvDataReassembler,
    FragmentError,
    RawSplitReassembler,
    UnifiedHeader,
    UnifiedReassembler,
    is_unified_fragment,
    write_fragments,
)
from firmware_bridge.gatt.history import (
    DetailedEntry,
    HistoryEvent,
    HistoryQuery,
    HistoryRateLimited,
    HistoryType,
    RealtimeEvent,
    Trigger,
    is_realtime_event,
    parse_history,
)
from firmware_bridge.gatt.sensors import Diagnostics, EnvironmentalData, RainData, RainSensorState
from tests.helpers.golden import V19

V10 = bytes.fromhex("0000AC41000041420050 7D44971CB569013C005C00000000".replace(" ", ""))

def test_v10_v11_environmental_data_read_and_notify() -> None:
    env = EnvironmentalData.decode(V10)
    assert (env.temperature_c, env.humidity_pct, env.pressure_hpa) == (21.5, 48.25, 1013.25)
    assert env.sample_uptime_ms == 1773477015 and env.sensor_valid
    assert env.measurement_interval == 60 and env.data_quality == 92
    assert env.encode() == V10
    reassembler = EnvDataReassembler()
    assert reassembler.feed(bytes.fromhex("000118") + V10) == env
    assert reassembler.feed(V10) == env  # future firmware: a bare struct
    with pytest.raises(GattDecodeError):
        reassembler.feed(bytes.fromhex("000119") + V10)


def test_env_data_split_over_small_mtu_reassembles() -> None:
    reassembler = EnvDataReassembler()
    assert reassembler.feed(bytes.fromhex("000211") + V10[:17]) is None
    assert reassembler.feed(bytes.fromhex("010207") + V10[17:]) == EnvironmentalData.decode(V10)
    with pytest.raises(FragmentError):
        reassembler.feed(bytes.fromhex("010207") + V10[17:])


def test_v12_rain_v13_diagnostics() -> None:
    raw = bytes.fromhex("2300000078000000E0010000" "9600C61CB569F305000001 50".replace(" ", ""))
    rain = RainData.decode(raw)
    assert rain.current_hour_mm_x100 == 35 and rain.today_mm == 1.2
    assert rain.last_24h_mm_x100 == 480 and rain.current_rate_mm_h_x100 == 150
    assert rain.last_pulse_time == 1773477062 and rain.total_pulses == 1523
    assert rain.sensor_status is RainSensorState.ACTIVE and rain.data_quality == 80
    assert rain.encode() == raw
    diag_raw = bytes.fromhex("A00500000300010 4FF000000".replace(" ", ""))
    diag = Diagnostics.decode(diag_raw)
    assert (diag.uptime_min, diag.error_count, diag.last_error) == (1440, 3, 1)
    assert diag.valve_status == 0x04 and diag.battery_level is None
    assert diag.encode() == diag_raw


def test_v14_statistics_v16_timezone_v17_schedule() -> None:
    stats_raw = bytes.fromhex("027C920000D4300000C61CB5690300")
    stats = Statistics.decode(stats_raw)
    assert (stats.channel_id, stats.total_volume, stats.last_volume) == (2, 37500, 12500)
    assert stats.last_watering == 1773477062 and stats.count == 3
    assert stats.encode() == stats_raw
    tz_raw = bytes.fromhex("7800010305000A05003C00")
    tz = TimezoneConfig.decode(tz_raw)
    assert tz == TimezoneConfig(120, True, 3, 5, 0, 10, 5, 0, 60)  # type: ignore[arg-type]
    assert tz.encode() == tz_raw
    sched_raw = bytes.fromhex("01002A061E000A0001000000")
    sched = ScheduleConfig.decode(sched_raw)
    assert sched.schedule_type is ScheduleType.DAILY and sched.days_mask == 0x2A
    assert (sched.hour, sched.minute, sched.value, sched.auto_enabled) == (6, 30, 10, True)
    assert sched.encode() == sched_raw
    # The obsolete 9-byte layout is still readable, as the app tolerates it.
    assert ScheduleConfig.decode(sched_raw[:9]).hour == 6


def test_v18_hydraulic_v19_system_config() -> None:
    hyd_raw = bytes.fromhex("020200003A0700000C001E2801010503 0000".replace(" ", "")) + bytes(30)
    hyd = HydraulicStatus.decode(hyd_raw)
    assert hyd.profile_type is HydraulicProfile.DRIP and hyd.lock_level is LockLevel.NONE
    assert hyd.nominal_flow_ml_min == 1850 and hyd.ramp_up_time_sec == 12
    assert (hyd.tolerance_high_percent, hyd.tolerance_low_percent) == (30, 40)
    assert hyd.is_calibrated and hyd.monitoring_enabled and not hyd.locked
    assert hyd.encode() == hyd_raw
    cfg = SystemConfig.decode(V19)
    assert cfg.version == 2 and cfg.power_mode is PowerMode.NORMAL
    assert cfg.flow_calibration == 750 and cfg.num_channels == 8
    assert cfg.master_valve_enabled and cfg.master_valve_pre_delay == 3
    assert cfg.master_valve_post_delay == 2 and cfg.master_valve_overlap_grace == 5
    assert math.isclose(cfg.global_temp_sensitivity, 0.05, rel_tol=1e-6)
    assert cfg.global_temp_base_temperature == 20.0 and cfg.compensation_active_channels == 4
    assert cfg.last_config_update == 1773477015
    assert cfg.encode() == V19


def test_v20_channel_config_and_its_type3_fragments() -> None:
    struct_bytes = (bytes.fromhex("030A") + b"Front lawn".ljust(64, b"\0")
                    + bytes.fromhex("0105020100") + bytes.fromhex("0000C841") + b"\x50")
    cfg = ChannelConfig.decode(struct_bytes)
    assert cfg == ChannelConfig(3, "Front lawn", True, 5, 2, 1, CoverageType.AREA_M2, 25.0, 80)
    assert cfg.encode() == struct_bytes
    frames = write_fragments(3, cfg.encode())
    assert frames[0] == bytes.fromhex("03034C00030A46726F6E74206C61776E00000000")
    assert frames[1:3] == [bytes(20), bytes(20)]
    assert frames[3] == struct_bytes[56:]
    assert b"".join([frames[0][4:], *frames[1:]]) == struct_bytes


@given(st.binary(min_size=2, max_size=128), st.integers(6, 60))
def test_write_fragments_obey_the_firmware_rules(payload: bytes, size: int) -> None:
    frames = write_fragments(1, payload, fragment_size=size)
    assert len(frames[0]) - 4 < len(payload)  # rule 1: the first write is never complete
    assert all(len(f) >= 2 for f in frames[1:])  # rule 2: no 1-byte continuation
    assert all(len(f) <= size for f in frames)
    assert b"".join([frames[0][4:], *frames[1:]]) == payload


@pytest.mark.parametrize(("channel", "payload"), [(8, bytes(76)), (0, bytes(129)), (0, b"x")])
def test_write_fragments_refuse_what_the_device_cannot_take(channel: int, payload: bytes) -> None:
    with pytest.raises(EncodeError):
        write_fragments(channel, payload)


def test_v21_history_query_response_and_notices() -> None:
    query = HistoryQuery(2, HistoryType.DETAILED, 0, 1)
    assert query.encode() == bytes.fromhex("020000010000000000000000")
    response = bytes.fromhex("0000010000012400" "020000010000000000000000"
                             "C61CB569020100983AE439E439010100190000000000 0000".replace(" ", ""))
    assert is_unified_fragment(response)
    result = parse_history(UnifiedReassembler().feed(response))  # type: ignore[arg-type]
    assert result.query is not None and result.query.channel_id == 2
    (entry,) = result.entries
    assert entry == DetailedEntry(1773477062, 2, HistoryEvent.COMPLETE, TaskMode.DURATION,  # type: ignore[arg-type]
                                  15000, 14820, 14820, Trigger.SCHEDULE, True, 0, 25)  # type: ignore[arg-type]
    limited = UnifiedReassembler().feed(bytes.fromhex("FE07000000010000"))
    assert limited is not None
    with pytest.raises(HistoryRateLimited):
        parse_history(limited)
    empty = UnifiedReassembler().feed(bytes.fromhex("0000000000010000"))
    assert empty is not None and parse_history(empty).entries == ()


def test_v21_realtime_start_event_is_told_apart_from_fragments() -> None:
    frame = bytes.fromhex("02000001100E0000100E0000100E0000020000000000000000010000EE020000")
    assert not is_unified_fragment(frame) and is_realtime_event(frame)
    event = RealtimeEvent.decode(frame)
    assert event.channel_id == 2 and event.timestamp == 3600
    assert event.event_type is HistoryEvent.START and event.timestamp_is_uptime
    assert event.trigger_type is Trigger.SCHEDULE and event.flow_rate_avg == 750


def test_unified_reassembly_over_several_fragments_and_gaps() -> None:
    payload = bytes(range(200)) * 3
    chunks = [payload[i:i + 232] for i in range(0, len(payload), 232)]
    frames = [UnifiedHeader(1, 0, 5, i, len(chunks), len(c)).encode(c)
              for i, c in enumerate(chunks)]
    reassembler = UnifiedReassembler()
    assert reassembler.feed(frames[0]) is None and reassembler.feed(frames[1]) is None
    done = reassembler.feed(frames[2])
    assert done is not None and done.payload == payload and done.entry_count == 5
    reassembler.feed(frames[0])
    with pytest.raises(FragmentError):
        reassembler.feed(frames[2])
    assert not reassembler.in_progress


def test_raw_split_reassembles_and_forgets_stale_halves() -> None:
    raw = RawSplitReassembler(21)
    assert raw.feed(bytes(20), now=0.0) is None
    assert raw.feed(b"\x01", now=0.005) == bytes(20) + b"\x01"
    assert raw.feed(bytes(20), now=1.0) is None
    assert raw.feed(bytes(20), now=1.5) is None  # the first half went stale: a new start
    with pytest.raises(GattDecodeError):
        raw.feed(bytes(5), now=1.51)


P1_CODECS: list[Any] = [EnvironmentalData, RainData, Diagnostics, Statistics, TimezoneConfig,
                        ScheduleConfig, HydraulicStatus, SystemConfig, ChannelConfig,
                        HistoryQuery, DetailedEntry, RealtimeEvent]


@pytest.mark.parametrize("codec", P1_CODECS, ids=lambda c: c.__name__)
@given(data=st.binary(max_size=100))
def test_arbitrary_bytes_raise_only_decode_errors(codec: Any, data: bytes) -> None:
    with contextlib.suppress(GattDecodeError):
        codec.decode(data)


def _size(codec: Any) -> int:
    return int(codec.LAYOUT.size)


@pytest.mark.parametrize("codec", [c for c in P1_CODECS if hasattr(c, "encode")],
                         ids=lambda c: c.__name__)
@given(data=st.data())
def test_every_value_round_trips_through_its_bytes(codec: Any, data: st.DataObject) -> None:
    raw = data.draw(st.binary(min_size=_size(codec), max_size=_size(codec)))
    try:
        value = codec.decode(raw)
    except GattDecodeError:
        return
    try:
        once = value.encode()
    except EncodeError:
        return  # a value the device can send but the gateway refuses to write (validated)
    assert codec.decode(once).encode() == once


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_reassemblers_survive_any_frame_sequence(frames: list[bytes]) -> None:
    unified, env, raw = UnifiedReassembler(), EnvDataReassembler(), RawSplitReassembler(21)
    for i, frame in enumerate(frames):
        for feed in (unified.feed, env.feed, lambda f, i=i: raw.feed(f, now=i * 0.01)):
            with contextlib.suppress(GattDecodeError):
                feed(frame)


def test_timezone_refuses_invalid_rules() -> None:
    with pytest.raises(EncodeError):
        TimezoneConfig(900, False).encode()  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        TimezoneConfig(60, True, 13, 5, 0, 10, 5, 0, 60).encode()  # type: ignore[arg-type]
