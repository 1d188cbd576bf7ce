"""The gateway against the cloud emulator on the rig: `awgw cloud link` and `claim` as a user
runs them, the daemon started and stopped, and what reached the emulated cloud."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gateway.sim.cloud import EmulatorServer, World
from gateway.sim.rig import Rig
from tests.helpers import until as poll_until

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
            "snapshot_period_s = 1\nhistory_period_s = 3600\nuser_state_period_s = 0.5\n"
            # The tests' cloud asks for a poll a second (the floor keeps it at 10 otherwise).
            "jobs_poll_min_s = 1\n")
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
    """The shared poll, bounded by this module's delivery limit."""
    await poll_until(predicate, limit_s)


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
