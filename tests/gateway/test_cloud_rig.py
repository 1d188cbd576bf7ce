"""The cloud relay through the daemon, on the rig, against the cloud emulator over real HTTP:
`awgw cloud link`, `claim`, then a virtual controller's waterings reach the cloud once, even
when the gateway was down for one of them; the same against today's backend (user_state)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.sim.cloud import EmulatorServer, World
from gateway.sim.controller.device import ControllerConfig
from gateway.sim.rig import Rig

# 60x: a one-minute watering takes a second of the rig's time.
pytestmark = [pytest.mark.rig, pytest.mark.rig_options(
    controllers=1, template=ControllerConfig(0, 0, "", time_scale=60.0))]
ADDRESS = "C0:FF:EE:00:00:00"
SERIAL = "100001"
PASSWORD = "correct horse battery"
# A visit (connect, Bulk Snapshot, history of 8 channels) is ~2 s on the rig; the feed reads
# history 2 s after a watering ends; the relay commits within 20 ms and sends at once. A loaded
# machine gets several times that.
ARRIVES_WITHIN_S = 60.0
# uvicorn, the daemon's imports and its first connect.
DAEMON_UP_WITHIN_S = 30.0


class Gateway:
    def __init__(self, rig: Rig, state_dir: Path, cloud_url: str, client_id: str) -> None:
        config = state_dir / "config.toml"
        config.write_text(
            # Metrics off: tests run in parallel, and the default port is one for all.
            "metrics_port = 0\n[link]\nrefresh_period_s = 5\nconnect_timeout_s = 8\n"
            # The virtual controller does not confirm itself: the gateway confirms after this.
            "[ota]\nself_confirm_wait_s = 2\n"
            f"[cloud]\nenabled = true\nbase_url = \"{cloud_url}\"\n"
            f"cognito_endpoint = \"{cloud_url}/_cognito/\"\nclient_id = \"{client_id}\"\n"
            "snapshot_period_s = 1\nhistory_period_s = 3600\nuser_state_period_s = 0.5\n")
        self.state_dir = state_dir
        self.env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": rig.bus_address,
                    "AWGW_STATE_DIR": str(state_dir), "AWGW_CONFIG": str(config)}
        self.daemon: asyncio.subprocess.Process | None = None
        self.logs = ""  # everything the daemon runs have logged

    async def run(self, *args: str, stdin: bytes | None = None, expect: int = 0) -> Any:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", *args, env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
        assert proc.returncode == expect, (args, proc.returncode, err.decode()[-1500:])
        return json.loads(out.decode().strip().splitlines()[-1]) if "--json" in args else None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "daemon", env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        socket = self.state_dir / "control.sock"
        async with asyncio.timeout(DAEMON_UP_WITHIN_S):
            while not socket.is_socket():  # noqa: ASYNC110 - a file appearing has no event
                await asyncio.sleep(0.1)
        err = b""
        try:
            yield
        except BaseException:
            self.daemon.terminate()
            err, _ = await self.daemon.communicate()
            print(err.decode()[-6000:])
            raise
        self.daemon.terminate()
        err, _ = await asyncio.wait_for(self.daemon.communicate(), 30)
        self.logs += err.decode()
        socket.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def cloud(mode: str) -> AsyncIterator[tuple[World, str]]:
    world = World(mode=mode)  # type: ignore[arg-type]
    async with EmulatorServer(world) as server:
        world.add_user("ana@example.com", PASSWORD)
        world.add_device(SERIAL)
        yield world, server.url


async def until(predicate: Callable[[], bool], limit_s: float = ARRIVES_WITHIN_S) -> None:
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - the emulator's record has no event
            await asyncio.sleep(0.2)


def records(world: World) -> list[dict[str, Any]]:
    return [e for e in world.applied.events if e["type"] == "watering_record"]


async def link_and_claim(gw: Gateway) -> None:
    await gw.run("pair", ADDRESS, "--json")
    linked = await gw.run("cloud", "link", "--username", "ana@example.com", "--password-stdin",
                          "--json", stdin=f"{PASSWORD}\n".encode())
    assert linked["linked"] and linked["user"] == "ana@example.com"
    token = gw.state_dir / "cloud" / "refresh_token"
    assert oct(token.stat().st_mode & 0o777) == "0o600"
    assert (await gw.run("claim", SERIAL, "--json"))["claimed"]


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
            status = await gw.run("cloud", "status", "--json")
        assert doc["schema"] == "v1" and doc["savedAt"] == "x" and doc["storage"] == {"a": 1}
        assert set(doc) == {"schema", "savedAt", "storage", "gateways"}
        assert status["active_mode"] == "user_state" and "outbox" in status["note"]
        assert world.applied.events == []  # no route for them today: kept in the outbox
        assert status["outbox"]["by_kind"].get("event", 0) >= 1
