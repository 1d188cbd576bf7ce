"""The cloud relay end to end against the cloud emulator over real HTTP: what a controller's
states become in the cloud, through an outage, a revoked link, and today's backend."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_client import CloudClient, CognitoAuth, CognitoSettings, RetryPolicy, sign_in
from firmware_bridge.gatt.history import DetailedEntry
from gateway.config import CloudConfig, CloudMode
from gateway.ops.models import ControllerState
from gateway.relay.cloud import CloudRelay
from gateway.relay.events import DerivedEvent, EventTracker
from gateway.sim.cloud import EmulatorServer, Fault, World
from gateway.store.credentials import FileTokenStore
from gateway.store.outbox import Outbox
from tests.helpers import until as poll_until
from tests.helpers.builders import state

SERIAL = "100001"
FAST = RetryPolicy(attempts=2, base_s=0.01, cap_s=0.02, conflict_min_s=0.01,
                   conflict_max_s=0.02)
# The emulator answers in milliseconds; the relay's backoff after a failure is up to a few
# seconds here (its first steps), so delivery after an outage takes a few of those.
DELIVERED_WITHIN_S = 30.0


@dataclass
class Setup:
    world: World
    relay: CloudRelay
    store: FileTokenStore
    uid: str
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running(tmp_path: Path, mode: str = "gateway_routes",
                  configured: CloudMode = CloudMode.AUTO) -> AsyncIterator[Setup]:
    world = World(mode=mode)  # type: ignore[arg-type]
    async with EmulatorServer(world) as server:
        user = world.add_user("ana@example.com", "pw")
        world.add_device(SERIAL).owner = user.uid
        store = FileTokenStore(tmp_path / "cloud")
        settings = CognitoSettings(server.url + "/_cognito/", world.client_id)
        auth = CognitoAuth(settings, store)
        async with CloudClient(server.url, auth, retry=FAST) as client:
            auth.link(await sign_in(client.http, settings, "ana@example.com", "pw"))
            config = CloudConfig(enabled=True, base_url=server.url, mode=configured,
                                 snapshot_period_s=0.2, user_state_period_s=0.1)
            relay = CloudRelay(config, "gw-test", Outbox(tmp_path / "outbox.db", "gw-test"),
                               client, auth, serials=lambda: [SERIAL],
                               token_stamp=store.stamp)
            task = asyncio.create_task(relay.run(), name="relay under test")
            try:
                yield Setup(world, relay, store, user.uid, task)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def until(predicate: Callable[[], bool], limit_s: float = DELIVERED_WITHIN_S) -> None:
    """The shared poll, bounded by this module's delivery limit."""
    await poll_until(predicate, limit_s)


def types(world: World) -> list[str]:
    return [e["type"] for e in world.applied.events]


_TRACKERS: dict[int, EventTracker] = {}


def feed(relay: CloudRelay, new: ControllerState) -> None:
    """What the state feed does with a new state: the relay observes it and records the events
    derived from it (one tracker per relay here, as the feed keeps one for all relays)."""
    tracker = _TRACKERS.setdefault(id(relay), EventTracker())
    relay.observe("A", SERIAL, new)
    for event in tracker.track("A", new, 1.0):
        relay.record_event(SERIAL, event, 1.0)


