"""An Alarm Status frame read the way the firmware means it (device-ble.md 5.7, Δ22).

The firmware keeps one alarm slot and does not always empty it when a condition heals:
NO_FLOW and UNEXPECTED_FLOW are re-sent with data 0 when flow recovers (System Status back to
OK), FREEZE_LOCKOUT is re-sent with data 0 when the lockout lifts, which collides with a real
alarm at 0.0 °C; only System Status tells those two apart. So whether an alarm is active is
decided from its code, its data and System Status together, never from the code alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_bridge.gatt.codec import AlarmCode, AlarmStatus, SystemStatus, SystemStatusCode

# FREEZE_LOCKOUT's data when the environmental reading is stale (collides with -0.1 °C).
FREEZE_DATA_STALE = 0xFFFF
# Codes whose clear frame carries data 0 instead of emptying the slot.
HEALING_CODES = (AlarmCode.NO_FLOW, AlarmCode.UNEXPECTED_FLOW, AlarmCode.FREEZE_LOCKOUT)


@dataclass(frozen=True)
class AlarmReading:
    code: int
    name: str  # "UNKNOWN" for a code the firmware documents no meaning for
    active: bool
    healed: bool  # the frame reports a condition that has healed (a clear frame)
    temperature_c: float | None = None  # FREEZE_LOCKOUT: the reading that locked out
    sensor_stale: bool = False  # FREEZE_LOCKOUT with stale environmental data


def read_alarm(alarm: AlarmStatus, status: SystemStatus | None) -> AlarmReading:
    """``status``: the latest System Status, or None when it is not known yet."""
    code = int(alarm.code)
    if code == AlarmCode.NONE:
        return AlarmReading(code, "NONE", active=False, healed=False)
    name = alarm.code.name if isinstance(alarm.code, AlarmCode) else "UNKNOWN"
    status_ok = status is not None and int(status.code) == SystemStatusCode.OK
    if code in (AlarmCode.NO_FLOW, AlarmCode.UNEXPECTED_FLOW):
        healed = alarm.data == 0 or status_ok
        return AlarmReading(code, name, active=not healed, healed=healed)
    if code == AlarmCode.FREEZE_LOCKOUT:
        stale = alarm.data == FREEZE_DATA_STALE
        temperature = None if stale else _signed(alarm.data) / 10
        locked = status is not None and int(status.code) == SystemStatusCode.FREEZE_LOCKOUT
        # data 0 is a clear unless System Status still says FREEZE_LOCKOUT (a real 0.0 °C);
        # any other reading is active until System Status is back to OK.
        active = locked if alarm.data == 0 else not status_ok
        return AlarmReading(code, name, active=active, healed=not active,
                            temperature_c=temperature, sensor_stale=stale)
    # HIGH_FLOW .. GLOBAL_LOCK, and codes with no documented meaning (relayed as unknown).
    return AlarmReading(code, name, active=True, healed=False)


def _signed(value: int) -> int:
    return value - 0x10000 if value & 0x8000 else value
