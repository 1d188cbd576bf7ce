"""Supervisors against in-process fakes, in virtual time: the state machine carrying out its
decisions, without a radio and without waiting out real backoffs."""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest
from structlog.testing import capture_logs

from firmware_bridge.errors import AttRefused, LinkDBusError, LinkLost, PeerNotFound
from firmware_bridge.gatt import uuids
from firmware_bridge.gatt.codec import CurrentTask, TaskMode, TaskStatus
from firmware_bridge.link.gatt_link import GattLink
from firmware_bridge.link.outcome import CommandOutcome, OutcomeStatus
from firmware_bridge.link.session import ControllerSession
from gateway.clock import LoopClock
from gateway.config import LinkPolicy, LinkSettings
from gateway.errors import CommandFailed, ControllerBusy, PairingError, RegistryError
from gateway.link.decision import Action
from gateway.link.radios.base import NoPath
from gateway.link.scheduler import Priority, SlotScheduler
from gateway.link.supervisor import VISIT_LEAD, Supervisor
from gateway.ops.models import LinkState
from gateway.sim.controller.irrigation import IrrigationModel
from gateway.store.registry import Registry
from gateway.store.state import StateStore
from gateway.supervise import RestartPolicy, Supervision
from tests.helpers import cancel_and_wait, until
from tests.helpers.fakes import ModelLink, VirtualClock

ADDRESS = "C0:FF:EE:00:00:00"


class Radio:
    """A connector that hands out ModelLinks, or raises what the test queued."""

    def __init__(self) -> None:
        self.failures: list[BaseException] = []
        self.links: list[ModelLink] = []
        self.connects = 0
        self.model: IrrigationModel | None = None  # one controller behind every link if set

    async def __call__(self, address: str, timeout_s: float,
                       on_disconnect: Callable[[], None]) -> GattLink:
        self.connects += 1
        if self.failures:
            raise self.failures.pop(0)
        link = ModelLink(address, model=self.model)
        link.on_disconnect = on_disconnect
        self.links.append(link)
        return link


def make(tmp_path: Path, radio: Radio, policy: LinkPolicy = LinkPolicy.KEEP,
         repairer: object = None) -> tuple[Supervisor, StateStore]:
    registry = Registry(tmp_path / "r.sqlite3")
    registry.add(ADDRESS, name="AutoWatering", bonded=True)
    store = StateStore(stale_after_s=10)
    settings = LinkSettings(refresh_period_s=1.0, connect_timeout_s=1.0)
    clock = VirtualClock()
    sup = Supervisor(ADDRESS, settings=settings, policy=policy, scheduler=SlotScheduler(1),
                     store=store, registry=registry, connector=radio,
                     repairer=repairer, clock=clock, session_clock=clock)  # type: ignore[arg-type]
    return sup, store


async def test_keep_policy_connects_syncs_and_serves_a_command(tmp_path: Path) -> None:
    radio = Radio()
    sup, store = make(tmp_path, radio)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.CONNECTED)
        assert store.fresh(ADDRESS)
        outcome = await sup.submit("open", lambda s: s.open_valve(1, 2))
        assert outcome.status is OutcomeStatus.CONFIRMED
        await until(lambda: store.snapshot(ADDRESS).valves[1].open)
    finally:
        task.cancel()


async def test_link_loss_is_classified_backed_off_and_recovered(tmp_path: Path) -> None:
    radio = Radio()
    sup, _ = make(tmp_path, radio)
    task = asyncio.create_task(sup.run())
    try:
        with capture_logs() as logs:
            await until(lambda: sup.state is LinkState.CONNECTED)
            radio.links[-1].drop()
            await until(lambda: len(radio.links) == 2 and sup.state is LinkState.CONNECTED)
        failures = [e for e in logs if e["event"] == "link_failure"]
        assert failures and failures[0]["failure_class"] == "link_lost"
        # The backoff it slept is the one decided for the class (1 s +-20 % for a first loss).
        assert isinstance(sup.clock, VirtualClock)
        assert failures[0]["retry_in_s"] in [round(w, 2) for w in sup.clock.waited]
        assert 0.8 <= failures[0]["retry_in_s"] <= 1.2
    finally:
        task.cancel()


