"""ControllerSession over real bleak against the virtual rig."""

from __future__ import annotations

import asyncio

import pytest

from firmware_bridge.gatt.codec import CurrentTask, TaskQueueCommand, ValveControl
from firmware_bridge.gatt.configuration import ChannelConfig, SystemConfig, TimezoneConfig
from firmware_bridge.link.gatt_link import BleakGattLink
from firmware_bridge.link.outcome import OutcomeStatus, TaskQueueError
from firmware_bridge.link.session import ControllerSession, PollPlan
from firmware_bridge.link.state import Field, StateEvent
from gateway.sim.rig import Rig

FLOW_EVENT_WITHIN_S = 5.0
pytestmark = pytest.mark.rig


async def open_session(rig: Rig, plan: PollPlan | None = None) -> ControllerSession:
    link = await BleakGattLink.connect(rig.controllers[0].address, adapter="hci0",
                                       timeout_s=10)
    session = ControllerSession(link, plan=plan)
    await session.bring_up()
    return session


async def test_bring_up_takes_a_full_typed_snapshot(rig: Rig) -> None:
    session = await open_session(rig, PollPlan(time_zone="America/New_York"))
    try:
        assert session.link.mtu == 247
        assert session.latest[Field.FIRMWARE_VERSION].value == "3.1.0"
        for field in (Field.BULK, Field.SYSTEM_STATUS, Field.CURRENT_TASK, Field.TASK_QUEUE,
                      Field.ALARM, Field.RTC, Field.ENVIRONMENT, Field.RAIN, Field.DIAGNOSTICS):
            assert field in session.latest, field
        assert isinstance(session.latest[Field.SYSTEM_CONFIG].value, SystemConfig)
        assert session.channels[0] == ChannelConfig(0, "Zone 1", False, 5, 2, 1, 0, 25.0, 80)
        assert len(session.channels) == 8
        # The sim's clock was UTC+1: the session re-synced it and restored the DST rules
        # the RTC write erased.
        assert session.latest[Field.RTC].value.utc_offset_minutes in (-300, -240)  # type: ignore[union-attr]
        tz = TimezoneConfig.decode(await session.link.read(
            "12345678-1234-5678-9abc-def123456793"))
        assert tz.dst_enabled and tz.utc_offset_minutes == -300
    finally:
        await session.link.disconnect()


async def test_valve_open_is_confirmed_then_a_second_is_queued_then_close(rig: Rig) -> None:
    session = await open_session(rig, PollPlan(read_channel_names=False))
    try:
        first = await session.open_valve(2, 5)
        assert first.status is OutcomeStatus.CONFIRMED, first
        task = await session._poll("12345678-1234-5678-1234-56789abcdeff")
        assert isinstance(task, CurrentTask) and task.channel_id == 2
        second = await session.open_valve(4, 1)
        assert second.status is OutcomeStatus.QUEUED, second
        cleared = await session.task_queue_command(TaskQueueCommand.CLEAR_PENDING)
        assert cleared.ok, cleared
        closed = await session.close_valve(2)
        assert closed.status is OutcomeStatus.CONFIRMED, closed
        bulk = await session._poll("12345678-1234-5678-1234-56789abcde60")
        assert bulk is not None and bulk.valve_states == 0  # type: ignore[union-attr]
        # Device-reported failures are values: nothing to pause.
        paused = await session.task_queue_command(TaskQueueCommand.PAUSE)
        assert paused.status is OutcomeStatus.REFUSED
        assert paused.queue_error is TaskQueueError.NOTHING_TO_ACT_ON
        # An ATT refusal is a value too (the codec would refuse channel 9 before the air).
        refused = await session._command(
            "12345678-1234-5678-1234-56789abcdef1", ValveControl(9, 0, 5).encode(),
            lambda _e: False, None, "bad channel")
        assert refused.status is OutcomeStatus.REFUSED and refused.att_code == 0x13
    finally:
        await session.link.disconnect()


async def test_history_and_notifications_flow_as_typed_events(rig: Rig) -> None:
    session = await open_session(rig, PollPlan(read_channel_names=False))
    try:
        empty = await session.history(3)
        assert empty.entries == ()
        while not session.events.empty():
            session.events.get_nowait()
        assert (await session.open_valve(1, 1)).ok
        seen: list[StateEvent] = []
        # Flow notifies within a model tick of the valve opening (0.2 s throttle); the rest
        # is a loaded machine's scheduling.
        async with asyncio.timeout(FLOW_EVENT_WITHIN_S):
            while not any(e.field is Field.FLOW for e in seen):
                event = await session.events.get()
                if isinstance(event, StateEvent):
                    seen.append(event)
        assert all(e.at > 0 and e.address == rig.controllers[0].address for e in seen)
        assert (await session.close_valve(1)).ok
    finally:
        await session.link.disconnect()
