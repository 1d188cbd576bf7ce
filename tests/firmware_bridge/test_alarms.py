"""Alarm Status read the way the firmware means it (device-ble.md 5.7, Δ22): healed frames,
the 0.0 °C freeze collision, signed temperatures, unknown codes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.gatt.alarms import read_alarm
from firmware_bridge.gatt.codec import AlarmCode, AlarmStatus, SystemStatus, SystemStatusCode

OK = SystemStatus(SystemStatusCode.OK)
NO_FLOW = SystemStatus(SystemStatusCode.NO_FLOW)
STRAY = SystemStatus(SystemStatusCode.UNEXPECTED_FLOW)
LOCKED = SystemStatus(SystemStatusCode.FREEZE_LOCKOUT)


def frame(hexdata: str) -> AlarmStatus:
    return AlarmStatus.decode(bytes.fromhex(hexdata))


@pytest.mark.parametrize(("hexdata", "status", "active", "healed", "name"), [
    ("00 0000 00000000", None, False, False, "NONE"),
    ("01 0100 00000000", NO_FLOW, True, False, "NO_FLOW"),  # raised, first attempt
    ("01 0300 00000000", None, True, False, "NO_FLOW"),  # still failing, status unknown yet
    ("01 0000 00000000", OK, False, True, "NO_FLOW"),  # healed: data 0, status OK
    ("01 0000 00000000", None, False, True, "NO_FLOW"),  # data 0 alone says healed
    ("01 0200 00000000", OK, False, True, "NO_FLOW"),  # status back to OK: healed too
    ("02 2A00 00000000", STRAY, True, False, "UNEXPECTED_FLOW"),
    ("02 0000 00000000", OK, False, True, "UNEXPECTED_FLOW"),
    ("03 83FF 00000000", LOCKED, True, False, "FREEZE_LOCKOUT"),  # -12.5 °C
    ("03 0000 00000000", LOCKED, True, False, "FREEZE_LOCKOUT"),  # a real 0.0 °C lockout
    ("03 0000 00000000", OK, False, True, "FREEZE_LOCKOUT"),  # lockout cleared
    ("03 0000 00000000", None, False, True, "FREEZE_LOCKOUT"),  # a clear until status says
    ("03 1400 00000000", OK, False, True, "FREEZE_LOCKOUT"),  # +2.0 °C, lifted since
    ("04 0300 00000000", OK, True, False, "HIGH_FLOW"),  # no healing frame for 4..8
    ("08 0000 00000000", OK, True, False, "GLOBAL_LOCK"),
    ("2A 0700 00000000", OK, True, False, "UNKNOWN"),  # unknown codes are relayed as unknown
    ("0B 0000 00000000", None, True, False, "UNKNOWN"),  # reserved 9-13
])
def test_alarm_table(hexdata: str, status: SystemStatus | None, active: bool, healed: bool,
                     name: str) -> None:
    reading = read_alarm(frame(hexdata), status)
    assert (reading.active, reading.healed, reading.name) == (active, healed, name)


def test_freeze_temperature_is_signed_celsius_and_stale_is_told_apart() -> None:
    cold = read_alarm(frame("03 83FF 00000000"), LOCKED)
    assert cold.temperature_c == -12.5 and not cold.sensor_stale  # not 65411
    warm = read_alarm(frame("03 0F00 00000000"), LOCKED)
    assert warm.temperature_c == 1.5
    stale = read_alarm(frame("03 FFFF 00000000"), LOCKED)
    assert stale.sensor_stale and stale.temperature_c is None and stale.active
    assert read_alarm(frame("01 0100 00000000"), NO_FLOW).temperature_c is None


@given(code=st.integers(0, 255), data=st.integers(0, 0xFFFF), ts=st.integers(0, 2**32 - 1),
       status=st.none() | st.integers(0, 255).map(SystemStatus))
def test_any_frame_reads_without_error(code: int, data: int, ts: int,
                                       status: SystemStatus | None) -> None:
    reading = read_alarm(AlarmStatus.decode(AlarmStatus(code, data, ts).encode()), status)
    assert reading.code == code
    assert not (reading.active and reading.healed)
    assert reading.active == (code != 0 and not reading.healed)
    if code not in {c.value for c in AlarmCode}:
        assert reading.name == "UNKNOWN" and reading.active