async def test_a_programming_error_goes_to_the_guard_which_restarts_the_loop(
        tmp_path: Path) -> None:
    """A bug is never retried as a flaky radio by the supervisor itself: it escapes to its
    guard, commands waiting fail typed at once, and the guard starts the loop again after its
    backoff (in virtual time), logging the crash once."""
    radio = Radio()
    radio.failures.append(TypeError("bug"))
    sup, _ = make(tmp_path, radio)
    assert isinstance(sup.clock, VirtualClock)
    supervision = Supervision(sup.clock, RestartPolicy(first_s=7.0))
    with capture_logs() as logs:
        task = asyncio.create_task(supervision.guard("supervisor", sup.run,
                                                     on_crash=sup.crashed))
        try:
            await until(lambda: sup.state is LinkState.CONNECTED)
        finally:
            await cancel_and_wait(task)
    assert radio.connects == 2 and 7.0 in sup.clock.waited
    (part,) = supervision.parts()
    assert part.restarts == 1 and part.reason == "TypeError: bug"
    assert [e["event"] for e in logs].count("part_crashed") == 1
    assert not any(e["event"] == "link_failure" for e in logs)


async def test_commands_fail_typed_while_the_supervisor_is_down(tmp_path: Path) -> None:
    radio = Radio()
    sup, _ = make(tmp_path, radio)
    sup.crashed(TypeError("bug"))
    assert sup.state is LinkState.FAULTED
    with pytest.raises(CommandFailed, match="internal error"):
        await sup.submit("open", lambda s: s.open_valve(1, 2))


async def test_lost_bond_repairs_once_then_reports_the_remedy(tmp_path: Path) -> None:
    radio = Radio()
    auth = LinkDBusError("org.bluez.Error.AuthenticationFailed", "")
    radio.failures += [auth, AttRefused(0x05, "read def3")]
    repairs: list[tuple[str, Action]] = []

    async def repair(address: str, action: Action) -> None:
        repairs.append((address, action))

    sup, _ = make(tmp_path, radio, repairer=repair)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.BOND_LOST)
        assert repairs == [(ADDRESS, Action.REPAIR_BOND)]
        with pytest.raises(PairingError, match="awgw unpair"):
            await sup.submit("open", lambda s: s.open_valve(1, 2))
        sup.bond_reset()  # a person re-paired it
        await until(lambda: sup.state is LinkState.CONNECTED)
    finally:
        task.cancel()


async def test_a_lost_passkey_bond_names_the_passkey_in_its_remedy(tmp_path: Path) -> None:
    """The remedy a person follows must pair it as it was paired: with its passkey."""
    radio = Radio()
    radio.failures += [AttRefused(0x05, "read def3")]
    sup, _ = make(tmp_path, radio)
    sup.registry.add(ADDRESS, name="AutoWatering", bonded=True, passkey=True)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.BOND_LOST)
        with pytest.raises(PairingError, match=f"awgw pair {ADDRESS} --passkey NNNNNN"):
            await sup.submit("open", lambda s: s.open_valve(1, 2))
    finally:
        task.cancel()


async def test_commands_are_refused_as_busy_during_a_firmware_update(tmp_path: Path) -> None:
    radio = Radio()
    sup, _ = make(tmp_path, radio)
    sup.clock = LoopClock()  # the hand-over takes real turns of the loop: none skipped
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.CONNECTED)
        async with sup.firmware_update():
            assert radio.links[-1].connected is False  # handed over before the update connects
            with pytest.raises(ControllerBusy):
                await sup.submit("open", lambda s: s.open_valve(1, 2))
        await until(lambda: sup.state is LinkState.CONNECTED and len(radio.links) == 2)
    finally:
        task.cancel()


