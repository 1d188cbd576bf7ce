"""P0 codecs: golden vectors from device-ble.md section 10, round trips, and garbage."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.errors import EncodeError
from firmware_bridge.gatt.codec import (
    AlarmCode,
    AlarmStatus,
    BulkSync,
    CurrentTask,
    FlowSensor,
    GattDecodeError,
    RtcConfig,
    SystemMode,
    SystemStatus,
    SystemStatusCode,
    TaskMode,
    TaskQueue,
    TaskStatus,
    ValveControl,
)
from tests.helpers.golden import V1


def test_v1_bulk_sync_golden() -> None:
    bulk = BulkSync.decode(V1)
    assert bulk.utc_timestamp == 1773477015
    assert bulk.timezone_offset_min == 60
    assert bulk.system_mode is SystemMode.WATERING
    assert bulk.valve_states == 0x04 and bulk.valve_open(2) and not bulk.valve_open(1)
    assert bulk.active_channel == 2 and bulk.remaining_seconds == 845
    assert bulk.flow_rate_raw == 12 and bulk.temperature_c_x10 == 185
    assert bulk.humidity_pct_x10 == 623 and bulk.pressure_hpa_x10 == 10132
    assert bulk.pending_task_count == 1 and bulk.next_task_channel == 5
    assert bulk.next_task_in_min == 0xFFFF
    assert bulk.channel_status == bytes([0x19, 0, 0x1C, 0, 0, 0x18, 0, 0])
    assert bulk.rtc_valid and bulk.serial is None
    assert bulk.encode() == V1


def test_bulk_sync_v2_serial_accepted_and_v1_prefix_parsed() -> None:
    bulk = BulkSync.decode(V1 + b"123456\0\0")
    assert bulk.serial == "123456"
    assert BulkSync.decode(V1 + b"12ab56\0\0").serial is None
    with pytest.raises(GattDecodeError):
        BulkSync.decode(V1[:59])


@pytest.mark.parametrize(
    ("hexdata", "expected"),
    [
        ("02000F00", ValveControl(2, 0, 15)),
        ("00010500", ValveControl(0, 1, 5)),
        ("02010000", ValveControl(2, 1, 0)),
        ("FF010000", ValveControl(0xFF, 1, 0)),
        ("FF000000", ValveControl(0xFF, 0, 0)),
    ],
)
def test_v2_valve_control_golden(hexdata: str, expected: ValveControl) -> None:
    assert ValveControl.decode(bytes.fromhex(hexdata)) == expected
    assert expected.encode() == bytes.fromhex(hexdata)


def test_valve_commands_build_the_spec_frames_and_refuse_out_of_range() -> None:
    assert ValveControl.duration_task(2, 15).encode() == bytes.fromhex("02000F00")
    assert ValveControl.volume_task(0, 5).encode() == bytes.fromhex("00010500")
    assert ValveControl.master(True).encode() == bytes.fromhex("FF010000")
    assert ValveControl.duration_task(1, 255).encode() == bytes.fromhex("0100FF00")
    # Above 255 the firmware would wrap the u8 it stores (Δ21): never encoded.
    for bad in ((8, 10), (0, 0), (0, 256), (0, 1440), (0, 1441)):
        with pytest.raises(EncodeError):
            ValveControl.duration_task(*bad)
    with pytest.raises(EncodeError):
        ValveControl.volume_task(0, 1001)


def test_v3_v4_flow_and_status_golden() -> None:
    flow = FlowSensor.decode(bytes.fromhex("17000000"))
    assert flow.pulses_per_second == 23
    assert flow.litres_per_minute(750) == pytest.approx(1.84)
    assert SystemStatus.decode(b"\x01").code is SystemStatusCode.NO_FLOW
    assert SystemStatus.decode(b"\x09").code == 9  # unknown values survive as ints


def test_v5_task_queue_golden() -> None:
    read = TaskQueue.decode(bytes.fromhex("010402000F00000001"))
    assert (read.pending_count, read.completed_tasks, read.current_channel) == (1, 4, 2)
    assert read.current_value == 15 and read.active_task_id == 1 and not read.is_error_report
    err = TaskQueue.decode(bytes.fromhex("0004FFFF0100000000"))
    assert err.is_error_report and err.error_code == 1
    pause = TaskQueue(0, 0, 0xFF, 0, 0, 2, 0, 0)
    assert pause.encode() == bytes.fromhex("0000FF0000000200 00".replace(" ", ""))


def test_v6_current_task_golden() -> None:
    running = bytes.fromhex("028051010000840300005F000000C80500000 10000".replace(" ", ""))
    task = CurrentTask.decode(running)
    assert task.channel_id == 2 and task.start_time_uptime_s == 86400
    assert task.mode is TaskMode.DURATION and task.target_value == 900
    assert task.current_value == 95 and task.total_volume_ml == 1480
    assert task.status is TaskStatus.RUNNING and task.encode() == running
    volume = bytes.fromhex("00201C00000188130000E2040000E204000001 3E00".replace(" ", ""))
    assert CurrentTask.decode(volume).reserved == 62
    idle = bytes.fromhex("FF" + "00" * 20)
    assert CurrentTask.decode(idle).idle and CurrentTask.idle_frame().encode() == idle


def test_v7_alarm_golden() -> None:
    alarm = AlarmStatus.decode(bytes.fromhex("01020 0C61CB569".replace(" ", "")))
    assert alarm.code is AlarmCode.NO_FLOW and alarm.data == 2
    assert alarm.timestamp == 1773477062 and not alarm.empty
    cleared = AlarmStatus.decode(bytes.fromhex("00000000 1DB569".replace(" ", "")))
    assert cleared.empty and cleared.timestamp == 1773477120
    assert AlarmStatus.decode(bytes.fromhex("0E0000C61CB569")).code == 14


def test_v8_rtc_golden() -> None:
    write = bytes.fromhex("1A030E091E0F003C000000000000000000"[:32])
    rtc = RtcConfig.decode(write)
    assert (rtc.year, rtc.month, rtc.day, rtc.hour, rtc.minute, rtc.second) == (
        2026, 3, 14, 9, 30, 15)
    assert rtc.utc_offset_minutes == 60 and rtc.encode() == write


CODECS = [BulkSync, ValveControl, FlowSensor, SystemStatus, TaskQueue, CurrentTask, AlarmStatus,
          RtcConfig]


@pytest.mark.parametrize("codec", CODECS)
@given(data=st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_decode_errors(codec: Any, data: bytes) -> None:
    try:
        value = codec.decode(data)
    except GattDecodeError:
        return
    encoded = value.encode()
    assert codec.decode(encoded) == value


@given(st.tuples(*[st.integers(0, 255)] * 4, st.integers(0, 0xFFFF), *[st.integers(0, 255)] * 3))
def test_task_queue_round_trip(fields: tuple[int, ...]) -> None:
    raw = struct.pack("<BBBBHBBB", *fields)
    assert TaskQueue.decode(raw).encode() == raw


@given(st.binary(min_size=21, max_size=21))
def test_current_task_round_trip(raw: bytes) -> None:
    assert CurrentTask.decode(raw).encode() == raw


@given(st.binary(min_size=60, max_size=60))
def test_bulk_sync_round_trip_keeps_every_non_reserved_byte(raw: bytes) -> None:
    # reserved (2..3), padding1 (11) and padding2 (30..31) are written as zero by the firmware
    expected = bytearray(raw)
    expected[2:4] = b"\0\0"
    expected[11] = 0
    expected[30:32] = b"\0\0"
    assert BulkSync.decode(raw).encode() == bytes(expected)
