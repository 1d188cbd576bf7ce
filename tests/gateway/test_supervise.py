"""The guard every long-running part runs under, in virtual time: restarts with capped backoff,
gives up on a crash loop, lets cancellation through, and keeps one-shot children's crashes
out of their parent."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from gateway.ops.health import PartState
from gateway.supervise import RestartPolicy, Supervision
from tests.helpers import cancel_and_wait, until
from tests.helpers.fakes import VirtualClock

POLICY = RestartPolicy(first_s=1.0, cap_s=8.0, max_crashes=5, window_s=600.0)


class Part:
    """Crashes the first ``crashes`` runs, then runs until cancelled."""

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.runs = 0
        self.running = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"crash {self.runs}")
        self.running.set()
        await asyncio.Event().wait()


async def test_a_crashing_part_is_restarted_with_capped_backoff_and_comes_back_up() -> None:
    clock = VirtualClock()
    supervision = Supervision(clock, POLICY)
    part = Part(crashes=4)
    with capture_logs() as logs:
        task = asyncio.create_task(supervision.guard("relay", part.run))
        await asyncio.wait_for(part.running.wait(), 1)
    (health,) = supervision.parts()
    assert health.state is PartState.UP and health.up and health.restarts == 4
    assert health.reason == "RuntimeError: crash 4"
    assert clock.waited == [1.0, 2.0, 4.0, 8.0]
    crashed = [e for e in logs if e["event"] == "part_crashed"]
    assert len(crashed) == 4 and crashed[0]["part"] == "relay"
    assert crashed[0]["error_class"] == "RuntimeError" and crashed[0]["exc_info"]
    await cancel_and_wait(task)


async def test_the_backoff_stops_growing_at_its_cap() -> None:
    assert [POLICY.delay_s(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


async def test_a_part_that_keeps_crashing_stays_down_and_says_why() -> None:
    clock = VirtualClock()
    supervision = Supervision(clock, POLICY)
    part = Part(crashes=1000)
    with capture_logs() as logs:
        await asyncio.wait_for(supervision.guard("cloud relay", part.run), 1)  # returns
    (health,) = supervision.parts()
    assert health.state is PartState.FAILED and not health.up
    assert part.runs == POLICY.max_crashes and health.restarts == POLICY.max_crashes - 1
    assert health.reason == f"RuntimeError: crash {POLICY.max_crashes}"
    assert [e["event"] for e in logs].count("part_failed") == 1


async def test_crashes_spread_beyond_the_window_never_give_up() -> None:
    clock = VirtualClock()
    supervision = Supervision(clock, RestartPolicy(first_s=700.0, cap_s=700.0, max_crashes=2,
                                                   window_s=600.0))
    part = Part(crashes=6)
    task = asyncio.create_task(supervision.guard("feed", part.run))
    await asyncio.wait_for(part.running.wait(), 1)
    assert supervision.parts()[0].state is PartState.UP and part.runs == 7
    await cancel_and_wait(task)


async def test_cancellation_goes_through_the_guard() -> None:
    supervision = Supervision(VirtualClock(), POLICY)
    part = Part(crashes=0)
    task = asyncio.create_task(supervision.guard("metrics", part.run))
    await asyncio.wait_for(part.running.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert part.runs == 1


async def test_a_part_that_returns_is_stopped_not_restarted() -> None:
    supervision = Supervision(VirtualClock(), POLICY)
    runs = []

    async def once() -> None:
        runs.append(1)

    await supervision.guard("cloud updates", once)
    assert runs == [1] and supervision.parts()[0].state is PartState.STOPPED


async def test_a_childs_crash_is_counted_on_its_parent_and_never_raised() -> None:
    supervision = Supervision(VirtualClock(), POLICY)

    async def bad() -> None:
        raise KeyError("x")

    async def good() -> None:
        await asyncio.sleep(0)

    with capture_logs() as logs:
        assert await supervision.child("mqtt relay", "command valve/2/set", bad()) is False
        assert await supervision.child("mqtt relay", "command valve/3/set", good()) is True
    assert supervision.parts()[0].child_crashes == 1
    assert [e["child"] for e in logs if e["event"] == "part_child_crashed"] == [
        "command valve/2/set"]


async def test_a_cancelled_child_is_not_a_crash() -> None:
    supervision = Supervision(VirtualClock(), POLICY)
    task = asyncio.create_task(supervision.child("cloud updates", "job 1",
                                                 asyncio.Event().wait()))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    await until(task.done)
    assert supervision.parts() == []