class SlowRadio(Radio):
    """A connect that takes until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.connecting = asyncio.Event()
        self.finish = asyncio.Event()

    async def __call__(self, address: str, timeout_s: float,
                       on_disconnect: Callable[[], None]) -> GattLink:
        self.connecting.set()
        await self.finish.wait()
        return await super().__call__(address, timeout_s, on_disconnect)


@pytest.mark.parametrize("policy", [LinkPolicy.KEEP, LinkPolicy.SHARE])
async def test_an_update_arriving_mid_connect_gets_the_controller_once_it_is_let_go(
        tmp_path: Path, policy: LinkPolicy) -> None:
    radio = SlowRadio()
    sup, _ = make(tmp_path, radio, policy)
    sup.clock = LoopClock()  # the update's wait for the link is real here, not skipped
    task = asyncio.create_task(sup.run())
    try:
        await radio.connecting.wait()
        entered = asyncio.Event()

        async def update() -> None:
            async with sup.firmware_update():
                # The visit's link is gone before the updater may connect.
                assert radio.links and not radio.links[-1].connected
                entered.set()
                await asyncio.sleep(0.1)
                assert len(radio.links) == 1  # no visit connected during the update

        updater = asyncio.create_task(update())
        await asyncio.sleep(0.05)
        assert not entered.is_set()  # the visit is still connecting: the update waits
        radio.finish.set()
        await asyncio.wait_for(updater, 5)
    finally:
        task.cancel()


async def test_an_update_is_refused_as_busy_when_the_link_never_lets_go(tmp_path: Path) -> None:
    radio = SlowRadio()  # a connect that never finishes (a wedged bluetoothd)
    sup, _ = make(tmp_path, radio)
    task = asyncio.create_task(sup.run())
    try:
        await radio.connecting.wait()
        with pytest.raises(ControllerBusy, match="did not let go"):
            async with sup.firmware_update():
                pass
        assert sup.state is not LinkState.UPDATING  # the refused update left no mark
    finally:
        task.cancel()


async def test_share_policy_releases_after_each_visit_and_comes_back(tmp_path: Path) -> None:
    radio = Radio()
    sup, store = make(tmp_path, radio, LinkPolicy.SHARE)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: len(radio.links) >= 2, limit_s=5)
        assert not radio.links[0].connected  # released between visits
        outcome = await sup.submit("open", lambda s: s.open_valve(3, 1))
        assert outcome.ok and store.fresh(ADDRESS)
    finally:
        task.cancel()


async def test_a_command_for_a_visit_queued_as_background_preempts_a_background_link(
        tmp_path: Path) -> None:
    """The visit was waiting for a slot as a routine refresh when a person's command came:
    from then on it waits as urgent (before, it waited for the background holder to finish)."""
    radio = Radio()
    sup, _ = make(tmp_path, radio, LinkPolicy.SHARE)
    scheduler = sup.scheduler
    assert isinstance(scheduler, SlotScheduler)

    async def neighbour() -> None:
        async with scheduler.slot("C0:FF:EE:00:00:01", Priority.BACKGROUND, kept=True) as lease:
            await lease.preempted.wait()

    other = asyncio.create_task(neighbour())
    await until(lambda: len(scheduler.leases) == 1)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.WAITING_SLOT)
        async with asyncio.timeout(5):
            outcome = await sup.submit("open", lambda s: s.open_valve(3, 1))
        assert outcome.ok
        assert other.done()  # the neighbour yielded its slot
    finally:
        task.cancel()
        other.cancel()


async def test_share_visits_of_controllers_that_came_up_together_drift_apart(
        tmp_path: Path) -> None:
    """Controllers started together (a daemon start, a radio's failover) would otherwise visit
    in step forever, all wanting a slot at the same moment every period (fleet bench: 24 refresh
    visits queued within 5 ms, and a person's command waited behind them). Each visit comes
    early by a random share of the lead, never late: the state stays younger than a period."""
    radio = Radio()
    sup, _ = make(tmp_path, radio, LinkPolicy.SHARE)
    sup.rng = random.Random(7)
    sup.settings = sup.settings.model_copy(update={"refresh_period_s": 10.0})
    clock = sup.clock
    assert isinstance(clock, VirtualClock)
    starts: list[float] = []

    async def connector(address: str, timeout_s: float,
                        on_disconnect: Callable[[], None]) -> GattLink:
        starts.append(clock.now())
        return await radio(address, timeout_s, on_disconnect)

    sup.connector = connector
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: len(starts) >= 6, limit_s=10)
    finally:
        await cancel_and_wait(task)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    lead = sup.settings.refresh_period_s * VISIT_LEAD
    assert all(gap <= lead + 0.05 for gap in gaps), gaps
    assert gaps[0] < 0.9 * lead, gaps  # the first after coming up is drawn widely
    assert max(gaps) - min(gaps) > 0.1, gaps


async def test_repeated_gatt_mismatch_clears_the_cache_once(tmp_path: Path) -> None:
    from firmware_bridge.errors import CharacteristicMissing

    radio = Radio()
    radio.failures += [CharacteristicMissing("read de60: characteristic not found")] * 2
    repairs: list[tuple[str, Action]] = []

    async def repair(address: str, action: Action) -> None:
        repairs.append((address, action))

    sup, _ = make(tmp_path, radio, repairer=repair)
    task = asyncio.create_task(sup.run())
    try:
        with capture_logs() as logs:
            await until(lambda: sup.state is LinkState.CONNECTED, limit_s=15)
        assert repairs == [(ADDRESS, Action.CLEAR_GATT_CACHE)]
        actions = [e.get("action") for e in logs if e["event"] == "link_failure"]
        assert actions.count("clear_gatt_cache_and_repair") == 1
    finally:
        task.cancel()


async def test_a_full_disk_is_a_backoff_not_a_fault(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry failing (disk full, locked) is transient for the supervisor that met it:
    it backs off with the store's policy and serves again once the store works."""
    radio = Radio()
    sup, store = make(tmp_path, radio)
    failing = [2]
    original = sup.registry.seen

    def seen(*args: object, **kwargs: object) -> None:
        if failing[0]:
            failing[0] -= 1
            raise RegistryError("cannot write the registry: database or disk is full")
        original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sup.registry, "seen", seen)
    with capture_logs() as logs:
        task = asyncio.create_task(sup.run())
        try:
            await until(lambda: sup.state is LinkState.CONNECTED and not failing[0])
        finally:
            await cancel_and_wait(task)
    failures = [e for e in logs if e["event"] == "link_failure"]
    assert [f["failure_class"] for f in failures] == ["store", "store"]
    assert sup.state is not LinkState.FAULTED and store.fresh(ADDRESS)


async def test_a_controller_seen_again_ends_its_not_found_backoff_at_once(
        tmp_path: Path) -> None:
    # A controller back from a power cut (or out of range and back) advertises: waiting out a
    # not_found backoff of 10-120 s would leave it unavailable while it is heard.
    radio = Radio()
    radio.failures.append(PeerNotFound(f"connect {ADDRESS}: device {ADDRESS} not found"))
    sup, _ = make(tmp_path, radio)
    sup.clock = LoopClock()  # a real backoff, which must not be waited out
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.BACKOFF)
        sup.sighted()
        await until(lambda: sup.state is LinkState.CONNECTED, 2.0)
        assert radio.connects == 2
    finally:
        await cancel_and_wait(task)



