"""The connection manager against the virtual rig: slots, freshness, prompt commands, and the
fault matrix (drop, power loss, reboot, refused connection, corrupted notification, slow
replies) recovered without a restart, each logged with its class."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from firmware_bridge.gatt import uuids
from firmware_bridge.gatt.codec import BulkSync
from firmware_bridge.link.state import StateEvent
from gateway.config import GatewayConfig, LinkPolicy, LinkSettings
from gateway.link.manager import ConnectionManager
from gateway.link.radio import pair_on_radio
from gateway.ops.models import LinkState
from gateway.sim.rig import Rig
from gateway.store.registry import Registry
from tests.helpers import until

pytestmark = pytest.mark.rig


async def start(rig: Rig, tmp_path: Path, settings: LinkSettings,
                policies: dict[int, LinkPolicy] | None = None
                ) -> tuple[ConnectionManager, asyncio.Task[None]]:
    config = GatewayConfig(state_dir=tmp_path, link=settings)
    registry = Registry(config.registry_path)
    for handle in rig.controllers:
        await pair_on_radio(config, registry, handle.address, None)
        policy = (policies or {}).get(handle.index)
        if policy is not None:
            registry.set_policy(handle.address, policy)
    manager = ConnectionManager(config, registry)
    task = asyncio.create_task(manager.run(), name="manager under test")
    await asyncio.wait_for(manager.ready.wait(), 10)
    return manager, task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def refreshes(events: list[StateEvent]) -> list[StateEvent]:
    return [event for event in events if isinstance(event.value, BulkSync)]



@pytest.mark.rig_options(controllers=6)
async def test_six_controllers_three_slots_fresh_and_prompt(rig: Rig, tmp_path: Path) -> None:
    period = 6.0
    manager, task = await start(rig, tmp_path, LinkSettings(
        max_links=3, refresh_period_s=period, connect_timeout_s=8))
    events: list[StateEvent] = []
    manager.store.tap(events.append)
    peak_links = 0
    latencies: list[float] = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < 30:
            peak_links = max(peak_links, len(manager.scheduler.leases))
            elapsed = time.monotonic() - started
            if len(latencies) < 3 and elapsed > 8 + 7 * len(latencies):
                target = rig.controllers[(1 + 2 * len(latencies)) % 6].address
                t0 = time.monotonic()
                outcome = await manager.command(
                    target, "open", lambda s: s.open_valve(1, 1))
                latencies.append(time.monotonic() - t0)
                assert outcome.ok, outcome
            await asyncio.sleep(0.05)
    finally:
        await stop(task)
    seen = refreshes(events)
    assert peak_links <= 3
    for handle in rig.controllers:
        times = sorted(e.monotonic for e in seen if e.address == handle.address)
        assert times, f"{handle.address} never refreshed"
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 4 and max(gaps) <= period, (handle.address, gaps)
    # A command goes ahead of background syncs: well under one refresh period.
    assert max(latencies) < 3.0, latencies


async def _recovered(manager: ConnectionManager, address: str, after: float,
                     limit_s: float = 40) -> None:
    store = manager.store

    def fresh_again() -> bool:
        view = store.view(address)
        return (manager.supervisors[address].state is LinkState.CONNECTED
                and view.last_refresh is not None and view.last_refresh > after)

    await until(fresh_again, limit_s)


FAULTS: list[tuple[str, dict[str, Any], set[str]]] = [
    ("drop_link", {}, {"link_lost"}),
    ("reboot", {}, {"link_lost"}),
    ("busy", {"duration_s": 4.0}, {"link_lost", "abort_by_local", "timeout"}),
    ("power_loss", {}, {"link_lost", "not_found", "abort_by_local", "timeout", "dbus"}),
]


@pytest.mark.rig_options(controllers=2)
async def test_fault_matrix_recovers_without_restart(rig: Rig, tmp_path: Path) -> None:
    manager, task = await start(rig, tmp_path, LinkSettings(
        max_links=2, refresh_period_s=2.0, connect_timeout_s=6), {
            0: LinkPolicy.KEEP, 1: LinkPolicy.SHARE})
    address = rig.controllers[0].address
    try:
        await _recovered(manager, address, 0.0)
        for kind, params, classes in FAULTS:
            with capture_logs() as logs:
                at = time.time()
                await rig.fault(0, kind, **params)
                if kind == "power_loss":
                    # Dark for longer than the stale limit: the old values must read stale,
                    # keep their own timestamps, and never be re-stamped as fresh.
                    before = manager.store.view(address).last_refresh
                    await asyncio.sleep(2 * 2.0 + 1.5)
                    state = manager.store.snapshot(address)
                    assert state.fresh is False and state.updated_at == before
                    await rig.fault(0, "power_restore")
                # A poll landing between the fault's request and the link's end is fresh too:
                # recovered means fresh again after the supervisor saw the failure.
                await until(lambda: any(e["event"] == "link_failure" for e in logs), 40)
                await _recovered(manager, address, time.time())
            failures = [e for e in logs if e["event"] == "link_failure"]
            assert failures, f"{kind}: no failure logged"
            assert {f["failure_class"] for f in failures} <= classes, (kind, failures)
            assert manager.store.snapshot(address).fresh is True

        # Corrupted notification: a typed decode problem, logged; the value is not updated
        # from garbage and the session keeps running.
        problems = manager.store.view(address).decode_problems
        with capture_logs() as logs:
            await manager.command(address, "open", lambda s: s.open_valve(4, 1))
            await rig.fault(0, "corrupt_notification", uuid=uuids.CURRENT_TASK)
            await until(lambda: manager.store.view(address).decode_problems > problems, 10)
        assert any(e["event"] == "decode_problem" for e in logs)
        assert manager.supervisors[address].state is LinkState.CONNECTED

        # Slow replies: slower, still correct, still fresh.
        await rig.fault(0, "slow", delay_s=0.5, duration_s=4.0)
        at = time.time()
        outcome = await manager.command(address, "close", lambda s: s.close_valve(4))
        assert outcome.ok
        await _recovered(manager, address, at)
        # The share-policy neighbour kept being refreshed through all of it.
        assert manager.store.fresh(rig.controllers[1].address)
    finally:
        await stop(task)
