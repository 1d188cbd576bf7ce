"""`awgw ota` on the CLI's direct path (no daemon) goes through the same OTA service as the
daemon: a watering controller is refused exactly as the daemon refuses it (exit 4, nothing
uploaded); an idle one is updated, and Device Information then names the new version."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from firmware_bridge.smp import commands
from firmware_bridge.smp.ble import BleSmpTransport
from firmware_bridge.smp.channel import SmpChannel
from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig
from tests.helpers.cli import FIRST, Cli

pytestmark = [pytest.mark.rig, pytest.mark.rig_options(controllers=1)]


@pytest.fixture
def cli(rig: Rig, tmp_path: Path) -> Cli:
    return Cli(rig, tmp_path)


async def slots_held(address: str) -> list[int]:
    transport = BleSmpTransport(address, adapter="hci0")
    await transport.connect(15.0)
    async with SmpChannel(transport) as channel:
        return [slot.slot for slot in await commands.image_state(channel)]


async def test_direct_ota_refuses_a_watering_controller_then_updates_an_idle_one(
        cli: Cli, tmp_path: Path) -> None:
    image = tmp_path / "new.bin"
    image.write_bytes(make_image((9, 2, 0, 0), firmware_body("direct-ota", 60_000)))
    await cli.run("pair", FIRST, "--json")
    opened = await cli.run("valve", FIRST, "2", "open", "--minutes", "5", "--json")
    assert opened["ok"], opened

    refused = await cli.run("ota", FIRST, str(image), "--json", expect=4)
    assert "watering channel 2" in refused and "nothing was uploaded" in refused
    assert await slots_held(FIRST) == [0]  # slot 1 never touched
    assert not list((tmp_path / "ota").glob("*.json"))  # no upload session was started

    assert (await cli.run("valve", FIRST, "2", "close", "--json"))["ok"]
    outcome = await cli.run("ota", FIRST, str(image), "--confirm", "explicit", "--json")
    assert outcome["result"] == "succeeded", outcome
    assert outcome["firmware_revision"] == "9.2.0" and outcome["revision_matches"] is True
    state = await cli.run("state", FIRST, "--json")
    assert state["firmware_version"] == "9.2.0" and state["link"] == "idle"


async def test_the_daemon_refuses_a_watering_controller_the_same_way(cli: Cli,
                                                                     tmp_path: Path) -> None:
    image = tmp_path / "new.bin"
    image.write_bytes(make_image((9, 2, 0, 0), firmware_body("daemon-gate", 60_000)))
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "daemon", env=cli.env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        socket = tmp_path / "control.sock"
        async with asyncio.timeout(20):
            while not socket.is_socket():  # noqa: ASYNC110 - a file appearing has no event
                await asyncio.sleep(0.1)
        await cli.run("pair", FIRST, "--json")
        assert (await cli.run("valve", FIRST, "2", "open", "--minutes", "5", "--json"))["ok"]
        refused = await cli.run("ota", FIRST, str(image), "--json", expect=4)
        assert "watering channel 2" in refused and "nothing was uploaded" in refused
        state = await cli.run("state", FIRST, "--json")
        # Back in its share cycle (a 5 s period: a visit may be under way), not held for an
        # update nor failing.
        assert "link_state" not in state and state["link"] in (
            "idle", "waiting_slot", "connecting", "syncing", "connected")
        assert not list((tmp_path / "ota").glob("*.json"))
    finally:
        daemon.terminate()
        await asyncio.wait_for(daemon.wait(), 30)