async def test_only_a_backoff_for_want_of_a_path_asks_the_radio_set_to_wake_it(
        tmp_path: Path) -> None:
    # No radio could serve it (its pinned proxy is down): the radio set watches for a path.
    # A controller a radio failed to find keeps its backoff (a sighting still ends it).
    radio = Radio()
    radio.failures += [NoPath(f"{ADDRESS}: pin_unusable"),
                       PeerNotFound(f"connect {ADDRESS}: device {ADDRESS} not found")]
    sup, _ = make(tmp_path, radio)
    sup.clock = LoopClock()
    told: list[bool] = []
    sup.on_stranded = lambda: told.append(sup.waiting_for_path)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.BACKOFF)
        assert sup.waiting_for_path and told == [True]
        sup.sighted()
        await until(lambda: radio.connects == 2 and sup.state is LinkState.BACKOFF, 2.0)
        assert not sup.waiting_for_path and told == [True]
    finally:
        await cancel_and_wait(task)


async def test_a_command_whose_link_dies_before_it_sends_anything_runs_on_the_next_link(
        tmp_path: Path) -> None:
    """Closing a valve reads the running task first; a radio that dies during that read has
    sent the controller nothing, so the command is served on the next visit instead of
    failing (bench/fleet.py: "close: read deff: Not connected to proxy0")."""
    radio = Radio()
    sup, _ = make(tmp_path, radio)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.CONNECTED)
        radio.links[-1].connected = False  # the read the close starts with fails
        outcome = await sup.submit("close", lambda s: s.close_valve(1))
        assert outcome.status is OutcomeStatus.CONFIRMED
        assert len(radio.links) == 2  # served through the next link
    finally:
        task.cancel()


