"""Bad input on a live session: arbitrary notification bytes on every characteristic become
typed decode problems (or documented unknowns), never exceptions; the session keeps working."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.gatt import uuids
from firmware_bridge.link.session import ControllerSession, PollPlan
from firmware_bridge.link.state import DecodeProblem, Field, StateEvent
from tests.helpers.fakes import ModelLink


def notify(session: ControllerSession, uuid: str, data: bytes) -> None:
    session._handler(uuid)(None, data)  # what the transport calls


NOTIFYING = [uuids.VALVE_CONTROL, uuids.FLOW_SENSOR, uuids.SYSTEM_STATUS, uuids.TASK_QUEUE,
             uuids.CURRENT_TASK, uuids.ALARM_STATUS, uuids.RTC_CONFIG, uuids.TIMEZONE_CONFIG,
             uuids.ENVIRONMENTAL_DATA, uuids.RAIN_DATA, uuids.DIAGNOSTICS, uuids.HISTORY,
             uuids.HYDRAULIC_STATUS]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(NOTIFYING), st.binary(max_size=80)), max_size=20))
def test_any_notification_bytes_are_typed_events_or_problems(
        frames: list[tuple[str, bytes]]) -> None:
    session = ControllerSession(ModelLink("C0:FF:EE:00:00:00"), plan=PollPlan())
    for uuid, data in frames:
        notify(session, uuid, data)
    while not session.events.empty():
        item = session.events.get_nowait()
        assert isinstance(item, StateEvent | DecodeProblem)


async def test_unknown_enum_values_are_kept_as_unknown_not_errors() -> None:
    session = ControllerSession(ModelLink("C0:FF:EE:00:00:00"), plan=PollPlan())
    notify(session, uuids.SYSTEM_STATUS, b"\x09")  # beyond LOCKED
    notify(session, uuids.ALARM_STATUS, bytes.fromhex("2a0000c61cb569"))
    status = session.latest[Field.SYSTEM_STATUS].value
    alarm = session.latest[Field.ALARM].value
    assert status.code == 9  # type: ignore[union-attr]
    assert alarm.code == 42 and not alarm.empty  # type: ignore[union-attr]


async def test_session_keeps_working_after_garbage() -> None:
    link = ModelLink("C0:FF:EE:00:00:00")
    session = ControllerSession(link, plan=PollPlan(read_channel_names=False))
    await session.bring_up()
    notify(session, uuids.CURRENT_TASK, b"\x01\x02")
    notify(session, uuids.HISTORY, b"\x00" * 7)
    assert (await session.open_valve(0, 1)).ok
    await asyncio.sleep(0)


def test_a_sink_takes_each_event_as_it_is_decoded_in_order() -> None:
    # Issue 19 item 7: a queue and a task between a notification and the state it updates
    # cost the hot path a loop iteration each (bench/relay_latency.py).
    got: list[StateEvent | DecodeProblem] = []
    session = ControllerSession(ModelLink("C0:FF:EE:00:00:00"), plan=PollPlan(),
                                sink=got.append)
    notify(session, uuids.SYSTEM_STATUS, b"\x00")
    notify(session, uuids.CURRENT_TASK, b"\x01\x02")  # too short: a problem, in its place
    notify(session, uuids.SYSTEM_STATUS, b"\x01")
    assert [type(i).__name__ for i in got] == ["StateEvent", "DecodeProblem", "StateEvent"]
    assert session.events.empty()
