"""Command frames a gateway sends (device-ble.md 9.3), each validated before it touches the air."""

from __future__ import annotations

from firmware_bridge.errors import EncodeError
from firmware_bridge.gatt.codec import (
    CHANNELS,
    NO_CHANNEL,
    AlarmCode,
    CurrentTaskCommand,
    TaskQueue,
    TaskQueueCommand,
)

# Codes 9-13 are reserved but the firmware accepts a clear for them (5.7).
HIGHEST_CLEARABLE_ALARM = 0x0D


def selector(channel: int, *, allow_active: bool = False) -> bytes:
    """The 1-byte write that picks what a selector characteristic returns next (4.2).
    ``allow_active``: Hydraulic Status accepts 0xFF for "the channel now watering"."""
    if 0 <= channel < CHANNELS or (allow_active and channel == NO_CHANNEL):
        return bytes([channel])
    raise EncodeError(f"selector channel {channel} is outside 0..7")


def alarm_clear(code: AlarmCode | int | None = None) -> bytes:
    """Clear all alarms (None) or only ``code`` if it is the one currently raised."""
    if code is None:
        return b"\x00"
    if not 1 <= int(code) <= HIGHEST_CLEARABLE_ALARM:
        raise EncodeError(f"alarm code {int(code)} cannot be cleared individually")
    return bytes([int(code)])


def current_task(command: CurrentTaskCommand) -> bytes:
    return bytes([int(command)])


def task_queue(command: TaskQueueCommand) -> bytes:
    return TaskQueue.command_frame(command).encode()