async def test_a_command_whose_write_may_have_gone_out_is_not_run_again(
        tmp_path: Path) -> None:
    radio = Radio()
    sup, _ = make(tmp_path, radio)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.CONNECTED)
        radio.links[-1].fail_next = LinkLost(f"{ADDRESS} lost during the write")
        with pytest.raises(CommandFailed, match=r"^open: "):
            await sup.submit("open", lambda s: s.open_valve(1, 2))
    finally:
        task.cancel()


async def test_a_command_whose_write_may_have_gone_out_asks_the_next_link_what_is_true(
        tmp_path: Path) -> None:
    """A person's open through a proxy that dies right after the write: the next link reads
    whether the valve waters instead of failing the command or opening it twice."""
    model = ModelLink(ADDRESS).model  # one controller behind every link
    radio = Radio()
    radio.model = model
    sup, _ = make(tmp_path, radio)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.CONNECTED)
        first = radio.links[-1]

        async def open_then_lose_the_link(session: ControllerSession) -> CommandOutcome:
            first.dies_after_write = True
            return await session.open_valve(1, 2)

        with capture_logs() as logs:
            outcome = await sup.submit("open", open_then_lose_the_link,
                                       rerun=lambda s: s.open_valve_again(1, 2))
        assert outcome.status is OutcomeStatus.CONFIRMED and "started it" in outcome.detail
        assert len(radio.links) == 2 and model.running is not None
        assert len(model.queue) == 0  # opened once
        assert [e["write_sent"] for e in logs if e["event"] == "command_retried"] == [True]
    finally:
        await cancel_and_wait(task)


async def test_a_command_whose_asker_left_before_it_started_is_never_run(
        tmp_path: Path) -> None:
    # A person's CLI that disconnected, a relay shutting down: its command, still queued
    # behind a backoff, must not water later when nobody waits for the answer.
    radio = Radio()
    radio.failures.append(LinkLost(f"{ADDRESS} disconnected"))
    sup, _ = make(tmp_path, radio)
    sup.clock = LoopClock()
    ran: list[str] = []

    async def open_valve(session: object) -> object:
        ran.append("open")
        raise AssertionError("a command nobody waits for was run")

    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.BACKOFF)
        asker = asyncio.create_task(sup.submit("open", open_valve))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        asker.cancel()
        await asyncio.gather(asker, return_exceptions=True)
        await until(lambda: sup.state is LinkState.CONNECTED, 5.0)
        await asyncio.sleep(0.1)
        assert ran == []
    finally:
        await cancel_and_wait(task)


async def test_a_notification_reaches_the_store_through_few_python_frames(
        tmp_path: Path) -> None:
    """Issue 19 item 7: on a Pi each Python frame between bleak and the store costs cold-cache
    microseconds per notification (bench/relay_latency.py). Counted, not timed: the session's
    handler for the characteristic, the decoder and its value, the event, the store and what
    it derives, the burst watcher; the virtual clock's two reads are Python here (C in the
    daemon). The dispatching chain before ran 18 (typing.cast and a property among them)."""
    radio = Radio()
    sup, store = make(tmp_path, radio)
    task = asyncio.create_task(sup.run())
    try:
        await until(lambda: sup.state is LinkState.CONNECTED)
        store.watch(0.2, 0.3, LoopClock())
        handler = radio.links[-1].callbacks[uuids.CURRENT_TASK]
        frame = CurrentTask(2, 100, TaskMode.DURATION, 600, 30, 1000, TaskStatus.RUNNING).encode()
        handler(uuids.CURRENT_TASK, frame)  # the burst's first change wakes its consumer
        calls: list[str] = []

        def count(frame_: FrameType, event: str, _arg: object) -> None:
            if event == "call":
                calls.append(frame_.f_code.co_qualname)

        sys.setprofile(count)
        try:
            handler(uuids.CURRENT_TASK, frame)
        finally:
            sys.setprofile(None)
        assert store.snapshot(ADDRESS).valves[2].open
        assert len(calls) <= 9, "\n".join(calls)
    finally:
        await cancel_and_wait(task)
