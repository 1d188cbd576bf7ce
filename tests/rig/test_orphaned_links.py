"""A daemon killed while it holds links (a crash, an OOM kill, the watchdog's SIGABRT) leaves
them in BlueZ, and the controller takes one connection and stops advertising: the next start
must release those links and reach every controller again within one refresh period
(hostile-edges H4: before, `not_found` forever)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.demo.hub import HubConfig, HubProcess
from gateway.errors import GatewayError
from gateway.ops.models import GetState
from gateway.sim.images import firmware_body, make_image
from gateway.sim.rig import Rig
from tests.helpers.cli import Cli

pytestmark = [pytest.mark.rig, pytest.mark.rig_options(controllers=2)]
ADDRESSES = ("C0:FF:EE:00:00:00", "C0:FF:EE:00:00:01")
REFRESH_S = 10.0


async def test_kill_9_with_links_held_then_every_controller_is_reached_again(
        rig: Rig, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    cli = Cli(rig, state_dir)
    for address in ADDRESSES:
        await cli.run("pair", address, "--json")
    daemon = HubProcess(state_dir, HubConfig(bus_address=rig.bus_address,
                                             refresh_period_s=REFRESH_S))

    async def all_connected_and_fresh() -> bool:
        try:
            states = [await daemon.ops.state(GetState(address=a)) for a in ADDRESSES]
        except GatewayError:  # the daemon is still starting
            return False
        return all(s.fresh and s.link.value == "connected" for s in states)

    async def until(predicate: Callable[[], Awaitable[bool]], limit_s: float,
                    what: str) -> None:
        async with asyncio.timeout(limit_s):
            while not await predicate():  # noqa: ASYNC110 - polls the daemon over its socket
                await asyncio.sleep(0.2)

    await daemon.start()
    try:
        await until(all_connected_and_fresh, 60, "both controllers connected")
        daemon.kill()  # SIGKILL: nothing of ours runs; BlueZ keeps the links
        await asyncio.sleep(1.0)
        await daemon.start()
        started = asyncio.get_running_loop().time()
        await until(all_connected_and_fresh, REFRESH_S + 20, "both reached again")
        assert asyncio.get_running_loop().time() - started <= REFRESH_S + 20
    finally:
        await daemon.stop()
    assert "orphaned_link_released" in daemon.log_tail(200_000)


async def test_kill_9_of_awgw_ota_mid_upload_then_the_update_resumes(
        rig: Rig, tmp_path: Path) -> None:
    # hostile-edges H4, probe 2: the same `awgw ota` again answered exit 5 `not_found`.
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    cli = Cli(rig, state_dir)
    await cli.run("pair", ADDRESSES[0], "--json")
    image = tmp_path / "new.bin"
    image.write_bytes(make_image((9, 2, 0, 0), firmware_body("killed-ota", 120_000)))
    ota = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "ota", ADDRESSES[0], str(image), "--confirm",
        "explicit", "--json", env=cli.env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    assert ota.stdout is not None
    half = 0
    async with asyncio.timeout(120):
        while half < 50_000:
            line = await ota.stdout.readline()
            assert line, "awgw ota ended before half of the upload"
            progress = json.loads(line).get("progress") or {}
            if progress.get("phase") == "upload":
                half = progress["offset"]
    ota.kill()
    await ota.wait()
    outcome = await cli.run("ota", ADDRESSES[0], str(image), "--confirm", "explicit",
                            "--json")
    assert outcome["result"] == "succeeded", outcome
    # Resumed from where the controller was, not from the start.
    assert 0 < outcome["uploaded_bytes"] < image.stat().st_size - half // 2, outcome
