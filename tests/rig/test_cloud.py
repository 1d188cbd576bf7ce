"""The cloud relay through the daemon, on the rig, against the cloud emulator over real HTTP:
`awgw cloud link`, `claim`, then a virtual controller's waterings reach the cloud once, even
when the gateway was down for one of them; the same against today's backend (user_state)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.sim.controller.config import ControllerConfig
from gateway.sim.rig import Rig
from tests.helpers.cloud import (
    ADDRESS,
    PASSWORD,
    SERIAL,
    Gateway,
    cloud,
    link_and_claim,
    records,
    until,
)

# 60x: a one-minute watering takes a second of the rig's time.
pytestmark = [pytest.mark.rig, pytest.mark.rig_options(
    controllers=1, template=ControllerConfig(0, 0, "", time_scale=60.0))]
async def test_watering_history_arrives_once_across_a_restart(rig: Rig, tmp_path: Path) -> None:
    async with cloud("gateway_routes") as (world, url):
        gw = Gateway(rig, tmp_path, url, world.client_id)
        await link_and_claim(gw)
        async with gw.running():
            await gw.run("valve", ADDRESS, "2", "open", "--minutes", "1", "--json")
            await until(lambda: len(records(world)) == 1)
            types = [e["type"] for e in world.applied.events]
            assert "watering_started" in types and "watering_finished" in types
            status = await gw.run("cloud", "status", "--json")
            assert status["active_mode"] == "gateway_routes" and status["link"] == "linked"
            assert status["user"] == "ana@example.com"
        # The gateway is down while the controller waters again (a schedule, the app).
        await gw.run("valve", ADDRESS, "3", "open", "--minutes", "1", "--json")
        await asyncio.sleep(2.0)
        offline = await gw.run("cloud", "status", "--json")
        assert offline["note"].startswith("the daemon is not running")
        async with gw.running():
            await until(lambda: len(records(world)) == 2)
            await asyncio.sleep(2.0)  # anything sent twice would have arrived by now
        secrets = [PASSWORD, (gw.state_dir / "cloud" / "refresh_token").read_text().strip(),
                   *world.id_tokens]
        assert gw.logs and not [s for s in secrets if s in gw.logs]
        seen = [(r["data"]["ch"], r["data"]["timestamp"]) for r in records(world)]
        assert sorted(ch for ch, _ in seen) == [2, 3] and len(set(seen)) == 2
        assert world.applied.duplicate_events == 0
        assert world.device_state[SERIAL]["data"]["valves"][2]["open"] is False


async def test_todays_backend_gets_the_snapshot_under_the_gateways_key(
        rig: Rig, tmp_path: Path) -> None:
    async with cloud("user_state") as (world, url):
        uid = next(iter(world.users))
        world.users[uid].state = {"schema": "v1", "savedAt": "x", "storage": {"a": 1}}
        gw = Gateway(rig, tmp_path, url, world.client_id)
        await link_and_claim(gw)
        gateway_id = (gw.state_dir / "cloud" / "gateway_id").read_text().strip()
        async with gw.running():
            await until(lambda: "gateways" in (world.users[uid].state or {}))
            await gw.run("valve", ADDRESS, "1", "open", "--minutes", "1", "--json")
            doc: Any = world.users[uid].state
            await until(lambda: doc["gateways"][gateway_id]["controllers"].get(SERIAL) is not None)
            # The valve's event is derived when the feed takes the burst it came in (up to
            # QUIET_S later): the snapshot above may be from before it.
            for _ in range(50):
                status = await gw.run("cloud", "status", "--json")
                if status["outbox"]["by_kind"].get("event", 0):
                    break
                await asyncio.sleep(0.2)
        assert doc["schema"] == "v1" and doc["savedAt"] == "x" and doc["storage"] == {"a": 1}
        assert set(doc) == {"schema", "savedAt", "storage", "gateways"}
        assert status["active_mode"] == "user_state" and "outbox" in status["note"]
        assert world.applied.events == []  # no route for them today: kept in the outbox
        assert status["outbox"]["by_kind"].get("event", 0) >= 1
