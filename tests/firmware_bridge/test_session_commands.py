"""A valve command asked again on a new link after the first link ended once its write was
sent (``open_valve_again``): the controller's own state decides, so a valve is never opened
twice and an unknown is said as one."""

from __future__ import annotations

from firmware_bridge.link.outcome import OutcomeStatus
from firmware_bridge.link.session import ControllerSession, PollPlan
from tests.helpers.fakes import ModelLink

ADDRESS = "C0:FF:EE:00:00:00"


async def session_on(link: ModelLink) -> ControllerSession:
    session = ControllerSession(link, plan=PollPlan(read_channel_names=False))
    await session.bring_up()
    return session


async def test_the_write_that_reached_the_controller_is_confirmed_not_repeated() -> None:
    first = ModelLink(ADDRESS)
    assert (await (await session_on(first)).open_valve(2, 5)).ok  # its write landed
    again = ModelLink(ADDRESS, model=first.model)  # the same controller, a new link
    outcome = await (await session_on(again)).open_valve_again(2, 5)
    assert outcome.status is OutcomeStatus.CONFIRMED and "started it" in outcome.detail
    assert first.model.running is not None and first.model.running.channel == 2
    assert len(first.model.queue) == 0  # not queued a second time


async def test_a_write_that_never_arrived_is_sent_on_the_new_link() -> None:
    link = ModelLink(ADDRESS)
    outcome = await (await session_on(link)).open_valve_again(2, 5)
    assert outcome.status is OutcomeStatus.CONFIRMED
    assert link.model.running is not None and link.model.running.channel == 2


async def test_with_another_channel_watering_the_unknown_is_said_not_guessed() -> None:
    link = ModelLink(ADDRESS)
    session = await session_on(link)
    assert (await session.open_valve(1, 5)).ok
    outcome = await session.open_valve_again(2, 5)
    assert outcome.status is OutcomeStatus.UNCONFIRMED and "unknown" in outcome.detail
    assert len(link.model.queue) == 0  # nothing written