async def test_states_become_snapshots_and_events(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        feed(s.relay, state())
        feed(s.relay, state(task_ch=2, volume=100))
        feed(s.relay, state(task_ch=2, volume=900, alarm=1))
        feed(s.relay, state())
        await until(lambda: len(s.world.applied.events) >= 5)
        assert types(s.world) == ["controller_reachable", "watering_started", "alarm_raised",
                                  "alarm_cleared", "watering_finished"]
        finished = s.world.applied.events[-1]["data"]
        assert finished["ch"] == 2 and finished["volume_ml"] == 900
        await until(lambda: s.world.device_state.get(SERIAL, {}).get("data", {}).get(
            "task", 0) is None or "task" not in s.world.device_state[SERIAL]["data"])
        assert s.relay.status().active_mode == "gateway_routes"
        assert s.world.gateways["gw-test"].serials == [SERIAL]


async def test_an_outage_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        feed(s.relay, state())
        await until(lambda: len(s.world.applied.events) == 1)
        s.world.faults.append(Fault("status", count=10**6, route="POST /reportDeviceState"))
        for n in range(300):
            s.relay.record_event(SERIAL, _event(n))
        await until(lambda: s.relay.counters.last_error is not None)
        assert s.relay.outbox.stats().depth >= 300
        s.world.faults.clear()
        await until(lambda: len(s.world.applied.events) == 301)
        numbers = [e["data"]["n"] for e in s.world.applied.events[1:]]
        assert numbers == list(range(300))
        assert s.world.applied.duplicate_events == 0
        await until(lambda: s.relay.outbox.stats().depth == 0)


async def test_history_arrives_once(tmp_path: Path) -> None:
    entries = [DetailedEntry(1_700_000_000 + n, 1, 1, 0, 500, 500, 500, 0, True, 0, 8)  # type: ignore[arg-type]
               for n in range(3)]
    async with running(tmp_path) as s:
        s.relay.record_history(SERIAL, entries)
        s.relay.record_history(SERIAL, entries)  # the controller sends the same page again
        await until(lambda: len(s.world.applied.events) >= 3)
        await asyncio.sleep(0.3)
        records = [e for e in s.world.applied.events if e["type"] == "watering_record"]
        assert len(records) == 3 and s.world.applied.duplicate_events == 0


async def test_a_revoked_link_buffers_until_linked_again(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        s.world.sign_out_everywhere(s.uid)
        s.world.expire_id_tokens()
        s.relay.record_event(SERIAL, _event(1))
        await until(lambda: s.relay.status().link == "relink_needed")
        s.relay.record_event(SERIAL, _event(2))
        await asyncio.sleep(0.3)
        assert s.world.applied.events == [] and s.relay.outbox.stats().depth == 2
        settings = s.relay.auth.settings  # type: ignore[union-attr]
        tokens = await sign_in(s.relay.client.http, settings, "ana@example.com", "pw")
        s.store.save(tokens.refresh_token or "")
        await until(lambda: len(s.world.applied.events) == 2)
        assert [e["data"]["n"] for e in s.world.applied.events] == [1, 2]


async def test_todays_backend_gets_the_snapshot_under_the_gateways_key(tmp_path: Path) -> None:
    async with running(tmp_path, mode="user_state") as s:
        s.world.users[s.uid].state = {"schema": "v1", "storage": {"zones": ["lawn"]}}
        feed(s.relay, state(task_ch=1, volume=50))
        await until(lambda: (s.world.users[s.uid].state or {}).get("gateways") is not None)
        doc: Any = s.world.users[s.uid].state
        assert doc["schema"] == "v1" and doc["storage"] == {"zones": ["lawn"]}
        controller = doc["gateways"]["gw-test"]["controllers"][SERIAL]
        assert controller["data"]["task"]["ch"] == 1
        status = s.relay.status()
        assert status.active_mode == "user_state" and status.note is not None
        assert status.outbox is not None and status.outbox.by_kind.get("event", 0) >= 1


def _event(n: int) -> DerivedEvent:
    return DerivedEvent("test", {"n": n})


async def test_a_configured_mode_is_not_probed(tmp_path: Path) -> None:
    async with running(tmp_path, mode="gateway_routes", configured=CloudMode.USER_STATE) as s:
        feed(s.relay, state())
        await until(lambda: (s.world.users[s.uid].state or {}).get("gateways") is not None)
        assert s.world.gateways == {}


async def test_a_claim_during_registration_registers_again(tmp_path: Path) -> None:
    """serials_changed while a registerGateway is on the wire: that registration carried the
    old serials, so the next batch registers again (the claim must not be lost)."""
    entered, release = asyncio.Event(), asyncio.Event()
    sent: list[list[str]] = []
    serials = ["100001"]

    class SlowClient:
        async def register_gateway(self, body: Any) -> None:
            sent.append(list(body.serials))
            entered.set()
            await release.wait()

    relay = CloudRelay(CloudConfig(enabled=True, base_url="https://api.example.com"), "gw-test",
                       Outbox(tmp_path / "outbox.db", "gw-test"), SlowClient(),  # type: ignore[arg-type]
                       None, serials=lambda: list(serials))
    registering = asyncio.create_task(relay._register())
    await entered.wait()
    serials.append("100002")
    relay.serials_changed()  # the claim landed meanwhile
    release.set()
    await registering
    assert not relay._registered
    release.set()
    await relay._register()
    assert relay._registered and sent == [["100001"], ["100001", "100002"]]
